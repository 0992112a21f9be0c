//! Self-update: the agent installs a signed release when the server asks (`agent_update`),
//! and rolls back a release that does not come up.
//!
//! ```text
//! agent_update ─ policy (update.enabled, allowed_versions, target) ─ worker thread:
//!   downloading   GET .../signature: key id and trusted comment (version, target) checked
//!                 GET .../binary → .<name>.update next to the binary, fed to the verifier
//!                 (Range resumes after a dropped link; memory stays flat)
//!   verifying     the file's signature, the ELF header (machine, class, byte order), and
//!                 `<new> --version` printing `docker-ctl-agent <version>`
//!   restarting    record {probation}; binary kept as .prev; new renamed over it; execve
//! start ─ record on probation? starts += 1 ─ more than probation_starts ─► restore .prev
//!   authenticated and a heartbeat sent within probation_secs ─► succeeded
//!   otherwise ─► restore .prev, execve ─► the previous version reports rolled_back
//! ```
//!
//! What the agent trusts is its own `update.public_key`: nothing the server sends can make
//! it run a binary that was not signed with that key (see docs/security.md).
//!
//! Owns: the update's life on the agent and its record ([`record`]). Its steps live in
//! [`download`], [`check`], [`swap`] and [`versions`]. Must not: run on the session thread
//! (the session hands the message over and goes on), or touch the WebSocket (progress goes
//! through the outbox).

pub mod check;
pub mod download;
pub mod record;
pub mod swap;
pub mod versions;

use crate::config::UpdateConfig;
use crate::shutdown::Shutdown;
use download::{FileTarget, Source};
use protocol::minisign::{PublicKey, Signature, Verifier};
use protocol::version::{TARGET, VERSION};
use protocol::{
    AgentUpdatePayload, AgentUpdateProgressPayload, ErrorBody, ErrorCode, Message, UpdateState,
};
use record::{Probation, Record, RecordFile};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swap::Relaunch;
use versions::VersionReq;

/// The largest release accepted.
pub const MAX_BINARY: u64 = 256 * 1024 * 1024;
/// How long an update waits for running commands to finish before it restarts anyway.
const DRAIN: Duration = Duration::from_secs(60);

/// Why an update was refused or failed: a stable code, the check that refused, and a
/// message. Reported to the server as an `ErrorBody` with `details.check`.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub check: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, check: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            check,
            message: message.into(),
        }
    }

    /// A release that failed check `check`.
    pub fn invalid(check: &'static str, message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::InvalidParams, check, message)
    }

    /// The download did not complete.
    pub fn download(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::Timeout, "download", message)
    }

    /// A local file could not be written or read.
    pub fn io(message: impl Into<String>) -> Refusal {
        Refusal::new(ErrorCode::Internal, "io", message)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code, self.message.clone())
            .with_details(serde_json::json!({ "check": self.check }))
    }
}

/// What the updater needs of the agent it updates (`crate::agent::Agent` implements it): its
/// updater, a way to the server, and whether commands run.
pub trait Host: Send + Sync + 'static {
    fn updater(&self) -> &Updater;
    /// Queues a message for the server (through the outbox: it waits while the link is down).
    fn send(&self, m: Message);
    /// Commands running now.
    fn commands_running(&self) -> u64;
}

/// What the agent does at start about its update record.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// Run normally.
    Normal,
    /// This binary is on probation: it must authenticate and send a heartbeat in time.
    Probation(Duration),
    /// The previous binary was restored: stop and start it ([`Relaunch::exec`]).
    Relaunch,
}

/// At start, before the config is read (so a release that cannot even load it counts its
/// starts too): a binary on probation counts this start, and after more than its
/// `max_starts` restores the previous binary ([`Start::Relaunch`]). Messages go to stderr:
/// the logger is not set up yet.
pub fn at_start(relaunch: &Relaunch) -> Start {
    let file = RecordFile::beside(relaunch.binary.as_deref());
    let Some(mut rec) = file.load() else {
        return Start::Normal;
    };
    let Some(mut p) = rec.probation.take() else {
        return Start::Normal;
    };
    if rec.report.version != VERSION {
        // Another binary than the new one runs: the swap did not take effect, or someone
        // put another binary in place.
        let why = format!(
            "the agent started as version {VERSION} before version {} took over",
            rec.report.version
        );
        eprintln!("docker-ctl-agent: update {}: {why}", rec.report.update_id);
        rec.report.state = UpdateState::Failed;
        rec.report.error = Some(Refusal::new(ErrorCode::Internal, "restart", why).body());
        let _ = file.save(&rec);
        return Start::Normal;
    }
    p.starts += 1;
    if p.starts > p.max_starts {
        let why = format!(
            "version {VERSION} started {} times on probation without passing it (crash loop)",
            p.starts - 1
        );
        return roll_back(&file, rec, p, &why, "crash_loop");
    }
    let limit = Duration::from_secs(p.secs);
    eprintln!(
        "docker-ctl-agent: version {VERSION} is on probation (start {} of at most {}): it must authenticate and send a heartbeat within {}s",
        p.starts,
        p.max_starts,
        p.secs
    );
    rec.probation = Some(p);
    if let Err(e) = file.save(&rec) {
        eprintln!("docker-ctl-agent: cannot count this start on probation: {e}");
    }
    Start::Probation(limit)
}

