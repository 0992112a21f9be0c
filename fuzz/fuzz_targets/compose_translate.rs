//! Stacks on untrusted compose files: parse, interpolation, the supported-subset walk, the
//! typed model and the translation never panic or hang; whatever is accepted translates to a
//! plan that serialises, and its reconcile steps pass the catalog's own checks.
#![no_main]

// The server's stacks module depends only on `protocol` and external crates, so it is
// compiled here on its own, without the rest of the server.
#[path = "../../server/src/stacks/mod.rs"]
#[allow(dead_code, unused_imports)]
mod stacks;

use libfuzzer_sys::fuzz_target;
use protocol::ops::Operation;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env: BTreeMap<String, String> =
        [("A", "1"), ("PORT", "8080"), ("EMPTY", ""), ("T", "true")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let Ok(stack) = stacks::parse("fuzz", text, &env) else {
        return;
    };
    let plan = stack.plan();
    serde_json::to_vec(&plan).expect("an accepted plan serialises");
    let observed = stacks::reconcile::Observed::default();
    let steps = stacks::reconcile::reconcile(&plan, &observed);
    let teardown = stacks::reconcile::teardown(&plan, &observed, true);
    for step in steps.iter().chain(&teardown) {
        if let Some(op) = step.operation() {
            if let Err(e) = Operation::parse(op.name(), &op.params()) {
                panic!("{}: the catalog refuses it: {e:?}", step.describe());
            }
        }
    }
    let _ = stacks::reconcile::drift(&plan, &observed);
    let _ = stacks::reconcile::pulls(&plan, &observed);
});
