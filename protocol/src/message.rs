//! The envelope `{id, type, timestamp, payload}` and a typed payload for every message type.
//!
//! Owns: decoding untrusted bytes into typed messages (size check first, never a panic) and
//! encoding them back. Must not: do I/O or decide policy.
//!
//! Compatibility rules:
//! - unknown fields inside a payload are ignored, so older and newer peers interoperate;
//! - optional fields are omitted when absent, so the seed's examples round-trip exactly;
//! - an unknown `type` is a [`DecodeError::UnknownType`], answered with an `error` message.

use crate::error::{DecodeError, ErrorBody};
use crate::secret::Secret;
use crate::time::now_rfc3339;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
#[cfg(feature = "text-decode")]
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;

/// The protocol version this build speaks. Sent in `auth` and `auth_response`.
///
/// Version 1: the seed's messages plus `disconnect` and `command_progress`.
/// Version 2: Docker API passthrough streams (`stream_*` messages and binary data frames).
/// Version 3: agent self-update (`agent_update`, `agent_update_progress`).
pub const PROTOCOL_VERSION: u32 = 3;

/// The protocol version that adds agent self-update.
pub const UPDATES_PROTOCOL_VERSION: u32 = 3;

/// The largest text message either side accepts, in bytes. Larger frames are refused
/// before any parsing.
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Message type names, as they appear in the envelope's `type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    // agent -> server
    Auth,
    Heartbeat,
    CommandResponse,
    CommandProgress,
    Event,
    Error,
    // server -> agent
    AuthResponse,
    Command,
    ConfigUpdate,
    // either side
    Disconnect,
    // Docker API passthrough streams (protocol version 2)
    StreamOpen,
    StreamResponse,
    StreamEnd,
    StreamCancel,
    StreamCredit,
    // agent self-update (protocol version 3)
    AgentUpdate,
    AgentUpdateProgress,
    // enrolment, on its own socket (`/ws/enrol`)
    Enrol,
    EnrolResponse,
}

impl MessageType {
    pub const ALL: [MessageType; 19] = [
        MessageType::Auth,
        MessageType::Heartbeat,
        MessageType::CommandResponse,
        MessageType::CommandProgress,
        MessageType::Event,
        MessageType::Error,
        MessageType::AuthResponse,
        MessageType::Command,
        MessageType::ConfigUpdate,
        MessageType::Disconnect,
        MessageType::StreamOpen,
        MessageType::StreamResponse,
        MessageType::StreamEnd,
        MessageType::StreamCancel,
        MessageType::StreamCredit,
        MessageType::AgentUpdate,
        MessageType::AgentUpdateProgress,
        MessageType::Enrol,
        MessageType::EnrolResponse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Auth => "auth",
            MessageType::Heartbeat => "heartbeat",
            MessageType::CommandResponse => "command_response",
            MessageType::CommandProgress => "command_progress",
            MessageType::Event => "event",
            MessageType::Error => "error",
            MessageType::AuthResponse => "auth_response",
            MessageType::Command => "command",
            MessageType::ConfigUpdate => "config_update",
            MessageType::Disconnect => "disconnect",
            MessageType::StreamOpen => "stream_open",
            MessageType::StreamResponse => "stream_response",
            MessageType::StreamEnd => "stream_end",
            MessageType::StreamCancel => "stream_cancel",
            MessageType::StreamCredit => "stream_credit",
            MessageType::AgentUpdate => "agent_update",
            MessageType::AgentUpdateProgress => "agent_update_progress",
            MessageType::Enrol => "enrol",
            MessageType::EnrolResponse => "enrol_response",
        }
    }

    pub fn parse(s: &str) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// `auth` (agent -> server): the first message on every connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthPayload {
    pub agent_id: String,
    pub auth_token: Secret,
    /// The agent's software version.
    pub version: String,
    /// `docker` always; `swarm` when the daemon is a swarm node; `docker-compose` when a
    /// compose CLI is present.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The newest protocol version the agent speaks. Absent means 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
    /// The canonical form a signing agent signs with (`protocol::signing::SIGNING_VERSION`).
    /// Absent means 1, which a server refuses for a signing agent (upgrade the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_version: Option<u32>,
    /// The target triple the agent was built for (`protocol::version::TARGET`), which picks
    /// the release it updates to. Absent from agents older than protocol version 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// How the agent's last self-update went, as it recorded it (sent at every `auth`
    /// until another update replaces it), so a server that restarted, or missed an
    /// `agent_update_progress`, learns the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<AgentUpdateProgressPayload>,
    /// The agent's own labels (`agent.labels` in its config), Kubernetes label syntax. The
    /// server shows them apart from the admin's labels of the host. Absent means none (older
    /// agents).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Settings the server gives the agent in `auth_response` and `config_update`.
