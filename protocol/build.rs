//! Hands the target triple this crate is built for to the code (`protocol::version::TARGET`).
fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rustc-env=DOCKER_CTL_BUILD_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
