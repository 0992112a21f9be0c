//! Row types of the store. Secret material appears only as hashes or ciphertext, and
//! `Debug` of those fields is masked.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A user's role. Ordered: each role can do what the roles below it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::parse(s).ok_or_else(|| format!("unknown role {s:?}: admin, operator or viewer"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionMode {
    Direct,
    Agent,
}

impl ConnectionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionMode::Direct => "direct",
            ConnectionMode::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<ConnectionMode> {
        match s {
            "direct" => Some(ConnectionMode::Direct),
            "agent" => Some(ConnectionMode::Agent),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: i64,
}

/// A hash that prints masked.
fn masked(f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    f.write_str("\"***\"")
}

#[derive(Clone, PartialEq, Eq)]
pub struct NewApiToken {
    pub user_id: String,
    pub token_hash: String,
    pub prefix: String,
    pub allowed_cidrs: Vec<ipnet::IpNet>,
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for NewApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiToken")
            .field("user_id", &self.user_id)
            .field("prefix", &self.prefix)
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: String,
    pub user_id: String,
    pub user_name: String,
    pub role: Role,
    pub token_hash: String,
    pub prefix: String,
    pub allowed_cidrs: Vec<ipnet::IpNet>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("id", &self.id)
            .field("user_name", &self.user_name)
            .field("role", &self.role)
            .field("token_hash", &format_args!("***"))
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct NewHost {
    pub name: String,
    pub connection_mode: ConnectionMode,
    pub docker_url: Option<String>,
    pub tls_ca: Option<String>,
    pub tls_cert: Option<String>,
    /// Ciphertext (see `crypto`).
    pub tls_key_enc: Option<String>,
    pub tls_server_name: Option<String>,
}

impl std::fmt::Debug for NewHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewHost")
            .field("name", &self.name)
            .field("connection_mode", &self.connection_mode)
            .field("docker_url", &self.docker_url)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Host {
    pub id: String,
    pub name: String,
    pub connection_mode: ConnectionMode,
    pub docker_url: Option<String>,
    pub tls_ca: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key_enc: Option<String>,
    pub tls_server_name: Option<String>,
    /// `docker_agents.id` of the host's agent.
    pub agent_ref: Option<String>,
    /// The external `agent_id` of the host's agent.
    pub agent_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("connection_mode", &self.connection_mode)
            .field("docker_url", &self.docker_url)
            .field("agent_id", &self.agent_id)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct NewAgent {
    pub agent_id: String,
    pub host_id: String,
    pub token_hash: String,
    pub token_expires_at: Option<i64>,
    pub allowed_cidrs: Vec<ipnet::IpNet>,
}

impl std::fmt::Debug for NewAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAgent")
            .field("agent_id", &self.agent_id)
            .field("host_id", &self.host_id)
            .finish()
    }
}

#[derive(Clone, PartialEq)]
pub struct Agent {
    /// Internal row id.
    pub id: String,
    /// The id the agent authenticates with.
    pub agent_id: String,
    pub host_id: Option<String>,
    pub auth_token_hash: String,
    pub token_expires_at: Option<i64>,
    pub prev_token_hash: Option<String>,
    pub prev_token_valid_until: Option<i64>,
    pub revoked_at: Option<i64>,
    pub allowed_cidrs: Vec<ipnet::IpNet>,
    /// Per-agent overrides of the server's settings, in seconds.
    pub heartbeat_interval: Option<i64>,
    pub command_timeout: Option<i64>,
    pub status: String,
    pub session_id: Option<String>,
    pub version: Option<String>,
    pub capabilities: Vec<String>,
    pub health: Value,
    pub rtt_ms: Option<f64>,
    pub last_heartbeat: Option<i64>,
    pub connected_at: Option<i64>,
    pub disconnected_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The HMAC signing key, encrypted at rest. None: the agent does not sign.
    pub signing_key_enc: Option<String>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("id", &self.id)
            .field("agent_id", &self.agent_id)
            .field("host_id", &self.host_id)
            .field("auth_token_hash", &Masked)
            .field("status", &self.status)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

struct Masked;
impl std::fmt::Debug for Masked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        masked(f)
    }
}