/// Every field is optional: a `config_update` carries only what changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentSettings {
    /// Seconds between heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<u64>,
    /// Seconds a command may run before the agent answers `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_timeout: Option<u64>,
}

impl AgentSettings {
    /// Applies the fields present in `update` on top of `self`.
    pub fn merge(&mut self, update: &AgentSettings) {
        if let Some(v) = update.heartbeat_interval {
            self.heartbeat_interval = Some(v);
        }
        if let Some(v) = update.command_timeout {
            self.command_timeout = Some(v);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthStatus {
    Authenticated,
    Rejected,
}

/// `auth_response` (server -> agent). On `rejected` the server closes the socket after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthResponsePayload {
    pub status: AuthStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<AgentSettings>,
    /// The protocol version both sides will use: the lower of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
    /// Why the agent was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// `heartbeat` (agent -> server). Every field is optional: a minimal agent may send `{}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatPayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_reachable: Option<bool>,
    /// Round-trip time of the daemon's `/_ping`, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_ping_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers_running: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers_total: Option<u64>,
    /// 1, 5 and 15 minute load averages from /proc/loadavg.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_average: Option<[f64; 3]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_total_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_available_bytes: Option<u64>,
    /// The agent's own resident set size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_rss_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_uptime_secs: Option<u64>,
    /// Bytes the agent has sent and received on the WebSocket since it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_sent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<u64>,
    /// Docker events dropped because the agent's buffer was full while the link was down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_dropped: Option<u64>,
    /// Commands running on the agent right now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commands_in_flight: Option<u64>,
}

/// `command` (server -> agent). The envelope id is the command id; the agent answers with
/// exactly one `command_response` with the same id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandPayload {
    /// An operation name of the catalog, e.g. `container.list`. See [`crate::Operation`].
    pub operation: String,
    #[serde(default = "empty_object", skip_serializing_if = "is_empty_object")]
    pub params: Value,
    /// Seconds the agent may spend; absent means the agent's `command_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// A key the agent remembers, so a command delivered twice runs once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

fn is_empty_object(v: &Value) -> bool {
    v.as_object().is_some_and(|m| m.is_empty())
}

/// `command_response` (agent -> server).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CommandResponsePayload {
    Success { data: Value },
    Error { error: ErrorBody },
}

/// Read as serde reads the internally tagged enum (`status` names the variant, whose fields
/// must be there; other members are ignored), but in one pass: serde's own would first copy
/// the whole payload, `data` and all, into a buffer of its own, then build `data` from that.
impl<'de> Deserialize<'de> for CommandResponsePayload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum Status {
            Success,
            Error,
        }
        #[derive(Deserialize)]
        struct Wire {
            status: Status,
            /// `Some` whenever the member is there, `null` included.
            #[serde(default, deserialize_with = "present")]
            data: Option<Value>,
            #[serde(default)]
            error: Option<ErrorBody>,
        }
        fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
            Value::deserialize(d).map(Some)
        }
        use serde::de::Error as _;
        let w = Wire::deserialize(d)?;
        match w.status {
            Status::Success => w
                .data
                .map(|data| CommandResponsePayload::Success { data })
                .ok_or_else(|| D::Error::missing_field("data")),
            Status::Error => w
                .error
                .map(|error| CommandResponsePayload::Error { error })
                .ok_or_else(|| D::Error::missing_field("error")),
        }
    }
}

