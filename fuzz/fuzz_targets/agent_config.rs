//! The agent's config loader on untrusted YAML, with `${VAR}` expansion: a typed error or a
//! config, never a panic.
#![no_main]

use agent_lite::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env = |name: &str| (name.len() < 8).then(|| format!("value-of-{name}"));
    let _ = Config::from_yaml(text, std::path::Path::new("fuzz.yaml"), &env);
});