/// Restores the previous binary and records `rolled_back`; [`Start::Relaunch`] when the
/// caller must start it, [`Start::Normal`] when there was nothing to restore.
fn roll_back(
    file: &RecordFile,
    mut rec: Record,
    p: Probation,
    why: &str,
    check: &'static str,
) -> Start {
    eprintln!(
        "docker-ctl-agent: rolling back to {}: {why}",
        p.from_version
    );
    log::error!("rolling back to {}: {why}", p.from_version);
    if let Err(e) = swap::restore(&p.previous, &p.binary) {
        let msg = format!("{why}; the previous binary could not be restored: {e}");
        eprintln!("docker-ctl-agent: {msg}; this version keeps running");
        rec.report.state = UpdateState::Failed;
        rec.report.error = Some(Refusal::io(msg).body());
        let _ = file.save(&rec);
        return Start::Normal;
    }
    rec.report.state = UpdateState::RolledBack;
    rec.report.error = Some(Refusal::new(ErrorCode::Timeout, check, why).body());
    let _ = file.save(&rec);
    Start::Relaunch
}

/// The agent's updater: its settings, the record, and the update running now.
pub struct Updater {
    config: UpdateConfig,
    allowed: Option<VersionReq>,
    source: Source,
    relaunch: Relaunch,
    file: RecordFile,
    shutdown: Shutdown,
    /// The record as last written.
    last: Mutex<Option<Record>>,
    /// The update a worker is installing now.
    running: Mutex<Option<String>>,
    /// This binary is on probation and has not yet passed it.
    on_probation: AtomicBool,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("enabled", &self.config.enabled)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn progress(id: &str, state: UpdateState, version: &str) -> AgentUpdateProgressPayload {
    AgentUpdateProgressPayload {
        update_id: id.to_string(),
        state,
        version: version.to_string(),
        bytes: None,
        error: None,
    }
}

impl Updater {
    /// The updater of this process, started as `relaunch` says, after [`at_start`] said
    /// `start`; `source` is where releases come from.
    pub fn new(
        config: UpdateConfig,
        allowed: Option<VersionReq>,
        source: Source,
        relaunch: Relaunch,
        start: &Start,
        shutdown: Shutdown,
    ) -> Updater {
        let file = RecordFile::beside(relaunch.binary.as_deref());
        let last = file.load();
        Updater {
            config,
            allowed,
            source,
            relaunch,
            file,
            shutdown,
            last: Mutex::new(last),
            running: Mutex::new(None),
            on_probation: AtomicBool::new(matches!(start, Start::Probation(_))),
        }
    }

    /// How this process starts itself again.
    pub fn relaunch(&self) -> &Relaunch {
        &self.relaunch
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Option<Record>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the record (and keeps it for `auth`); a record that cannot be written is
    /// logged: the update goes on without it only where that is safe (see callers).
    fn save(&self, record: Record) -> std::io::Result<()> {
        let r = self.file.save(&record);
        if let Err(e) = &r {
            log::error!("cannot write the update record: {e}");
        }
        *self.last() = Some(record);
        r
    }

    /// The last update's report, for `auth`.
    pub fn report(&self) -> Option<AgentUpdateProgressPayload> {
        self.last().as_ref().map(|r| r.report.clone())
    }

    /// The session authenticated and sent a heartbeat: a binary on probation passed it.
    pub fn healthy(&self, agent: &impl Host) {
        if !self.on_probation.swap(false, Ordering::SeqCst) {
            return;
        }
        let Some(mut rec) = self.last().clone() else {
            return;
        };
        rec.probation = None;
        rec.report.state = UpdateState::Succeeded;
        rec.report.error = None;
        log::info!(
            "update {} to version {VERSION} succeeded: probation passed",
            rec.report.update_id
        );
        let report = rec.report.clone();
        let _ = self.save(rec);
        send(agent, report);
    }

    /// Waits for the probation to pass; when `limit` passes first, restores the previous
    /// binary and asks for the restart. Runs on its own thread.
    pub fn watch_probation(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.on_probation.load(Ordering::SeqCst) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if self.shutdown.wait(left.min(Duration::from_millis(500))) {
                return;
            }
        }
        if !self.on_probation.load(Ordering::SeqCst) {
            return;
        }
        let Some(mut rec) = self.last().clone() else {
            return;
        };
        let Some(p) = rec.probation.take() else {
            return;
        };
        let why = format!(
            "version {VERSION} did not authenticate and send a heartbeat within {}s",
            limit.as_secs()
        );
        self.on_probation.store(false, Ordering::SeqCst);
        let restored = roll_back(&self.file, rec, p, &why, "probation");
        *self.last() = self.file.load();
        if restored == Start::Relaunch {
            self.shutdown.restart();
        }
    }