impl CommandResponsePayload {
    pub fn from_result(result: Result<Value, ErrorBody>) -> Self {
        match result {
            Ok(data) => CommandResponsePayload::Success { data },
            Err(error) => CommandResponsePayload::Error { error },
        }
    }

    pub fn into_result(self) -> Result<Value, ErrorBody> {
        match self {
            CommandResponsePayload::Success { data } => Ok(data),
            CommandResponsePayload::Error { error } => Err(error),
        }
    }
}

/// `command_progress` (agent -> server): intermediate output of a long command such as
/// `image.pull`. The envelope id is the command's id. Zero or more precede the one
/// `command_response`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandProgressPayload {
    pub data: Value,
}

/// `event` (agent -> server): one Docker event from the daemon's `/events` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPayload {
    /// Docker's object type: `container`, `image`, `volume`, `network`, ...
    #[serde(rename = "kind")]
    pub kind: String,
    /// Docker's action: `start`, `die`, `pull`, `destroy`, ...
    pub action: String,
    /// The object's id (or name for volumes and images).
    #[serde(default)]
    pub actor_id: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
    /// Unix time in nanoseconds, from the daemon.
    #[serde(default)]
    pub time_nano: i64,
}

/// `error` (either side): a message could not be processed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorPayload {
    #[serde(flatten)]
    pub error: ErrorBody,
    /// The id of the message this error is about, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_id: Option<String>,
}

/// `config_update` (server -> agent): new settings, applied at once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigUpdatePayload {
    pub config: AgentSettings,
}

/// `disconnect` (either side): a graceful goodbye before the close frame.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DisconnectPayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `stream_open` (server -> agent): start one Docker Engine API request on a new stream.
/// The request body, if any, follows as binary data frames, then `stream_end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamOpenPayload {
    pub stream_id: u32,
    pub method: String,
    /// Origin-form target: the path (with its `/vX.Y` prefix, if any) and the query.
    pub path: String,
    /// End-to-end request headers; hop-by-hop headers are already removed.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Whether a request body follows as data frames.
    #[serde(default)]
    pub body: bool,
    /// The client asked to hijack the connection (`Upgrade: tcp`), as attach and exec do.
    #[serde(default)]
    pub upgrade: bool,
}

/// `stream_response` (agent -> server): the daemon's status and headers. For `101` the
/// stream is hijacked: raw bytes flow both ways until each side sends `stream_end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamResponsePayload {
    pub stream_id: u32,
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

/// `stream_end` (either side): the sender will send no more data on this stream. With an
/// `error`, the stream failed (for example the daemon connection broke).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamEndPayload {
    pub stream_id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// `stream_cancel` (either side): abort the stream in both directions now; the agent closes
/// its daemon connection (for example when the CLI went away).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamCancelPayload {
    pub stream_id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `stream_credit` (either side): the receiver consumed `bytes` of this stream's data and the
/// sender may send that much more. Each direction starts with [`STREAM_WINDOW`] bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamCreditPayload {
    pub stream_id: u32,
    pub bytes: u32,
}

/// `agent_update` (server -> agent, protocol version 3): install release `version` for the
/// agent's `target`. The agent downloads `{path}/signature` and `{path}/binary` from the
/// server it is connected to (its own TLS trust, its agent token), verifies them against its
/// own release public key, and reports with `agent_update_progress` messages carrying the
/// same `update_id`. An `agent_update` whose `update_id` the agent already handles or
/// handled is not started again: the agent reports where that update is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentUpdatePayload {
    /// Names this attempt in every report about it.
    pub update_id: String,
    /// The release version, as its trusted comment signs it (`version:V`).
    pub version: String,
    /// The target triple of the release (`target:T`); the agent refuses another one.
    pub target: String,
    /// The release's path on the server, below the server's base URL, e.g.
    /// `/api/v1/releases/1.3.0/aarch64-unknown-linux-musl`.
    pub path: String,
    /// The binary's size in bytes.
    pub size: u64,
}

