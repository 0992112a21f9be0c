//! The version string of this build, shared by both binaries.
//!
//! Owns: what `--version` prints and what a peer reports as its version and target. A
//! release pipeline sets the version with `DOCKER_CTL_VERSION` at build time (cargo rebuilds
//! when it changes); without it, the crate version. It is used as given, so it should be one
//! word (no spaces): release signatures carry it as `version:<VERSION>` in their trusted
//! comment. The target triple comes from the build (`build.rs`).
//! Must not: read anything at run time.

/// `DOCKER_CTL_VERSION` at build time when set and not empty, else the crate version.
pub const VERSION: &str = match option_env!("DOCKER_CTL_VERSION") {
    Some(v) if !v.is_empty() => v,
    _ => env!("CARGO_PKG_VERSION"),
};

/// The target triple this build is for (e.g. `aarch64-unknown-linux-musl`), as rustc names
/// it: what release signatures carry as `target:<TARGET>`.
pub const TARGET: &str = env!("DOCKER_CTL_BUILD_TARGET");

#[cfg(test)]
mod tests {
    #[test]
    fn the_target_is_a_triple_for_this_architecture() {
        let arch = std::env::consts::ARCH;
        assert!(super::TARGET.starts_with(arch), "{} {arch}", super::TARGET);
        assert!(super::TARGET.contains("-linux-"), "{}", super::TARGET);
    }
}