    /// An `agent_update` from the server: answered from the record when it is the last
    /// update, refused when policy says no, else installed on a worker thread.
    pub fn handle<H: Host>(shared: &Arc<H>, p: AgentUpdatePayload) {
        let agent: &H = shared;
        let u = agent.updater();
        if let Some(r) = u.report().filter(|r| r.update_id == p.update_id) {
            send(agent, r);
            return;
        }
        {
            let mut running = u.running.lock().unwrap_or_else(|e| e.into_inner());
            match running.as_deref() {
                Some(id) if id == p.update_id => return,
                Some(id) => {
                    let why = format!("update {id} is being installed");
                    let r = Refusal::new(ErrorCode::Conflict, "busy", why);
                    send(agent, failed(&p, &r));
                    return;
                }
                None => {}
            }
            if let Err(r) = u.admit(&p) {
                log::warn!(
                    "update {} to {} refused: {}",
                    p.update_id,
                    p.version,
                    r.message
                );
                u.finish(agent, &p, Err(r));
                return;
            }
            if p.version == VERSION {
                u.finish(agent, &p, Ok(()));
                return;
            }
            *running = Some(p.update_id.clone());
        }
        let worker = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("update".into())
            .stack_size(256 * 1024)
            .spawn(move || install(&*worker, &p));
        if let Err(e) = spawned {
            log::error!("cannot start the update thread: {e}");
            *u.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// The checks before anything is fetched: policy, target, size, where files go.
    fn admit(&self, p: &AgentUpdatePayload) -> Result<(), Refusal> {
        if !self.config.enabled {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "policy",
                "updates are disabled on this agent (update.enabled: false)",
            ));
        }
        if p.target != TARGET {
            return Err(Refusal::invalid(
                "target",
                format!(
                    "the release is for {}, this agent runs on {TARGET}",
                    p.target
                ),
            ));
        }
        if let Some(req) = &self.allowed {
            if !req.matches(&p.version) {
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    "allowed_versions",
                    format!(
                        "version {} is outside update.allowed_versions ({req})",
                        p.version
                    ),
                ));
            }
        }
        if p.size == 0 || p.size > MAX_BINARY {
            return Err(Refusal::invalid(
                "size",
                format!("a release of {} bytes (at most {MAX_BINARY})", p.size),
            ));
        }
        let binary = self.relaunch.binary.as_deref().ok_or_else(|| {
            Refusal::new(
                ErrorCode::Unsupported,
                "binary",
                "the agent's own binary is unknown",
            )
        })?;
        swap::check_writable(binary).map_err(|e| Refusal::new(ErrorCode::Unsupported, "binary", e))
    }

    /// Records and reports how update `p` ended before any restart: `Ok` means the agent
    /// already runs that version.
    fn finish(&self, agent: &impl Host, p: &AgentUpdatePayload, result: Result<(), Refusal>) {
        let report = match &result {
            Ok(()) => progress(&p.update_id, UpdateState::Succeeded, &p.version),
            Err(r) => failed(p, r),
        };
        let _ = self.save(Record::new(report.clone(), None));
        send(agent, report);
    }
}

fn failed(p: &AgentUpdatePayload, r: &Refusal) -> AgentUpdateProgressPayload {
    AgentUpdateProgressPayload {
        error: Some(r.body()),
        ..progress(&p.update_id, UpdateState::Failed, &p.version)
    }
}

/// Queues a progress message for the server.
fn send(agent: &impl Host, p: AgentUpdateProgressPayload) {
    agent.send(Message::AgentUpdateProgress(p));
}

