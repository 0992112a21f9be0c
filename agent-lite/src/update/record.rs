//! The update record: how the agent's last self-update went, and whether the binary now
//! running is on probation. It lives beside the agent's binary (`.<name>.record`, where the
//! download and `.prev` go too), JSON, replaced atomically like the state file, so it
//! survives the re-execution, a crash and a reboot, and is read before the config is: a
//! release that cannot even load the config still counts its starts.
//!
//! ```json
//! {"format": 1,
//!  "report": {"update_id": "u1:0", "state": "restarting", "version": "1.3.0"},
//!  "probation": {"from_version": "1.2.0", "binary": "/usr/local/bin/docker-ctl-agent",
//!                "previous": "/usr/local/bin/docker-ctl-agent.prev", "starts": 1,
//!                "secs": 60, "max_starts": 3}}
//! ```
//!
//! Owns: the record's format and file. Must not: decide what to do at start (that is
//! [`super::Updater`]).

use protocol::AgentUpdateProgressPayload;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The binary that runs is the new one of an update, on probation until it authenticated
/// and sent a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probation {
    /// The version that ran before the update.
    pub from_version: String,
    /// The path of the agent's binary.
    pub binary: PathBuf,
    /// Where the previous binary is kept (`<binary>.prev`).
    pub previous: PathBuf,
    /// How many times the new binary started on probation.
    pub starts: u32,
    /// Seconds each start has to authenticate and send a heartbeat
    /// (`update.probation_secs` of the agent that installed it).
    pub secs: u64,
    /// Starts after which the previous binary is restored (`update.probation_starts`).
    pub max_starts: u32,
}

/// What the record file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    format: u32,
    /// The last update's state, reported at every `auth`.
    pub report: AgentUpdateProgressPayload,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation: Option<Probation>,
}

impl Record {
    pub fn new(report: AgentUpdateProgressPayload, probation: Option<Probation>) -> Record {
        Record {
            format: 1,
            report,
            probation,
        }
    }
}

/// The record's file: `None` when the agent's own binary is unknown (then it cannot update
/// itself).
#[derive(Debug, Clone)]
pub struct RecordFile {
    path: Option<PathBuf>,
}

impl RecordFile {
    /// The record beside `binary` (`.<name>.record`).
    pub fn beside(binary: Option<&Path>) -> RecordFile {
        RecordFile {
            path: binary.map(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "docker-ctl-agent".into());
                p.with_file_name(format!(".{name}.record"))
            }),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The record, if there is a readable one. A corrupt record is reported and ignored
    /// (the agent runs the binary it is, not on probation).
    pub fn load(&self) -> Option<Record> {
        let path = self.path.as_ref()?;
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                log::error!("cannot read the update record {}: {e}", path.display());
                return None;
            }
        };
        // Through `Value`: the agent's JSON code already has these instantiations (size).
        let parsed = serde_json::from_slice::<serde_json::Value>(&text)
            .and_then(serde_json::from_value::<Record>);
        match parsed {
            Ok(r) if r.format == 1 => Some(r),
            Ok(r) => {
                log::error!(
                    "the update record {} has the unknown format {}: ignored",
                    path.display(),
                    r.format
                );
                None
            }
            Err(e) => {
                log::error!(
                    "the update record {} is corrupt ({e}): ignored",
                    path.display()
                );
                None
            }
        }
    }

    /// Replaces the record atomically.
    pub fn save(&self, record: &Record) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Err(std::io::Error::other("the agent's binary is unknown"));
        };
        let text = serde_json::to_value(record)
            .map(|v| v.to_string())
            .map_err(std::io::Error::other)?;
        crate::state::write_atomic(path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::UpdateState;

    #[test]
    fn the_record_round_trips_beside_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("docker-ctl-agent");
        let f = RecordFile::beside(Some(&binary));
        assert_eq!(
            f.path().unwrap(),
            dir.path().join(".docker-ctl-agent.record")
        );
        assert!(f.load().is_none());
        let r = Record::new(
            AgentUpdateProgressPayload {
                update_id: "u:1".into(),
                state: UpdateState::Restarting,
                version: "2.0.0".into(),
                bytes: None,
                error: None,
            },
            Some(Probation {
                from_version: "1.0.0".into(),
                binary: "/bin/a".into(),
                previous: "/bin/a.prev".into(),
                starts: 0,
                secs: 60,
                max_starts: 3,
            }),
        );
        f.save(&r).unwrap();
        assert_eq!(f.load(), Some(r));
        std::fs::write(f.path().unwrap(), b"{garbage").unwrap();
        assert!(f.load().is_none(), "a corrupt record is ignored");
        assert!(RecordFile::beside(None)
            .save(&Record::new(
                AgentUpdateProgressPayload {
                    update_id: "x".into(),
                    state: UpdateState::Failed,
                    version: "1".into(),
                    bytes: None,
                    error: None,
                },
                None
            ))
            .is_err());
    }
}