/// Where an agent's self-update is, as `agent_update_progress` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Fetching the signature and the binary.
    Downloading,
    /// Checking the signature, the ELF header and the new binary's `--version`.
    Verifying,
    /// The new binary is in place; the agent re-executes itself and starts on probation.
    Restarting,
    /// The new version authenticated and sent a heartbeat within its probation.
    Succeeded,
    /// Refused or failed before the swap; the old version keeps running. `error` says why.
    Failed,
    /// The new version did not pass its probation; the previous binary runs again. `error`
    /// says why.
    RolledBack,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Downloading => "downloading",
            UpdateState::Verifying => "verifying",
            UpdateState::Restarting => "restarting",
            UpdateState::Succeeded => "succeeded",
            UpdateState::Failed => "failed",
            UpdateState::RolledBack => "rolled_back",
        }
    }

    /// `succeeded`, `failed` and `rolled_back` end an update.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            UpdateState::Succeeded | UpdateState::Failed | UpdateState::RolledBack
        )
    }
}

/// `agent_update_progress` (agent -> server, protocol version 3): where update `update_id`
/// is. Also the `update` field of `auth`: the agent's last update as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentUpdateProgressPayload {
    pub update_id: String,
    pub state: UpdateState,
    /// The version being installed.
    pub version: String,
    /// Bytes of the binary downloaded so far (state `downloading`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Why, for `failed` and `rolled_back`; `details.check` names the check that refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// The protocol version that adds passthrough streams.
pub const STREAMS_PROTOCOL_VERSION: u32 = 2;
/// Bytes a sender may have in flight per stream and direction before it waits for credit.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// The largest payload of one binary data frame.
pub const STREAM_CHUNK: usize = 32 * 1024;
/// The largest number of open streams per agent.
pub const MAX_STREAMS: usize = 256;

/// Encodes a binary data frame: the stream id as a big-endian u32, then the bytes.
pub fn encode_data_frame(stream_id: u32, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(4 + data.len());
    f.extend_from_slice(&stream_id.to_be_bytes());
    f.extend_from_slice(data);
    f
}

/// Decodes a binary data frame into its stream id and bytes.
pub fn decode_data_frame(frame: &[u8]) -> Result<(u32, &[u8]), DecodeError> {
    if frame.len() < 4 {
        return Err(DecodeError::Malformed(format!(
            "binary frame of {} bytes has no stream id",
            frame.len()
        )));
    }
    if frame.len() > 4 + STREAM_CHUNK {
        return Err(DecodeError::TooLarge {
            size: frame.len(),
            max: 4 + STREAM_CHUNK,
        });
    }
    let id = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
    Ok((id, &frame[4..]))
}

/// `enrol` (agent -> server): the first and only message an agent sends on `/ws/enrol`, once,
/// when it has no credentials yet. The server answers with one `enrol_response` and closes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrolPayload {
    /// The enrolment token an admin created (`dctl_e_...`). Never logged.
    pub enrol_token: Secret,
    /// The host name to enrol as: the agent's `--name`, else the machine's hostname.
    pub name: String,
    /// `name` is the machine's hostname (no name was chosen): when a host of that name
    /// belongs to another machine, the server enrols this one as `NAME-XXXXXXXX` (the first 8
    /// digits of `machine_id`) instead of refusing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub name_is_hostname: bool,
    /// Lowercase hex SHA-256 of `docker-ctl machine-id:` followed by the machine id, so the
    /// machine id itself never leaves the machine. The same machine with the same name gets
    /// its host back instead of a second one.
    pub machine_id: String,
    /// The agent's software version.
    pub version: String,
    /// The newest protocol version the agent speaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrolStatus {
    Enrolled,
    Rejected,
}

