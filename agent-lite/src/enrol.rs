//! Enrolling with an enrolment token (`agent.enrol_token`): once, before the first session,
//! when the state file holds no credentials yet.
//!
//! The agent dials `{server.url}/ws/enrol` with the link's TLS settings (CA, pin, client
//! certificate), sends one `enrol` message (the token, the host name, the hash of the machine
//! id, see [`crate::machine`]) and reads one `enrol_response`. The credentials it gets are
//! written to the state file (atomically, mode 0600) before they are used; from then on the
//! agent authenticates with them and never presents the token again. A refused token or name
//! will not change by itself: the agent stops with [`Error::EnrolRefused`]. A server that is
//! unreachable, busy (`rate_limited`) or failing (`internal`) is tried again per
//! `reconnection.*`.
//!
//! Owns: the enrol exchange and when to try it again. Must not: keep the credentials anywhere
//! but the state file, or send the token once credentials exist.

use crate::config::{Config, ServerUrl};
use crate::connection::dial;
use crate::error::{Error, Result};
use crate::machine;
use crate::random::{random_u64, random_unit};
use crate::shutdown::Shutdown;
use crate::state::{now_secs, Credentials, KeyStore, StateFile};
use protocol::{
    EnrolPayload, EnrolResponsePayload, EnrolStatus, Envelope, ErrorBody, ErrorCode, Message,
    PROTOCOL_VERSION,
};
use rustls::ClientConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the server has to answer `enrol`.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// What the server answered.
enum Answer {
    Enrolled(Credentials, bool),
    Refused(ErrorBody),
}

/// The agent's credentials: the ones the state file holds, else those of a new enrolment
/// (stored first). `None` when shutdown was asked for while enrolling.
pub fn credentials(
    config: &Config,
    urls: &[ServerUrl],
    tls: Option<&Arc<ClientConfig>>,
    file: &StateFile,
    keys: &KeyStore,
    shutdown: &Shutdown,
) -> Result<Option<Credentials>> {
    if let Some(c) = file.credentials() {
        if c.server != config.server.url {
            log::warn!(
                "the credentials in the state file were enrolled with {}; server.url is now {}",
                c.server,
                config.server.url
            );
        }
        log::info!(
            "using the credentials enrolled as {} (host {:?}); the enrolment token is not used again",
            c.agent_id,
            c.host_name
        );
        return Ok(Some(c));
    }
    let request = request(config, file, keys)?;
    let rc = &config.reconnection;
    let mut attempt: u32 = 0;
    loop {
        if shutdown.is_set() {
            return Ok(None);
        }
        // Several servers: each attempt asks the next one.
        let url = &urls[attempt as usize % urls.len()];
        let target = url.enrol_url();
        log::info!("enrolling as {:?} with {target}", request.name);
        let mut wait = None;
        match exchange(config, url, &target, tls, &request) {
            Ok(Answer::Enrolled(c, pending)) => return keep(file, keys, c, pending).map(Some),
            Ok(Answer::Refused(e)) if final_refusal(e.code) => {
                return Err(Error::EnrolRefused(format!(
                    "{e}. The agent stops: give it a valid enrolment token (agent.enrol_token) or another name (agent.name)"
                )))
            }
            Ok(Answer::Refused(e)) => {
                log::warn!("the server cannot enrol this host now: {e}");
                if e.code == ErrorCode::RateLimited {
                    wait = Some(rc.max());
                }
            }
            Err(e) => log::warn!("cannot enrol with {target}: {e}"),
        }
        if rc.max_attempts >= 0 && i64::from(attempt) >= rc.max_attempts {
            return Err(Error::GaveUp(format!(
                "gave up enrolling after {attempt} attempts (reconnection.max_attempts)"
            )));
        }
        let delay = wait.unwrap_or_else(|| rc.delay_for(attempt, random_unit()));
        attempt = attempt.saturating_add(1);
        log::info!("enrolling again in {:.1}s", delay.as_secs_f64());
        if shutdown.wait(delay) {
            return Ok(None);
        }
    }
}

/// A refusal that trying again will not change: the token, the name or the message.
fn final_refusal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unauthorized
            | ErrorCode::Forbidden
            | ErrorCode::Conflict
            | ErrorCode::InvalidParams
            | ErrorCode::Unsupported
    )
}

