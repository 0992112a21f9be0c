//! Untrusted command params: parsing and planning an operation never panics, and ids that
//! pass validation never produce a request path that escapes its route.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{Operation, Plan, Step, OPERATION_NAMES};

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let name = OPERATION_NAMES[data[0] as usize % OPERATION_NAMES.len()];
    let Ok(params) = serde_json::from_slice::<serde_json::Value>(&data[1..]) else { return };
    if let Ok(op) = Operation::parse(name, &params) {
        let mut plan = Plan::new(op);
        if let Step::Call(req) = plan.next(None) {
            let uri = req.uri(Some("1.41"));
            assert!(!uri.contains("/../") && !uri.contains('#') && !uri.contains(' '), "{uri}");
        }
    }
});