/// `enrol_response` (server -> agent): the agent's own credentials, shown this once, or why
/// the enrolment was refused. The server closes the socket after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrolResponsePayload {
    pub status: EnrolStatus,
    /// The agent id to authenticate as on `/ws/agents/{agent_id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The agent's own token. Never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// The host's name (may carry a suffix, see [`EnrolPayload::name_is_hostname`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    /// The host waits for an admin's approval: nothing reaches it until then.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pending: bool,
    /// Why the enrolment was refused (`unauthorized`: the token is unknown, revoked, expired
    /// or used up; `conflict`: the name belongs to another machine; `invalid_params`;
    /// `rate_limited`, `internal`: retry later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// A typed message: the envelope's `type` and `payload` together.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Auth(AuthPayload),
    Heartbeat(HeartbeatPayload),
    CommandResponse(CommandResponsePayload),
    CommandProgress(CommandProgressPayload),
    Event(EventPayload),
    Error(ErrorPayload),
    AuthResponse(AuthResponsePayload),
    Command(CommandPayload),
    ConfigUpdate(ConfigUpdatePayload),
    Disconnect(DisconnectPayload),
    StreamOpen(StreamOpenPayload),
    StreamResponse(StreamResponsePayload),
    StreamEnd(StreamEndPayload),
    StreamCancel(StreamCancelPayload),
    StreamCredit(StreamCreditPayload),
    AgentUpdate(AgentUpdatePayload),
    AgentUpdateProgress(AgentUpdateProgressPayload),
    Enrol(EnrolPayload),
    EnrolResponse(EnrolResponsePayload),
}

impl Message {
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::Auth(_) => MessageType::Auth,
            Message::Heartbeat(_) => MessageType::Heartbeat,
            Message::CommandResponse(_) => MessageType::CommandResponse,
            Message::CommandProgress(_) => MessageType::CommandProgress,
            Message::Event(_) => MessageType::Event,
            Message::Error(_) => MessageType::Error,
            Message::AuthResponse(_) => MessageType::AuthResponse,
            Message::Command(_) => MessageType::Command,
            Message::ConfigUpdate(_) => MessageType::ConfigUpdate,
            Message::Disconnect(_) => MessageType::Disconnect,
            Message::StreamOpen(_) => MessageType::StreamOpen,
            Message::StreamResponse(_) => MessageType::StreamResponse,
            Message::StreamEnd(_) => MessageType::StreamEnd,
            Message::StreamCancel(_) => MessageType::StreamCancel,
            Message::StreamCredit(_) => MessageType::StreamCredit,
            Message::AgentUpdate(_) => MessageType::AgentUpdate,
            Message::AgentUpdateProgress(_) => MessageType::AgentUpdateProgress,
            Message::Enrol(_) => MessageType::Enrol,
            Message::EnrolResponse(_) => MessageType::EnrolResponse,
        }
    }
}

/// Serialises a message's payload as itself: no intermediate `Value` tree.
struct PayloadOf<'a>(&'a Message);

impl Serialize for PayloadOf<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Message::Auth(p) => p.serialize(s),
            Message::Heartbeat(p) => p.serialize(s),
            Message::CommandResponse(p) => p.serialize(s),
            Message::CommandProgress(p) => p.serialize(s),
            Message::Event(p) => p.serialize(s),
            Message::Error(p) => p.serialize(s),
            Message::AuthResponse(p) => p.serialize(s),
            Message::Command(p) => p.serialize(s),
            Message::ConfigUpdate(p) => p.serialize(s),
            Message::Disconnect(p) => p.serialize(s),
            Message::StreamOpen(p) => p.serialize(s),
            Message::StreamResponse(p) => p.serialize(s),
            Message::StreamEnd(p) => p.serialize(s),
            Message::StreamCancel(p) => p.serialize(s),
            Message::StreamCredit(p) => p.serialize(s),
            Message::AgentUpdate(p) => p.serialize(s),
            Message::AgentUpdateProgress(p) => p.serialize(s),
            Message::Enrol(p) => p.serialize(s),
            Message::EnrolResponse(p) => p.serialize(s),
        }
    }
}

