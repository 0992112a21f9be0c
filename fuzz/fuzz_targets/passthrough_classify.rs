//! Untrusted passthrough paths: classification never panics, and an accepted path has no
//! traversal or request-splitting characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::passthrough::classify;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (method, path) = s.split_once(' ').unwrap_or(("GET", s));
    if let Ok(route) = classify(method, path) {
        assert!(!path.split('/').any(|seg| seg == ".."), "{path}");
        assert!(!path.contains('\r') && !path.contains('\n') && !path.contains('\\'), "{path}");
        assert!(route.path.starts_with('/'));
    }
});
