//! The version string of this build, shared by both binaries.
//!
//! Owns: what `--version` prints and what a peer reports as its version. A release pipeline
//! sets it with `DOCKER_CTL_VERSION` at build time (cargo rebuilds when it changes); without
//! it, the crate version. It is used as given, so it should be one word (no spaces): the
//! release signatures carry it as `version:<VERSION>` in their trusted comment.
//! Must not: read anything at run time.

/// `DOCKER_CTL_VERSION` at build time when set and not empty, else the crate version.
pub const VERSION: &str = match option_env!("DOCKER_CTL_VERSION") {
    Some(v) if !v.is_empty() => v,
    _ => env!("CARGO_PKG_VERSION"),
};

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_is_the_build_variable_or_the_crate_version() {
        let want = option_env!("DOCKER_CTL_VERSION")
            .filter(|v| !v.is_empty())
            .unwrap_or(env!("CARGO_PKG_VERSION"));
        assert_eq!(super::VERSION, want);
        assert!(!super::VERSION.is_empty());
    }
}