/// The worker: download, verify, swap; a refusal at any step is recorded and reported and
/// the running version stays.
fn install(agent: &impl Host, p: &AgentUpdatePayload) {
    let u = agent.updater();
    let Some(binary) = u.relaunch.binary.clone() else {
        return;
    };
    let download = swap::download_path(&binary);
    log::info!(
        "updating from {VERSION} to {} ({} bytes from {}{})",
        p.version,
        p.size,
        u.source.base(),
        p.path
    );
    match fetch_and_verify(agent, p, &download).and_then(|()| swap_in(agent, p, &binary, &download))
    {
        Ok(()) => {
            log::info!("version {} is in place: restarting", p.version);
            u.shutdown.restart();
        }
        Err(r) => {
            let _ = std::fs::remove_file(&download);
            log::error!(
                "update {} to {} failed: {}",
                p.update_id,
                p.version,
                r.message
            );
            u.finish(agent, p, Err(r));
            *u.running.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

/// Reads the release public key (`update.public_key`).
fn public_key(path: &Path) -> Result<PublicKey, Refusal> {
    let text = std::fs::read(path).map_err(|e| {
        Refusal::new(
            ErrorCode::Unsupported,
            "public_key",
            format!("cannot read the release public key {}: {e}", path.display()),
        )
    })?;
    PublicKey::parse(&text).map_err(|e| {
        Refusal::new(
            ErrorCode::Unsupported,
            "public_key",
            format!("{}: {e}", path.display()),
        )
    })
}

/// Downloads the signature and the binary into `to`, and checks both, the ELF header and
/// the new binary's `--version`.
fn fetch_and_verify(agent: &impl Host, p: &AgentUpdatePayload, to: &Path) -> Result<(), Refusal> {
    let u = agent.updater();
    let mut report = progress(&p.update_id, UpdateState::Downloading, &p.version);
    report.bytes = Some(0);
    send(agent, report.clone());
    let key = public_key(&u.config.public_key)?;
    let sig = u.source.signature(&p.path)?;
    let sig = Signature::parse(&sig).map_err(|e| Refusal::invalid("signature", e.to_string()))?;
    let start =
        Verifier::new(&key, &sig).map_err(|e| Refusal::invalid("signature", e.to_string()))?;
    let comment = start.trusted_comment();
    for (field, want) in [("version", p.version.as_str()), ("target", TARGET)] {
        comment
            .expect_field(field, want)
            .map_err(|e| Refusal::invalid("trusted_comment", e.to_string()))?;
    }
    let mut verifier = start.clone();
    let deadline = Instant::now() + Duration::from_secs(u.config.download_timeout);
    let file = open_new(to)?;
    let mut last_report = Instant::now();
    let mut sink = |chunk: Option<&[u8]>| match chunk {
        Some(c) => verifier.update(c),
        None => verifier = start.clone(),
    };
    let mut on_progress = |bytes: u64| {
        if last_report.elapsed() >= Duration::from_secs(1) || bytes == p.size {
            last_report = Instant::now();
            report.bytes = Some(bytes);
            send(agent, report.clone());
        }
    };
    let mut target = FileTarget {
        file,
        written: 0,
        sink: &mut sink,
        progress: &mut on_progress,
    };
    u.source.binary(&p.path, p.size, deadline, &mut target)?;
    let file = target.file;
    file.sync_all()
        .map_err(|e| Refusal::io(format!("syncing the new binary: {e}")))?;
    drop(file);
    send(
        agent,
        progress(&p.update_id, UpdateState::Verifying, &p.version),
    );
    verifier
        .finish()
        .map_err(|e| Refusal::invalid("signature", e.to_string()))?;
    check::elf_file(to).map_err(|e| Refusal::invalid("elf", format!("the release is {e}")))?;
    check::version_output(&u.relaunch.launcher, to, &p.version)
        .map_err(|e| Refusal::invalid("version_output", format!("the new binary is refused: {e}")))
}

/// Creates the download file (mode 0700, replacing a leftover).
fn open_new(path: &Path) -> Result<std::fs::File, Refusal> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(path)
        .map_err(|e| Refusal::io(format!("creating {}: {e}", path.display())))
}

/// Records the probation, then puts the new binary in place (the old one as `.prev`).
fn swap_in(
    agent: &impl Host,
    p: &AgentUpdatePayload,
    binary: &Path,
    new: &Path,
) -> Result<(), Refusal> {
    let u = agent.updater();
    wait_for_commands(agent);
    let previous: PathBuf = swap::previous_of(binary);
    let report = progress(&p.update_id, UpdateState::Restarting, &p.version);
    let probation = Probation {
        from_version: VERSION.to_string(),
        binary: binary.to_path_buf(),
        previous: previous.clone(),
        starts: 0,
        secs: u.config.probation_secs,
        max_starts: u.config.probation_starts,
    };
    // The record first: a crash right after the rename must find the probation.
    u.save(Record::new(report.clone(), Some(probation)))
        .map_err(|e| Refusal::io(format!("recording the probation: {e}")))?;
    if let Err(e) = swap::install(new, binary, &previous) {
        return Err(Refusal::io(format!("replacing {}: {e}", binary.display())));
    }
    send(agent, report);
    Ok(())
}

/// Waits (at most [`DRAIN`]) until no command runs, so none is cut by the restart.
fn wait_for_commands(agent: &impl Host) {
    let deadline = Instant::now() + DRAIN;
    while agent.commands_running() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}