/// The `enrol` message: the token, the name (or the hostname), the machine id's hash.
fn request(config: &Config, file: &StateFile, keys: &KeyStore) -> Result<EnrolPayload> {
    let token = config
        .agent
        .enrol_token
        .clone()
        .ok_or_else(|| Error::Setup("no enrolment token (agent.enrol_token)".into()))?;
    let (name, name_is_hostname) = match &config.agent.name {
        Some(n) => (n.trim().to_string(), false),
        None => (
            machine::hostname().ok_or_else(|| {
                Error::Setup(
                    "cannot read the machine's hostname: set the host name with agent.name (--name)"
                        .into(),
                )
            })?,
            true,
        ),
    };
    Ok(EnrolPayload {
        enrol_token: token,
        name,
        name_is_hostname,
        machine_id: machine::hashed(&machine_id(file, keys)?),
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: Some(PROTOCOL_VERSION),
    })
}

/// The machine id: the system's, else the one the state file keeps, else a new random one
/// (kept in the state file before it is used).
fn machine_id(file: &StateFile, keys: &KeyStore) -> Result<String> {
    if let Some(id) = machine::read_machine_id(&machine::MACHINE_ID_FILES) {
        return Ok(id);
    }
    if let Some(id) = file.machine_id() {
        return Ok(id);
    }
    let id = machine::random_machine_id();
    file.keep_machine_id(id.clone(), keys).map_err(|e| {
        Error::Setup(format!(
            "the machine has no /etc/machine-id, and the random id that replaces it cannot be kept in the state file: {e}"
        ))
    })?;
    log::info!("the machine has no machine id: using a random one kept in the state file");
    Ok(id)
}

/// Stores the credentials before they are used.
fn keep(file: &StateFile, keys: &KeyStore, c: Credentials, pending: bool) -> Result<Credentials> {
    let path = file
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    file.keep_credentials(c.clone(), keys).map_err(|e| {
        Error::Setup(format!(
            "enrolled as {}, but the credentials cannot be written to the state file {path}: {e}. They are not used; the next start enrols again (the same machine and name get the same host)",
            c.agent_id
        ))
    })?;
    log::info!(
        "enrolled as {} for host {:?} ({}); the credentials are in {path}",
        c.agent_id,
        c.host_name,
        c.host_id
    );
    if pending {
        log::warn!(
            "host {:?} waits for an admin's approval: nothing reaches it until then (POST /api/v1/hosts/{}/approve)",
            c.host_name,
            c.host_id
        );
    }
    Ok(c)
}

/// One enrol exchange on its own connection.
fn exchange(
    config: &Config,
    url: &ServerUrl,
    target: &str,
    tls: Option<&Arc<ClientConfig>>,
    req: &EnrolPayload,
) -> std::result::Result<Answer, String> {
    let mut ws = dial(config, url, target, tls, Arc::default())?;
    let env = Envelope::new(
        format!("enrol-{:016x}", random_u64()),
        Message::Enrol(req.clone()),
    );
    ws.send(tungstenite::Message::Text(env.encode().into()))
        .map_err(|e| format!("sending enrol: {e}"))?;
    let deadline = Instant::now() + ANSWER_WAIT;
    loop {
        let frame = match ws.read() {
            Ok(f) => f,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) && Instant::now() < deadline =>
            {
                continue
            }
            Err(e) => return Err(format!("reading enrol_response: {e}")),
        };
        let text = match frame {
            tungstenite::Message::Text(t) => t,
            tungstenite::Message::Close(f) => {
                let why = f.map(|f| f.reason.to_string()).unwrap_or_default();
                return Err(format!("the server closed the connection: {why}"));
            }
            _ => continue,
        };
        let env = Envelope::decode_from_server(text.as_bytes())
            .map_err(|e| format!("bad answer: {e}"))?;
        let _ = ws.close(None);
        let _ = ws.flush();
        return match env.message {
            Message::EnrolResponse(r) => answer_of(r, config),
            other => Err(format!(
                "the server answered enrol with {}",
                other.message_type().as_str()
            )),
        };
    }
}

fn answer_of(r: EnrolResponsePayload, config: &Config) -> std::result::Result<Answer, String> {
    match r.status {
        EnrolStatus::Rejected => {
            Ok(Answer::Refused(r.error.unwrap_or_else(|| {
                ErrorBody::new(ErrorCode::Unknown, "the server gave no reason")
            })))
        }
        EnrolStatus::Enrolled => {
            let (Some(agent_id), Some(auth_token), Some(host_id), Some(host_name)) =
                (r.agent_id, r.auth_token, r.host_id, r.host_name)
            else {
                return Err("the server's enrol_response lacks the credentials".into());
            };
            let valid_id = !agent_id.is_empty()
                && agent_id.len() <= 255
                && agent_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !valid_id || auth_token.is_empty() {
                return Err(
                    "the server's enrol_response holds an unusable agent id or token".into(),
                );
            }
            let c = Credentials {
                agent_id,
                auth_token,
                host_id,
                host_name,
                server: config.server.url.clone(),
                enrolled_at: now_secs(),
            };
            Ok(Answer::Enrolled(c, r.pending))
        }
    }
}