/// The seed's envelope: `{id, type, timestamp, payload}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique per message; a `command_response` reuses its `command`'s id.
    pub id: String,
    /// RFC 3339, UTC (`2024-01-07T10:00:00Z`).
    pub timestamp: String,
    pub message: Message,
}

#[derive(Serialize)]
struct RawOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: &'a str,
    payload: PayloadOf<'a>,
}

/// An envelope as it arrives, its payload `P` either a parsed [`Value`] (a signed message,
/// verified as a tree) or the payload's own text (everything else: parsed once, straight into
/// its type).
#[derive(Deserialize)]
struct RawIn<P> {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    timestamp: String,
    #[serde(default = "Option::default")]
    payload: Option<P>,
}

/// A payload on its way to its type: a parsed tree or its own text. Generic, not an enum, so
/// each side compiles the decoders of the forms it reads only (the agent reads text only).
trait Body {
    /// The payload as `T`; `None` (absent or null) is an empty object, so `{}`-only messages
    /// may omit it.
    fn to<T: DeserializeOwned>(self, kind: MessageType) -> Result<T, DecodeError>;
}

fn invalid_payload(kind: MessageType, reason: impl Into<String>) -> DecodeError {
    DecodeError::InvalidPayload {
        kind: kind.as_str(),
        reason: reason.into(),
    }
}

impl Body for Option<Value> {
    fn to<T: DeserializeOwned>(self, kind: MessageType) -> Result<T, DecodeError> {
        let v = match self {
            None | Some(Value::Null) => empty_object(),
            Some(v) if !v.is_object() => {
                return Err(invalid_payload(kind, "payload must be a JSON object"))
            }
            Some(v) => v,
        };
        serde_json::from_value(v).map_err(|e| invalid_payload(kind, e.to_string()))
    }
}

#[cfg(feature = "text-decode")]
impl Body for Option<&RawValue> {
    fn to<T: DeserializeOwned>(self, kind: MessageType) -> Result<T, DecodeError> {
        let text = self.map_or("{}", RawValue::get);
        if !text.starts_with('{') {
            return Err(invalid_payload(kind, "payload must be a JSON object"));
        }
        serde_json::from_str(text).map_err(|e| invalid_payload(kind, e.to_string()))
    }
}

impl Envelope {
    /// A new envelope stamped with the current time.
    pub fn new(id: impl Into<String>, message: Message) -> Self {
        Envelope {
            id: id.into(),
            timestamp: now_rfc3339(),
            message,
        }
    }

    pub fn message_type(&self) -> MessageType {
        self.message.message_type()
    }