/// A partial update of an agent's settings; `None` keeps the current value. For the
/// intervals, `Some(None)` clears the override.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentSettingsPatch {
    pub allowed_cidrs: Option<Vec<ipnet::IpNet>>,
    pub heartbeat_interval: Option<Option<i64>>,
    pub command_timeout: Option<Option<i64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentEvent {
    pub id: String,
    pub agent_id: Option<String>,
    pub event_type: String,
    pub event_data: Value,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewDockerEvent {
    pub host_id: String,
    pub agent_id: Option<String>,
    pub kind: String,
    pub action: String,
    pub actor_id: String,
    pub attributes: Value,
    pub time_nano: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DockerEventRecord {
    pub seq: i64,
    pub host_id: String,
    pub agent_id: Option<String>,
    pub kind: String,
    pub action: String,
    pub actor_id: String,
    pub attributes: Value,
    pub time_nano: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewAudit {
    /// `user`, `agent` or `system`.
    pub actor_kind: String,
    /// The user's name or the agent's id.
    pub actor: String,
    pub host_id: Option<String>,
    /// e.g. `operation.container.list`, `host.create`, `agent.auth`.
    pub action: String,
    pub target: Option<String>,
    /// `success`, `error` or `denied`.
    pub outcome: String,
    pub error_code: Option<String>,
    pub detail: Option<Value>,
    pub source_ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: i64,
    pub actor_kind: String,
    pub actor: String,
    pub host_id: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub error_code: Option<String>,
    pub detail: Value,
    pub source_ip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub actor_kind: Option<String>,
    pub host_id: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until: Option<i64>,
    /// Paging: entries older than this sequence number.
    pub before_seq: Option<i64>,
    #[serde(default = "default_limit")]
    pub limit: i64,
}

fn default_limit() -> i64 {
    100
}

impl Default for AuditFilter {
    fn default() -> Self {
        AuditFilter {
            actor: None,
            actor_kind: None,
            host_id: None,
            action: None,
            outcome: None,
            since: None,
            until: None,
            before_seq: None,
            limit: default_limit(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewCommand {
    pub id: String,
    pub host_id: Option<String>,
    pub agent_id: Option<String>,
    pub operation: String,
    pub requested_by: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandRecord {
    pub id: String,
    pub host_id: Option<String>,
    pub agent_id: Option<String>,
    pub operation: String,
    pub requested_by: Option<String>,
    /// Legacy: `pending`, `success` or `error`.
    pub status: String,
    pub error_code: Option<String>,
    pub created_at: i64,
    pub completed_at: Option<i64>,
    pub duration_ms: Option<i64>,
    /// `queued`, `sent`, `succeeded`, `failed` or `expired` (None for rows older than the
    /// queue).
    pub state: Option<String>,
    /// Creation order.
    pub seq: Option<i64>,
    /// Sent with `"queue": true`: kept until delivered or expired.
    pub queued: bool,
    /// `docker_agents.id` of the agent it was (or will be) sent to.
    pub agent_ref: Option<String>,
    /// The params, encrypted at rest. Never serialised.
    #[serde(skip)]
    pub params_enc: Option<String>,
    pub timeout_secs: Option<i64>,
    pub expires_at: Option<i64>,
    pub idempotency_key: Option<String>,
    /// Whether the client chose the idempotency key.
    pub client_key: bool,
    /// `{"status":"success","data":..}` or `{"status":"error","error":{..}}` once finished.
    pub result: Value,
    pub attempts: i64,
    pub sent_at: Option<i64>,
    pub updated_at: Option<i64>,
}

/// A command as the API creates it: state `queued` (or `sent` when it goes out at once).
#[derive(Clone, PartialEq)]
pub struct NewQueuedCommand {
    pub id: String,
    pub host_id: String,
    /// The external agent id (shown in the API).
    pub agent_id: Option<String>,
    pub agent_ref: Option<String>,
    pub operation: String,
    pub params_enc: Option<String>,
    pub requested_by: String,
    pub queued: bool,
    pub timeout_secs: i64,
    pub expires_at: i64,
    pub idempotency_key: String,
    pub client_key: bool,
}

impl std::fmt::Debug for NewQueuedCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewQueuedCommand")
            .field("id", &self.id)
            .field("host_id", &self.host_id)
            .field("operation", &self.operation)
            .field("queued", &self.queued)
            .finish_non_exhaustive()
    }
}

/// What `audit verify` found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AuditVerifyReport {
    /// Entries whose hash was checked.
    pub verified: u64,
    /// Entries written before the chain existed (no hash).
    pub unchained: u64,
    /// Entries whose content no longer matches their hash.
    pub changed: Vec<i64>,
    /// Entries missing from the chain (by sequence number).
    pub deleted: Vec<i64>,
    /// Other breaks of the chain, in words.
    pub problems: Vec<String>,
    /// The hash of the newest entry (anchor it elsewhere to detect a rewritten chain).
    pub head_hash: String,
    pub head_seq: i64,
}

impl AuditVerifyReport {
    pub fn ok(&self) -> bool {
        self.changed.is_empty() && self.deleted.is_empty() && self.problems.is_empty()
    }
}
