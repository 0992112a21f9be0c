//! A tiny logger for the `log` facade: one line per record to stderr or an append-only file
//! (created mode 0600), at the configured level.
//!
//! Owns: formatting, the destination, and a last line of defence against leaking the token:
//! registered secrets are replaced by `***` in every line. Must not: buffer unboundedly or
//! block the agent on a slow terminal for long (writes are unbuffered, one per line).

use log::{LevelFilter, Log, Metadata, Record};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

pub fn parse_level(s: &str) -> Option<LevelFilter> {
    Some(match s.to_ascii_lowercase().as_str() {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" | "warning" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

struct Logger {
    level: LevelFilter,
    out: Mutex<Box<dyn Write + Send>>,
    secrets: Vec<String>,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = format!(
            "{} {:<5} {}: {}\n",
            protocol::time::now_rfc3339(),
            record.level(),
            record.target(),
            record.args()
        );
        for s in &self.secrets {
            if line.contains(s.as_str()) {
                line = line.replace(s.as_str(), "***");
            }
        }
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {
        if let Ok(mut out) = self.out.lock() {
            let _ = out.flush();
        }
    }
}

/// Opens a file for appending, creating it with mode 0600 (it may quote server messages).
pub fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Installs the logger once per process. `secrets` (the token) are masked in every line.
/// Later calls (tests running several agents) keep the first logger.
pub fn init(level: &str, file: Option<&Path>, secrets: &[&str]) -> std::io::Result<()> {
    let level = parse_level(level).unwrap_or(LevelFilter::Info);
    let out: Box<dyn Write + Send> = match file {
        Some(p) => Box::new(open_private(p)?),
        None => Box::new(std::io::stderr()),
    };
    let logger = Logger {
        level,
        out: Mutex::new(out),
        // Very short secrets would mask ordinary words; the token is validated non-empty.
        secrets: secrets
            .iter()
            .filter(|s| s.len() >= 4)
            .map(|s| s.to_string())
            .collect(),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
    Ok(())
}