    fn raw(&self) -> RawOut<'_> {
        RawOut {
            id: &self.id,
            kind: self.message.message_type().as_str(),
            timestamp: &self.timestamp,
            payload: PayloadOf(&self.message),
        }
    }

    /// The JSON value of the whole envelope.
    pub fn to_value(&self) -> Value {
        // Our payload types serialise to JSON objects infallibly (string keys only).
        serde_json::to_value(self.raw()).unwrap_or(Value::Null)
    }

    /// The envelope as one JSON text, ready for a WebSocket text frame. It is written
    /// straight from the typed payload (no `Value` tree is built), keys in the seed's order:
    /// `id`, `type`, `timestamp`, `payload`, and the payload's fields in their declared order.
    pub fn encode(&self) -> String {
        // Unreachable error for our payload types (string keys only), as in `to_value`.
        serde_json::to_string(&self.raw()).unwrap_or_else(|_| "null".into())
    }

    /// The text [`Envelope::encode`] writes for a new envelope (stamped now) of `kind` whose
    /// payload was already written as `payload`, the compact JSON text of that payload (as
    /// `serde_json::to_string` of the payload type writes it). A command's answer is written
    /// once on the agent: the same text is kept for duplicate deliveries and sent.
    pub fn encode_with_payload(id: &str, kind: MessageType, payload: &str) -> String {
        let timestamp = now_rfc3339();
        let mut out = String::with_capacity(payload.len() + id.len() + timestamp.len() + 64);
        let json = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        out.push_str("{\"id\":");
        out.push_str(&json(id));
        out.push_str(",\"type\":\"");
        out.push_str(kind.as_str());
        out.push_str("\",\"timestamp\":");
        out.push_str(&json(&timestamp));
        out.push_str(",\"payload\":");
        out.push_str(payload);
        out.push('}');
        out
    }

    /// Decodes one message from untrusted bytes. Checks the size before parsing. The text is
    /// parsed once: the envelope's fields, then the payload's text straight into its type (no
    /// tree of the payload is built and then copied).
    #[cfg(feature = "text-decode")]
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let (raw, kind) = header_of_text(bytes)?;
        Envelope::with_payload(raw.id, raw.timestamp, kind, raw.payload)
    }

    /// Decodes one message from untrusted bytes, through a tree (without `text-decode`).
    #[cfg(not(feature = "text-decode"))]
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        Envelope::from_value(tree_of(bytes)?)
    }

    /// Decodes an already parsed JSON value (a signed message, verified as a tree).
    pub fn from_value(value: Value) -> Result<Envelope, DecodeError> {
        let (raw, kind) = header(value)?;
        Envelope::with_payload(raw.id, raw.timestamp, kind, raw.payload)
    }

    /// The envelope of a message of `kind` whose payload is `p`.
    fn with_payload(
        id: String,
        timestamp: String,
        kind: MessageType,
        p: impl Body,
    ) -> Result<Envelope, DecodeError> {
        let message = match kind {
            MessageType::Auth => Message::Auth(p.to(kind)?),
            MessageType::Heartbeat => Message::Heartbeat(p.to(kind)?),
            MessageType::CommandResponse => Message::CommandResponse(p.to(kind)?),
            MessageType::CommandProgress => Message::CommandProgress(p.to(kind)?),
            MessageType::Event => Message::Event(p.to(kind)?),
            MessageType::StreamResponse => Message::StreamResponse(p.to(kind)?),
            MessageType::AgentUpdateProgress => Message::AgentUpdateProgress(p.to(kind)?),
            MessageType::Enrol => Message::Enrol(p.to(kind)?),
            _ => return from_server(id, timestamp, kind, p),
        };
        Ok(Envelope {
            id,
            timestamp,
            message,
        })
    }

    /// [`Envelope::decode`] for the agent: only the messages a server sends. The others are
    /// [`DecodeError::NotForThisSide`], so the agent carries no decoder for its own messages.
    /// It reads through a tree, as [`Envelope::from_value`] does: the agent parses JSON into
    /// trees anyway (Docker's answers), so this costs its binary no decoder per message type,
    /// and what a server sends it is small.
    pub fn decode_from_server(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let (raw, kind) = header(tree_of(bytes)?)?;
        from_server(raw.id, raw.timestamp, kind, raw.payload)
    }
}

/// The JSON of one message from untrusted bytes, the size checked before parsing.
fn text_of(bytes: &[u8]) -> Result<&str, DecodeError> {
    if bytes.len() > MAX_MESSAGE_SIZE {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            max: MAX_MESSAGE_SIZE,
        });
    }
    std::str::from_utf8(bytes).map_err(|e| DecodeError::Malformed(format!("invalid UTF-8: {e}")))
}

