//! Embeds the web UI (`ui/index.html`, `ui/app/`, `ui/vendor/`) in the server binary.
//!
//! Writes `$OUT_DIR/ui_assets.rs`: the build's UI version (the first 12 hex digits of a
//! SHA-256 over every file's path and bytes, so any change gives new asset URLs that can be
//! cached forever) and, per file, its media type, its bytes and, when that is smaller, its
//! gzip (compressed here, at build time, with a pure-Rust deflate: no network, no tool).

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

const SERVED: &[&str] = &["js", "mjs", "css", "html", "svg", "png", "woff2", "txt"];

fn mime(ext: &str) -> &'static str {
    match ext {
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "html" => "text/html; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "woff2" => "font/woff2",
        _ => "text/plain; charset=utf-8",
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| SERVED.contains(&x))
        {
            out.push(p);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let ui = manifest.join("ui");
    println!("cargo:rerun-if-changed=ui/index.html");
    println!("cargo:rerun-if-changed=ui/app");
    println!("cargo:rerun-if-changed=ui/vendor");
    let mut files = Vec::new();
    walk(&ui.join("app"), &mut files);
    walk(&ui.join("vendor"), &mut files);
    files.sort();
    let mut version = Sha256::new();
    let mut table = String::new();
    for f in &files {
        let rel = f
            .strip_prefix(&ui)
            .expect("below ui/")
            .to_string_lossy()
            .replace('\\', "/");
        let bytes = std::fs::read(f).expect("read a UI file");
        version.update(rel.as_bytes());
        version.update([0]);
        version.update(&bytes);
        let ext = f.extension().and_then(|x| x.to_str()).unwrap_or("");
        let mut gz = GzEncoder::new(Vec::new(), Compression::best());
        gz.write_all(&bytes).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let gz_expr = if gz.len() * 10 < bytes.len() * 9 {
            let gz_path = out_dir.join("ui").join(format!("{rel}.gz"));
            std::fs::create_dir_all(gz_path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&gz_path, &gz).expect("write gzip");
            format!("Some(include_bytes!({:?}))", gz_path.display().to_string())
        } else {
            "None".to_string()
        };
        table.push_str(&format!(
            "    Asset {{ path: {rel:?}, mime: {:?}, raw: include_bytes!({:?}), gzip: {gz_expr} }},\n",
            mime(ext),
            f.display().to_string()
        ));
    }
    let index = ui.join("index.html");
    let index_text = std::fs::read_to_string(&index).expect("ui/index.html");
    version.update(index_text.as_bytes());
    let version = hex::encode(version.finalize());
    let code = format!(
        "/// The UI build's version: part of every asset URL.\npub const UI_VERSION: &str = {:?};\n\
         /// `ui/index.html`, with `{{{{VERSION}}}}` and `{{{{NONCE}}}}` to fill in.\n\
         pub const INDEX_HTML: &str = include_str!({:?});\n\
         /// Every embedded asset, by its path below `/assets/VERSION/`.\n\
         pub static ASSETS: &[Asset] = &[\n{table}];\n",
        &version[..12],
        index.display().to_string()
    );
    std::fs::write(out_dir.join("ui_assets.rs"), code).expect("write ui_assets.rs");
}