/// The tree of a message's text.
fn tree_of(bytes: &[u8]) -> Result<Value, DecodeError> {
    serde_json::from_str(text_of(bytes)?).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// The envelope's fields of a message's text, checked, and its message type. Text that is not
/// JSON is `Malformed` (the payload's text is checked as JSON here too); JSON that is not an
/// envelope is `InvalidEnvelope`.
#[cfg(feature = "text-decode")]
fn header_of_text(bytes: &[u8]) -> Result<(RawIn<&RawValue>, MessageType), DecodeError> {
    let text = text_of(bytes)?;
    if !text.trim_start().starts_with('{') {
        // Not an object (or not JSON at all): say which.
        return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Err(e) => Err(DecodeError::Malformed(e.to_string())),
            Ok(_) => Err(DecodeError::InvalidEnvelope(
                "the message is not a JSON object".into(),
            )),
        };
    }
    check_depth(text)?;
    let raw: RawIn<&RawValue> = serde_json::from_str(text).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => DecodeError::InvalidEnvelope(e.to_string()),
        _ => DecodeError::Malformed(e.to_string()),
    })?;
    let kind = check_header(&raw)?;
    Ok((raw, kind))
}

/// Nesting at which a message is refused: serde_json's own limit, which the tree path meets
/// while parsing. The one-pass path skips what a payload type ignores without building it (and
/// without a limit), so it checks first: a message is refused the same way on both paths.
#[cfg(feature = "text-decode")]
const MAX_DEPTH: usize = 128;

/// Refuses text nested [`MAX_DEPTH`] levels or deeper.
#[cfg(feature = "text-decode")]
fn check_depth(text: &str) -> Result<(), DecodeError> {
    match crate::nesting::deeper_than(text.as_bytes(), MAX_DEPTH - 1) {
        Some(i) => Err(DecodeError::Malformed(format!(
            "recursion limit exceeded at byte {i}"
        ))),
        None => Ok(()),
    }
}

/// The envelope's fields, checked, and its message type.
fn header(value: Value) -> Result<(RawIn<Value>, MessageType), DecodeError> {
    if !value.is_object() {
        return Err(DecodeError::InvalidEnvelope(
            "the message is not a JSON object".into(),
        ));
    }
    let raw: RawIn<Value> =
        serde_json::from_value(value).map_err(|e| DecodeError::InvalidEnvelope(e.to_string()))?;
    let kind = check_header(&raw)?;
    Ok((raw, kind))
}

/// The checks of an envelope's id and timestamp, and its message type.
fn check_header<P>(raw: &RawIn<P>) -> Result<MessageType, DecodeError> {
    if raw.id.is_empty() || raw.id.len() > 256 {
        return Err(DecodeError::InvalidEnvelope(
            "id must be 1 to 256 characters".into(),
        ));
    }
    if crate::time::parse_rfc3339(&raw.timestamp).is_none() {
        return Err(DecodeError::InvalidEnvelope(format!(
            "timestamp {:?} is not RFC 3339",
            raw.timestamp
        )));
    }
    MessageType::parse(&raw.kind).ok_or_else(|| DecodeError::UnknownType(raw.kind.clone()))
}

/// The messages a server sends (some go both ways); any other is
/// [`DecodeError::NotForThisSide`].
fn from_server(
    id: String,
    timestamp: String,
    kind: MessageType,
    p: impl Body,
) -> Result<Envelope, DecodeError> {
    let message = match kind {
        MessageType::Error => Message::Error(p.to(kind)?),
        MessageType::AuthResponse => Message::AuthResponse(p.to(kind)?),
        MessageType::Command => Message::Command(p.to(kind)?),
        MessageType::ConfigUpdate => Message::ConfigUpdate(p.to(kind)?),
        MessageType::Disconnect => Message::Disconnect(p.to(kind)?),
        MessageType::StreamOpen => Message::StreamOpen(p.to(kind)?),
        MessageType::StreamEnd => Message::StreamEnd(p.to(kind)?),
        MessageType::StreamCancel => Message::StreamCancel(p.to(kind)?),
        MessageType::StreamCredit => Message::StreamCredit(p.to(kind)?),
        MessageType::AgentUpdate => Message::AgentUpdate(p.to(kind)?),
        MessageType::EnrolResponse => Message::EnrolResponse(p.to(kind)?),
        other => return Err(DecodeError::NotForThisSide(other.as_str())),
    };
    Ok(Envelope {
        id,
        timestamp,
        message,
    })
}
