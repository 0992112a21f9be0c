//! The agent's configuration: the seed's `agent.yaml` plus optional extras, `${VAR}`
//! expansion, overrides, and validation.
//!
//! # Precedence
//!
//! **CLI flag > environment variable > config file > built-in default**, per setting:
//!
//! | setting          | CLI flag          | environment variable       | file key         |
//! |------------------|-------------------|----------------------------|------------------|
//! | config file path | `--config`        | `DOCKER_CTL_CONFIG`        | (default `/etc/docker-ctl/agent.yaml`) |
//! | server URL       | `--server`        | `DOCKER_CTL_SERVER`        | `server.url`     |
//! | agent id         | `--agent-id`      | `DOCKER_CTL_AGENT_ID`      | `agent.id`       |
//! | auth token       | `--token`         | `DOCKER_CTL_TOKEN`         | `agent.auth_token` |
//! | Docker socket    | `--docker-socket` | `DOCKER_CTL_DOCKER_SOCKET` | `docker.socket`  |
//! | signing key      | (none: flags show in `ps`) | `DOCKER_CTL_SIGNING_KEY` | `agent.signing_key` |
//! | state file       | `--state-file`    | `DOCKER_CTL_STATE_FILE`    | `agent.state_file` |
//! | enrolment token  | `--enrol-token`   | `DOCKER_CTL_ENROL_TOKEN`   | `agent.enrol_token` |
//! | host name        | `--name`          | `DOCKER_CTL_NAME`          | `agent.name`     |
//!
//! `agent.enrol_token` (optional): instead of `agent.id` and `agent.auth_token` (which it
//! excludes), an enrolment token an admin created. On first start the agent presents it once
//! and stores the agent id and token the server hands out in the state file (see
//! [`crate::enrol`]); later starts use those and never present the token again. It needs a
//! writable state file (never memory only). `agent.name` is the host name to enrol as
//! (default: the machine's hostname).
//!
//! `agent.signing_key` (optional): the per-agent HMAC key the server shows once, 64 hex
//! digits (or its 32 bytes in base64). When set, every JSON envelope the agent sends is signed and every
//! one it receives must carry a valid signature (see `protocol::signing`); binary data
//! frames of passthrough streams are not signed (TLS protects them). Masked everywhere.
//!
//! `agent.state_file` (optional): where idempotency keys (and enrolled credentials) are kept
//! across restarts (see [`crate::state`]). When set, its directory must be writable (created
//! when missing) or the agent refuses to start; when absent,
//! `/var/lib/docker-ctl/agent-state.json`, then
//! `$HOME/.local/state/docker-ctl/agent-state.json`, then memory only (with a warning; with
//! `agent.enrol_token` the agent refuses to start instead).
//!
//! Inside the file, `${VAR}` in any string value is replaced by the environment variable
//! `VAR`; an unset variable is an error naming it; `$$` is a literal `$`. Expansion applies
//! to string values only, so the result is never re-parsed as YAML.
//!
//! `docker.socket` follows the one Docker endpoint syntax (`protocol::endpoint`):
//! `unix:///path` (or a bare absolute path) or `tcp://host[:port]`; `https://` is refused,
//! the agent has no TLS client towards dockerd.
//!
//! Every section and key is checked: an unknown key is an error naming it. After parsing
//! and overrides, [`Config::validate`] checks values and returns what the settings written
//! as text parse into ([`Parsed`]: the server URL, the pin, the Docker endpoint, the signing
//! key), which the rest of the agent uses. `docker-ctl-agent --check-config` prints the
//! effective values with secrets masked.
//!
//! # Local policy (`policy:`)
//!
//! Enforced by the agent for catalog operations and Docker API passthrough streams alike, on
//! bodies and queries read the way dockerd reads them (see [`crate::policy`]); the server
//! cannot override it. A refusal is `forbidden` (operations) or HTTP 403 with
//! `{"message": "forbidden by agent policy: <rule> (<why>)"}` (passthrough), naming the rule:
//!
//! | key | default | effect |
//! |---|---|---|
//! | `allowed_operations` | absent (all) | only these actions: catalog operation names and passthrough route actions (`protocol::passthrough::Route::action`); `container.*` and `*` are wildcards |
//! | `read_only` | false | allow only reads: passthrough routes and catalog operations of the read access class |
//! | `deny_exec` | false | refuse exec create, start and resize |
//! | `deny_attach` | false | refuse attach (`docker attach`, `docker run -it`) |
//! | `deny_privileged` | false | refuse privileged containers and execs, host namespaces, capabilities beyond Docker's default set, unconfined security options, replaced masked paths, devices, and sharing namespaces with a container that has any of these |
//! | `deny_host_network` | false | refuse host network mode (also through `container:X`), log drivers that send to an address, `fromSrc` and build `remote` URLs, build `networkmode=host` |
//! | `deny_host_mounts` | false | refuse host-path binds, bind mounts, volumes with local-driver mount options or another driver, volumes that do not exist yet, `VolumesFrom` a container with such mounts |
//! | `container_labels` | `{}` | namespace isolation: lists, events and prunes get a label filter, requests naming a container (path, query, body, create references) inspect it first, refuse others and go by id, creates get the labels, pushed container events and `system df`/network answers are filtered |
//! | `redact_env` | false | replace env values whose names match `redact_env_patterns` by `***` in container inspect output |
//! | `redact_env_patterns` | `*PASSWORD*`, `*SECRET*`, `*TOKEN*`, `*KEY*` | case-insensitive globs of env names |
//!
//! `agent.yaml.example` documents every key with its default.
//!
//! Owns: reading and checking settings, and their parsed forms ([`ValidConfig`]). Must not:
//! open connections or log secrets.

mod server;

pub use protocol::endpoint::Endpoint;
pub use server::{Pin, ServerUrl};

use crate::signing::SigningKey;
use crate::update::versions::VersionReq;
use protocol::Secret;
use serde::Deserialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the configuration could not be loaded. Each variant's message names the problem;
/// the caller prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The YAML is invalid, a key is unknown, or a value has the wrong type.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// `${VAR}` names a variable that is not set.
    #[error(
        "config file {path}: environment variable {var} is not set (used as ${{{var}}} in {key})"
    )]
    UnsetVar {
        path: PathBuf,
        var: String,
        key: String,
    },
    /// A value is out of range or missing.
    #[error("invalid config: {0}")]
    Invalid(String),
}

fn invalid<T>(message: String) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid(message))
}

/// What [`Config::validate`] parsed from the settings written as text: the forms the rest of
/// the agent uses, so nothing parses them twice.
#[derive(Debug)]
pub struct Parsed {
    /// `server.url`'s servers in the order they are tried: the first is preferred.
    pub server_urls: Vec<ServerUrl>,
    pub pin: Option<Pin>,
    /// `unix://` or `tcp://` (the agent refuses `https://`).
    pub docker: Endpoint,
    pub signing_key: Option<SigningKey>,
    /// `update.allowed_versions`, parsed.
    pub allowed_versions: Option<VersionReq>,
}

/// A configuration that passed [`Config::validate`], with what it parsed. Built by
/// [`Config::into_valid`]; [`crate::run_valid`] runs the agent with it.
#[derive(Debug)]
pub struct ValidConfig {
    pub config: Config,
    pub parsed: Parsed,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default)]
    pub docker: DockerConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub reconnection: ReconnectionConfig,
    /// The agent's local policy, which the server cannot override (see [`crate::policy`]).
    #[serde(default)]
    pub policy: crate::policy::Policy,
    /// Self-update (see [`crate::update`]).
    #[serde(default)]
    pub update: UpdateConfig,
}

/// `update:`: whether and to what the agent updates itself when the server asks.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// `false` refuses every update.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The release public key (`release.pub`, minisign format) that every release must be
    /// signed with. The server cannot change it.
    #[serde(default = "d_public_key")]
    pub public_key: PathBuf,
    /// Versions accepted, e.g. `">=1.2.0, <2.0.0"` (see [`crate::update::versions`]);
    /// absent: any version.
    #[serde(default)]
    pub allowed_versions: Option<String>,
    /// Seconds the new binary has to authenticate and send a heartbeat before the previous
    /// one is restored.
    #[serde(default = "d_probation")]
    pub probation_secs: u64,
    /// Starts of the new binary on probation (a crash loop under systemd or procd) after
    /// which the previous one is restored.
    #[serde(default = "d_probation_starts")]
    pub probation_starts: u32,
    /// Seconds a download may take, resumptions included.
    #[serde(default = "d_download_timeout")]
    pub download_timeout: u64,
}

/// The default `update.public_key`, where `install.sh --release-pub` puts it.
pub const DEFAULT_RELEASE_PUB: &str = "/etc/docker-ctl/release.pub";

fn d_public_key() -> PathBuf {
    PathBuf::from(DEFAULT_RELEASE_PUB)
}
fn d_probation() -> u64 {
    60
}
fn d_probation_starts() -> u32 {
    3
}
fn d_download_timeout() -> u64 {
    900
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            enabled: true,
            public_key: d_public_key(),
            allowed_versions: None,
            probation_secs: d_probation(),
            probation_starts: d_probation_starts(),
            download_timeout: d_download_timeout(),
        }
    }
}

impl UpdateConfig {
    /// Checks the values; returns the parsed `allowed_versions`.
    fn check(&self) -> Result<Option<VersionReq>, ConfigError> {
        if !(5..=3600).contains(&self.probation_secs) {
            return invalid(format!(
                "update.probation_secs must be 5 to 3600, got {}",
                self.probation_secs
            ));
        }
        if !(1..=100).contains(&self.probation_starts) {
            return invalid(format!(
                "update.probation_starts must be 1 to 100, got {}",
                self.probation_starts
            ));
        }
        if !(10..=86_400).contains(&self.download_timeout) {
            return invalid(format!(
                "update.download_timeout must be 10 to 86400 seconds, got {}",
                self.download_timeout
            ));
        }
        if self.public_key.as_os_str().is_empty() {
            return invalid("update.public_key must be a file path".into());
        }
        match &self.allowed_versions {
            Some(v) => VersionReq::parse(v)
                .map(Some)
                .map_err(|e| ConfigError::Invalid(format!("update.allowed_versions: {e}"))),
            None => Ok(None),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `wss://host[:port][/base]`, or `ws://` for loopback and development. Several servers
    /// (replicas) are separated by commas, or given as a YAML list: tried in order, the first
    /// preferred.
    #[serde(default)]
    pub url: String,
    /// `false` accepts any server certificate: only with a loud warning.
    #[serde(default = "yes")]
    pub verify_ssl: bool,
    /// PEM file of CA certificates to trust instead of the built-in web roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// SHA-256 (hex or base64) of the server certificate's public key (SPKI) or of the whole
    /// certificate (DER). The connection fails unless it matches.
    #[serde(default)]
    pub pin_sha256: Option<String>,
    /// PEM client certificate chain and key for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Seconds for TCP connect, TLS and WebSocket handshakes.
    #[serde(default = "d_connect_timeout")]
    pub connect_timeout: f64,
}

fn d_connect_timeout() -> f64 {
    10.0
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            url: String::new(),
            verify_ssl: true,
            ca_file: None,
            pin_sha256: None,
            client_cert: None,
            client_key: None,
            connect_timeout: d_connect_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub auth_token: Secret,
    /// Commands running at once.
    #[serde(default = "d_workers")]
    pub workers: usize,
    /// Commands waiting for a worker; more are refused with `rate_limited`.
    #[serde(default = "d_queue")]
    pub queue: usize,
    /// Docker events kept while the link is down; older ones are dropped and counted.
    #[serde(default = "d_event_buffer")]
    pub event_buffer: usize,
    /// Seconds between heartbeats until the server says otherwise.
    #[serde(default = "d_heartbeat")]
    pub heartbeat_interval: u64,
    /// Seconds a command may run until the server says otherwise.
    #[serde(default = "d_command_timeout")]
    pub command_timeout: u64,
    /// The per-agent HMAC signing key (hex or base64); absent: messages are not signed.
    #[serde(default)]
    pub signing_key: Option<Secret>,
    /// The state file (idempotency keys, enrolled credentials); absent: the default with
    /// fallbacks.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// An enrolment token, presented once when the state file holds no credentials yet.
    #[serde(default)]
    pub enrol_token: Option<Secret>,
    /// The host name to enrol as; absent: the machine's hostname.
    #[serde(default)]
    pub name: Option<String>,
    /// The agent's own labels, reported at authentication (the server checks them).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn d_workers() -> usize {
    4
}
fn d_queue() -> usize {
    64
}
fn d_event_buffer() -> usize {
    1000
}
fn d_heartbeat() -> u64 {
    30
}
fn d_command_timeout() -> u64 {
    300
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            id: String::new(),
            auth_token: Secret::default(),
            workers: d_workers(),
            queue: d_queue(),
            event_buffer: d_event_buffer(),
            heartbeat_interval: d_heartbeat(),
            command_timeout: d_command_timeout(),
            signing_key: None,
            state_file: None,
            enrol_token: None,
            name: None,
            labels: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// `unix:///var/run/docker.sock` or `tcp://host:port` (see `protocol::endpoint`).
    #[serde(default = "d_socket")]
    pub socket: String,
    /// Seconds for connecting to the daemon and for each read or write.
    #[serde(default = "d_docker_timeout")]
    pub timeout: f64,
}

fn d_socket() -> String {
    "unix:///var/run/docker.sock".into()
}
fn d_docker_timeout() -> f64 {
    300.0
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            socket: d_socket(),
            timeout: d_docker_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`.
    #[serde(default = "d_level")]
    pub level: String,
    /// Append to this file (created mode 0600) instead of stderr.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

fn d_level() -> String {
    "info".into()
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: d_level(),
            file: None,
        }
    }
}

/// The seed's ReconnectionStrategy: `min(base * factor^attempt, max) + up to jitter * delay`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReconnectionConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Consecutive failed attempts before giving up; -1 means forever.
    #[serde(default = "d_max_attempts")]
    pub max_attempts: i64,
    #[serde(default = "d_base")]
    pub base_delay: f64,
    #[serde(default = "d_max")]
    pub max_delay: f64,
    #[serde(default = "d_factor")]
    pub factor: f64,
    /// Up to this fraction of the delay is added at random.
    #[serde(default = "d_jitter")]
    pub jitter: f64,
    /// Seconds a connection must stay up to reset the attempt counter.
    #[serde(default = "d_stable")]
    pub stable_after: f64,
}

fn d_max_attempts() -> i64 {
    -1
}
fn d_base() -> f64 {
    1.0
}
fn d_max() -> f64 {
    60.0
}
fn d_factor() -> f64 {
    2.0
}
fn d_jitter() -> f64 {
    0.1
}
fn d_stable() -> f64 {
    30.0
}

impl Default for ReconnectionConfig {
    fn default() -> Self {
        ReconnectionConfig {
            enabled: true,
            max_attempts: d_max_attempts(),
            base_delay: d_base(),
            max_delay: d_max(),
            factor: d_factor(),
            jitter: d_jitter(),
            stable_after: d_stable(),
        }
    }
}

impl ReconnectionConfig {
    /// The delay before attempt `attempt` (0-based) without jitter.
    pub fn base_delay_for(&self, attempt: u32) -> Duration {
        let d = (self.base_delay * self.factor.powi(attempt.min(64) as i32)).min(self.max_delay);
        Duration::from_secs_f64(d.max(0.0))
    }

    /// The delay with jitter; `r` is uniform in [0, 1).
    pub fn delay_for(&self, attempt: u32, r: f64) -> Duration {
        let d = self.base_delay_for(attempt);
        d + d.mul_f64(self.jitter * r.clamp(0.0, 1.0))
    }

    pub fn max(&self) -> Duration {
        Duration::from_secs_f64(self.max_delay.max(0.0))
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !(self.base_delay > 0.0
            && self.max_delay >= self.base_delay
            && self.max_delay.is_finite())
        {
            return invalid("reconnection: need 0 < base_delay <= max_delay".into());
        }
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return invalid("reconnection.factor must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return invalid("reconnection.jitter must be between 0 and 1".into());
        }
        if self.max_attempts < -1 || self.max_attempts == 0 {
            return invalid("reconnection.max_attempts must be -1 (forever) or at least 1".into());
        }
        if !(self.stable_after >= 0.0 && self.stable_after.is_finite()) {
            return invalid(
                "reconnection.stable_after must be a non-negative number of seconds".into(),
            );
        }
        Ok(())
    }
}

/// Settings given on the command line or in the environment (see the precedence table).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub server: Option<String>,
    pub agent_id: Option<String>,
    pub token: Option<Secret>,
    pub docker_socket: Option<String>,
    pub signing_key: Option<Secret>,
    pub state_file: Option<PathBuf>,
    pub enrol_token: Option<Secret>,
    pub name: Option<String>,
}

/// The longest enrolment token accepted (the server's are 50 characters).
pub const MAX_ENROL_TOKEN_LEN: usize = 128;
/// The longest host name (`agent.name`), in bytes.
pub const MAX_NAME_LEN: usize = 255;

impl Config {
    /// Parses YAML text. `env` looks up variables for `${VAR}` expansion.
    pub fn from_yaml(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let perr = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let mut value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| perr(e.to_string()))?;
        if value.is_null() {
            value = serde_yaml_ng::Value::Mapping(Default::default());
        }
        expand(&mut value, "", path, env)?;
        Config::deserialize(value).map_err(|e| perr(name_section(text, &e.to_string())))
    }

    /// Reads and parses a file.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_yaml(&text, path, env)
    }

    /// A config made of defaults only (when no file exists and everything comes from flags).
    pub fn empty() -> Config {
        Config {
            server: ServerConfig::default(),
            agent: AgentConfig::default(),
            docker: DockerConfig::default(),
            logging: LoggingConfig::default(),
            reconnection: ReconnectionConfig::default(),
            policy: crate::policy::Policy::default(),
            update: UpdateConfig::default(),
        }
    }

    pub fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.server {
            self.server.url = v.clone();
        }
        if let Some(v) = &o.agent_id {
            self.agent.id = v.clone();
        }
        if let Some(v) = &o.token {
            self.agent.auth_token = v.clone();
        }
        if let Some(v) = &o.docker_socket {
            self.docker.socket = v.clone();
        }
        if let Some(v) = &o.signing_key {
            self.agent.signing_key = Some(v.clone());
        }
        if let Some(v) = &o.state_file {
            self.agent.state_file = Some(v.clone());
        }
        if let Some(v) = &o.enrol_token {
            self.agent.enrol_token = Some(v.clone());
        }
        if let Some(v) = &o.name {
            self.agent.name = Some(v.clone());
        }
    }

    /// Checks every value after parsing and overrides, and returns what the settings written
    /// as text parse into. The first problem found is the error.
    pub fn validate(&self) -> Result<Parsed, ConfigError> {
        let server_urls = self.check_server_urls()?;
        let signing_key = self.check_agent()?;
        let docker = self.check_docker()?;
        self.check_timing()?;
        self.reconnection.check()?;
        if self.server.client_cert.is_some() != self.server.client_key.is_some() {
            return invalid("server.client_cert and server.client_key go together".into());
        }
        self.policy_check()?;
        let allowed_versions = self.update.check()?;
        let pin = match &self.server.pin_sha256 {
            Some(p) => Some(Pin::parse(p).ok_or_else(|| {
                ConfigError::Invalid(
                    "server.pin_sha256 must be a SHA-256 in hex (64 digits) or base64".into(),
                )
            })?),
            None => None,
        };
        Ok(Parsed {
            server_urls,
            pin,
            docker,
            signing_key,
            allowed_versions,
        })
    }

    /// Validates, and keeps the config with what it parsed.
    pub fn into_valid(self) -> Result<ValidConfig, ConfigError> {
        let parsed = self.validate()?;
        Ok(ValidConfig {
            config: self,
            parsed,
        })
    }

    /// `server.url`: one URL, or several separated by commas (a YAML list in the file).
    fn check_server_urls(&self) -> Result<Vec<ServerUrl>, ConfigError> {
        if self.server.url.trim().is_empty() {
            return invalid("server.url is required (or --server / DOCKER_CTL_SERVER)".into());
        }
        let mut urls = Vec::new();
        for url in self.server.url.split(',') {
            match ServerUrl::parse(url.trim()) {
                Ok(u) => urls.push(u),
                Err(e) => return invalid(format!("server.url {url:?}: {e}")),
            }
        }
        Ok(urls)
    }

    /// `agent.*`; returns the signing key.
    fn check_agent(&self) -> Result<Option<SigningKey>, ConfigError> {
        let a = &self.agent;
        match &a.enrol_token {
            Some(t) => self.check_enrolment(t)?,
            None => self.check_credentials()?,
        }
        if a.workers == 0 || a.workers > 256 {
            return invalid(format!("agent.workers must be 1 to 256, got {}", a.workers));
        }
        if a.queue == 0 {
            return invalid("agent.queue must be at least 1".into());
        }
        if a.heartbeat_interval == 0 || a.heartbeat_interval > 3600 {
            return invalid(format!(
                "agent.heartbeat_interval must be 1 to 3600 seconds, got {}",
                a.heartbeat_interval
            ));
        }
        if a.command_timeout == 0 {
            return invalid("agent.command_timeout must be at least 1 second".into());
        }
        let key = match &a.signing_key {
            Some(k) => Some(SigningKey::parse(k).map_err(ConfigError::Invalid)?),
            None => None,
        };
        if let Some(p) = &a.state_file {
            if p.as_os_str().is_empty() || p.file_name().is_none() {
                return invalid(format!(
                    "agent.state_file {:?} must be a file path",
                    p.display()
                ));
            }
        }
        Ok(key)
    }

    /// `agent.id` and `agent.auth_token`, given by an admin.
    fn check_credentials(&self) -> Result<(), ConfigError> {
        let a = &self.agent;
        if a.id.is_empty() {
            return invalid(
                "agent.id is required (or --agent-id / DOCKER_CTL_AGENT_ID), unless the agent enrols itself with agent.enrol_token (--enrol-token)"
                    .into(),
            );
        }
        if a.id.len() > 255
            || !a
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return invalid(format!(
                "agent.id {:?} must be 1 to 255 of letters, digits, '-', '_', '.'",
                a.id
            ));
        }
        if a.auth_token.is_empty() {
            return invalid("agent.auth_token is required (or --token / DOCKER_CTL_TOKEN)".into());
        }
        if a.name.is_some() {
            return invalid(
                "agent.name (--name) is the host name to enrol as: it goes with agent.enrol_token"
                    .into(),
            );
        }
        Ok(())
    }

    /// `agent.enrol_token` and `agent.name`: the agent gets its id and token from the server.
    fn check_enrolment(&self, token: &Secret) -> Result<(), ConfigError> {
        let a = &self.agent;
        if !a.id.is_empty() || !a.auth_token.is_empty() {
            return invalid(
                "agent.enrol_token (--enrol-token) excludes agent.id and agent.auth_token: the agent gets its own from the server and keeps them in the state file"
                    .into(),
            );
        }
        let t = token.expose();
        if t.is_empty() || t.len() > MAX_ENROL_TOKEN_LEN || !t.bytes().all(|b| b.is_ascii_graphic())
        {
            return invalid(format!(
                "agent.enrol_token must be 1 to {MAX_ENROL_TOKEN_LEN} printable characters without spaces"
            ));
        }
        if let Some(n) = &a.name {
            if n.trim().is_empty() || n.len() > MAX_NAME_LEN || n.chars().any(char::is_control) {
                return invalid(format!(
                    "agent.name must be 1 to {MAX_NAME_LEN} characters without control characters"
                ));
            }
        }
        Ok(())
    }

    /// `docker.*`; returns the daemon's endpoint.
    fn check_docker(&self) -> Result<Endpoint, ConfigError> {
        let socket = &self.docker.socket;
        let endpoint = match Endpoint::parse(socket) {
            Err(e) => return invalid(format!("docker.socket: {e}")),
            Ok(Endpoint::Https(_)) => {
                return invalid(format!(
                    "docker.socket {socket:?}: the agent talks to dockerd over unix:// or tcp://"
                ))
            }
            Ok(e) => e,
        };
        if !(self.docker.timeout > 0.0 && self.docker.timeout.is_finite()) {
            return invalid(format!(
                "docker.timeout must be a positive number of seconds, got {}",
                self.docker.timeout
            ));
        }
        Ok(endpoint)
    }

    /// `server.connect_timeout` and `logging.level`.
    fn check_timing(&self) -> Result<(), ConfigError> {
        if !(self.server.connect_timeout > 0.0 && self.server.connect_timeout.is_finite()) {
            return invalid("server.connect_timeout must be a positive number of seconds".into());
        }
        if crate::log::parse_level(&self.logging.level).is_none() {
            return invalid(format!(
                "logging.level {:?} must be error, warn, info, debug or trace",
                self.logging.level
            ));
        }
        Ok(())
    }

    /// The `policy:` values that serde's types cannot check.
    fn policy_check(&self) -> Result<(), ConfigError> {
        let p = &self.policy;
        if let Some(l) = &p.allowed_operations {
            if l.iter().any(String::is_empty) {
                return invalid("policy.allowed_operations has an empty entry".into());
            }
        }
        if let Some((k, _)) = p.container_labels.iter().find(|(k, _)| k.is_empty()) {
            return invalid(format!("policy.container_labels has an empty key {k:?}"));
        }
        if p.redact_env && p.redact_env_patterns.is_empty() {
            return invalid(
                "policy.redact_env is true but policy.redact_env_patterns is empty".into(),
            );
        }
        Ok(())
    }

    pub fn docker_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.docker.timeout)
    }

    /// The effective values, secrets masked, as `--check-config` prints them.
    ///
    /// Longer than 100 lines on purpose: one line per setting, in the order of `agent.yaml`, so
    /// it reads as the config reference and a new setting is added in one place.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let opt = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or("(none)".to_string(), |p| p.display().to_string())
        };
        let _ = writeln!(s, "server.url: {}", self.server.url);
        let _ = writeln!(s, "server.verify_ssl: {}", self.server.verify_ssl);
        let _ = writeln!(s, "server.ca_file: {}", opt(&self.server.ca_file));
        let _ = writeln!(
            s,
            "server.pin_sha256: {}",
            self.server.pin_sha256.as_deref().unwrap_or("(none)")
        );
        let _ = writeln!(s, "server.client_cert: {}", opt(&self.server.client_cert));
        let _ = writeln!(s, "server.client_key: {}", opt(&self.server.client_key));
        let _ = writeln!(s, "server.connect_timeout: {}", self.server.connect_timeout);
        let _ = writeln!(s, "agent.id: {}", self.agent.id);
        let _ = writeln!(s, "agent.auth_token: {}", self.agent.auth_token);
        let _ = writeln!(
            s,
            "agent.enrol_token: {}",
            self.agent
                .enrol_token
                .as_ref()
                .map_or("(none)".to_string(), |t| t.to_string())
        );
        let _ = writeln!(
            s,
            "agent.name: {}",
            self.agent
                .name
                .as_deref()
                .unwrap_or("(none: the machine's hostname)")
        );
        let _ = writeln!(s, "agent.workers: {}", self.agent.workers);
        let _ = writeln!(s, "agent.queue: {}", self.agent.queue);
        let _ = writeln!(s, "agent.event_buffer: {}", self.agent.event_buffer);
        let _ = writeln!(
            s,
            "agent.heartbeat_interval: {}",
            self.agent.heartbeat_interval
        );
        let _ = writeln!(s, "agent.command_timeout: {}", self.agent.command_timeout);
        let _ = writeln!(
            s,
            "agent.signing_key: {}",
            self.agent
                .signing_key
                .as_ref()
                .map_or("(none: messages are not signed)".to_string(), |k| k
                    .to_string())
        );
        let _ = writeln!(
            s,
            "agent.state_file: {}",
            self.agent.state_file.as_ref().map_or(
                format!("(default {}, with fallbacks)", crate::state::DEFAULT_PATH),
                |p| p.display().to_string()
            )
        );
        let _ = writeln!(s, "docker.socket: {}", self.docker.socket);
        let _ = writeln!(s, "docker.timeout: {}", self.docker.timeout);
        let _ = writeln!(s, "logging.level: {}", self.logging.level);
        let _ = writeln!(s, "logging.file: {}", opt(&self.logging.file));
        let r = &self.reconnection;
        let _ = writeln!(s, "reconnection.enabled: {}", r.enabled);
        let _ = writeln!(s, "reconnection.max_attempts: {}", r.max_attempts);
        let _ = writeln!(s, "reconnection.base_delay: {}", r.base_delay);
        let _ = writeln!(s, "reconnection.max_delay: {}", r.max_delay);
        let _ = writeln!(s, "reconnection.factor: {}", r.factor);
        let _ = writeln!(s, "reconnection.jitter: {}", r.jitter);
        let _ = writeln!(s, "reconnection.stable_after: {}", r.stable_after);
        let p = &self.policy;
        let _ = writeln!(
            s,
            "policy.allowed_operations: {}",
            p.allowed_operations
                .as_ref()
                .map_or("(all)".to_string(), |l| format!("{l:?}"))
        );
        let _ = writeln!(s, "policy.read_only: {}", p.read_only);
        let _ = writeln!(s, "policy.deny_exec: {}", p.deny_exec);
        let _ = writeln!(s, "policy.deny_attach: {}", p.deny_attach);
        let _ = writeln!(s, "policy.deny_privileged: {}", p.deny_privileged);
        let _ = writeln!(s, "policy.deny_host_network: {}", p.deny_host_network);
        let _ = writeln!(s, "policy.deny_host_mounts: {}", p.deny_host_mounts);
        let _ = writeln!(s, "policy.container_labels: {:?}", p.container_labels);
        let _ = writeln!(s, "policy.redact_env: {}", p.redact_env);
        let _ = writeln!(s, "policy.redact_env_patterns: {:?}", p.redact_env_patterns);
        let u = &self.update;
        let _ = writeln!(s, "update.enabled: {}", u.enabled);
        let _ = writeln!(s, "update.public_key: {}", u.public_key.display());
        let _ = writeln!(
            s,
            "update.allowed_versions: {}",
            u.allowed_versions.as_deref().unwrap_or("(any)")
        );
        let _ = writeln!(s, "update.probation_secs: {}", u.probation_secs);
        let _ = writeln!(s, "update.probation_starts: {}", u.probation_starts);
        let _ = writeln!(s, "update.download_timeout: {}", u.download_timeout);
        s
    }
}

/// serde names the unknown key but not its section: add the section when the key appears
/// once under a known top-level section of the text.
fn name_section(text: &str, message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some(key) = rest.split('`').next() else {
        return message.to_string();
    };
    let mut section = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if !line.starts_with(' ') && !line.starts_with('\t') && trimmed.ends_with(':') {
            section = Some(trimmed.trim_end_matches(':').to_string());
        } else if trimmed.starts_with(&format!("{key}:")) && line.len() != trimmed.len() {
            if let Some(sec) = &section {
                return format!("unknown key `{sec}.{key}` ({message})");
            }
        }
    }
    format!("unknown key `{key}` ({message})")
}

/// Expands `${VAR}` in every string value, in place. `server.url` may be a YAML list (flow or
/// block): it becomes the comma-separated form that `--server` and `DOCKER_CTL_SERVER` take.
fn expand(
    v: &mut serde_yaml_ng::Value,
    key: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    use serde_yaml_ng::Value;
    match v {
        Value::String(s) => {
            *s = expand_str(s, &|var| {
                env(var).ok_or_else(|| ConfigError::UnsetVar {
                    path: path.to_path_buf(),
                    var: var.to_string(),
                    key: key.to_string(),
                })
            })?;
        }
        Value::Mapping(m) => {
            for (k, child) in m.iter_mut() {
                let name = k.as_str().unwrap_or("?");
                let full = if key.is_empty() {
                    name.to_string()
                } else {
                    format!("{key}.{name}")
                };
                expand(child, &full, path, env)?;
            }
        }
        Value::Sequence(items) => {
            let mut joined = Some(String::new());
            for (i, child) in items.iter_mut().enumerate() {
                expand(child, &format!("{key}[{i}]"), path, env)?;
                joined = joined.zip(child.as_str()).map(|(j, u)| j + u + ",");
            }
            if key == "server.url" {
                let joined = joined.ok_or_else(|| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: "server.url: every item of the list must be a URL".into(),
                })?;
                *v = Value::String(joined.trim_end_matches(',').into());
            }
        }
        Value::Tagged(t) => expand(&mut t.value, key, path, env)?,
        _ => {}
    }
    Ok(())
}

/// `${VAR}` -> value, `$$` -> `$`; anything else is kept.
pub fn expand_str<E>(s: &str, lookup: &dyn Fn(&str) -> Result<String, E>) -> Result<String, E> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            match body.find('}') {
                Some(end) if !body[..end].is_empty() => {
                    out.push_str(&lookup(&body[..end])?);
                    rest = &body[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Warns when a config file holding the token can be read by group or others.
pub fn check_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "config file {} has mode {:o} and holds the agent token: restrict it with `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "/work/shared/fixtures/seed-agent.yaml";

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        move |k| pairs.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone())
    }

    #[test]
    fn seed_file_loads_as_is() {
        let e = env(&[
            ("AGENT_ID", "agent-prod-01"),
            ("AGENT_AUTH_TOKEN", "s3cret-token"),
        ]);
        let c = Config::load(Path::new(SEED), &e).unwrap();
        assert_eq!(c.server.url, "wss://control-platform.com");
        assert!(c.server.verify_ssl);
        assert_eq!(c.agent.id, "agent-prod-01");
        assert_eq!(c.agent.auth_token.expose(), "s3cret-token");
        assert_eq!(c.docker.socket, "unix:///var/run/docker.sock");
        assert_eq!(c.docker.timeout, 300.0);
        assert_eq!(c.logging.level, "info");
        assert_eq!(
            c.logging.file,
            Some(PathBuf::from("/var/log/docker-ctl-agent.log"))
        );
        assert_eq!(c.reconnection, ReconnectionConfig::default());
        c.validate().unwrap();
        let shown = c.render();
        assert!(!shown.contains("s3cret-token"));
        assert!(shown.contains("agent.auth_token: ***"));
        assert!(!format!("{c:?}").contains("s3cret-token"));
    }

    #[test]
    fn annotated_example_lists_every_default() {
        let e = env(&[("AGENT_ID", "a1"), ("AGENT_AUTH_TOKEN", "tok")]);
        let text = include_str!("../agent.yaml.example");
        let c = Config::from_yaml(text, Path::new("agent.yaml.example"), &e).unwrap();
        c.validate().unwrap();
        let mut d = Config::empty();
        d.server.url = "wss://control.example.com".into();
        d.agent.id = "a1".into();
        d.agent.auth_token = "tok".into();
        assert_eq!(c, d, "the example's values must be the defaults");
    }

    #[test]
    fn unset_variable_is_named() {
        let e = env(&[("AGENT_ID", "a")]);
        let err = Config::load(Path::new(SEED), &e).unwrap_err().to_string();
        assert!(
            err.contains("AGENT_AUTH_TOKEN") && err.contains("agent.auth_token"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let text =
            "server:\n  url: wss://x\n  verify_sll: false\nagent:\n  id: a\n  auth_token: t\n";
        let err = Config::from_yaml(text, Path::new("a.yaml"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.verify_sll"), "{err}");
        let err = Config::from_yaml("bogus: 1\n", Path::new("a.yaml"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn expansion_rules() {
        let look = |k: &str| -> Result<String, String> {
            if k == "A" {
                Ok("x$y".into())
            } else {
                Err(k.to_string())
            }
        };
        assert_eq!(expand_str("${A}-${A}", &look).unwrap(), "x$y-x$y");
        assert_eq!(expand_str("$$HOME $5 ${", &look).unwrap(), "$HOME $5 ${");
        assert_eq!(expand_str("${B}", &look).unwrap_err(), "B");
    }

    #[test]
    fn overrides_and_validation() {
        let mut c = Config::empty();
        assert!(c.validate().unwrap_err().to_string().contains("server.url"));
        c.apply(&Overrides {
            server: Some("ws://127.0.0.1:1".into()),
            agent_id: Some("a1".into()),
            token: Some("t".into()),
            docker_socket: Some("tcp://127.0.0.1:2375".into()),
            ..Default::default()
        });
        c.validate().unwrap();
        c.agent.workers = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("agent.workers"));
        c.agent.workers = 2;
        c.server.url = "http://x".into();
        assert!(c.validate().is_err());
        c.server.url = "wss://x".into();
        c.docker.socket = "docker.sock".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn signing_key_and_state_file() {
        let mut c = Config::empty();
        c.apply(&Overrides {
            server: Some("ws://127.0.0.1:1".into()),
            agent_id: Some("a1".into()),
            token: Some("t".into()),
            signing_key: Some(Secret::new("ab".repeat(32))),
            state_file: Some(PathBuf::from("/tmp/x/state.json")),
            ..Default::default()
        });
        let parsed = c.validate().unwrap();
        assert_eq!(parsed.signing_key.unwrap().expose(), &[0xab; 32][..]);
        let shown = c.render();
        assert!(shown.contains("agent.signing_key: ***"), "{shown}");
        assert!(!shown.contains(&"ab".repeat(32)));
        assert!(!format!("{c:?}").contains(&"ab".repeat(32)));
        assert!(shown.contains("agent.state_file: /tmp/x/state.json"));
        c.agent.signing_key = Some(Secret::new("ab".repeat(16)));
        assert!(c.validate().is_err());
        c.agent.signing_key = None;
        c.agent.state_file = Some(PathBuf::from(""));
        assert!(c.validate().is_err());
    }

    #[test]
    fn an_enrolment_token_replaces_the_id_and_token() {
        let mut c = Config::empty();
        c.apply(&Overrides {
            server: Some("wss://ctl.example".into()),
            enrol_token: Some(Secret::new("dctl_e_s3cret-value")),
            name: Some("pi-berlin-7".into()),
            ..Default::default()
        });
        c.validate().unwrap();
        let shown = c.render();
        assert!(shown.contains("agent.enrol_token: ***"), "{shown}");
        assert!(shown.contains("agent.name: pi-berlin-7"), "{shown}");
        assert!(!shown.contains("s3cret") && !format!("{c:?}").contains("s3cret"));
        c.agent.id = "a1".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("excludes agent.id"), "{err}");
        c.agent.id.clear();
        c.agent.enrol_token = Some(Secret::new("has space"));
        assert!(c.validate().is_err());
        c.agent.enrol_token = Some(Secret::new("x".repeat(MAX_ENROL_TOKEN_LEN + 1)));
        assert!(c.validate().is_err());
        c.agent.enrol_token = Some(Secret::new("dctl_e_ok"));
        c.agent.name = Some("bad\nname".into());
        assert!(c.validate().unwrap_err().to_string().contains("agent.name"));
        // A name without a token is a mistake, and so is neither credentials nor a token.
        c.agent.enrol_token = None;
        c.agent.name = Some("pi".into());
        c.agent.id = "a1".into();
        c.agent.auth_token = "t".into();
        assert!(c.validate().unwrap_err().to_string().contains("agent.name"));
        c.agent.name = None;
        c.validate().unwrap();
        c.agent.id.clear();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("agent.enrol_token"), "{err}");
    }

    #[test]
    fn several_servers_as_a_yaml_list_or_comma_separated() {
        let urls = |c: &Config| -> Vec<String> {
            let v = c.validate().unwrap();
            v.server_urls.iter().map(|u| u.agent_url("a")).collect()
        };
        let want = [
            "wss://a.example:443/ws/agents/a",
            "ws://[::1]:9/ws/agents/a",
        ];
        let base = "agent: {id: a, auth_token: t}\ndocker: {socket: \"tcp://127.0.0.1:1\"}\n";
        for server in [
            "server:\n  url: [\"wss://a.example\", \"ws://[::1]:9\"]\n",
            "server:\n  url:\n    - wss://a.example\n    - ${B}\n",
            "server:\n  url: \"wss://a.example, ws://[::1]:9\"\n",
        ] {
            let text = format!("{server}{base}");
            let c = Config::from_yaml(&text, Path::new("a.yaml"), &env(&[("B", "ws://[::1]:9")]))
                .unwrap();
            assert_eq!(urls(&c), want, "{server}");
        }
        let mut c = Config::from_yaml(
            &format!("server: {{url: wss://a}}\n{base}"),
            Path::new("a"),
            &env(&[]),
        )
        .unwrap();
        c.apply(&Overrides {
            server: Some("wss://a.example,ws://[::1]:9".into()),
            ..Default::default()
        });
        assert_eq!(urls(&c), want);
        for bad in ["wss://a,", "wss://a,http://b", ",wss://a"] {
            c.server.url = bad.into();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("server.url"), "{bad}: {err}");
        }
        let err = Config::from_yaml(
            &format!("server: {{url: [1, 2]}}\n{base}"),
            Path::new("a"),
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("url"), "{err}");
    }

    #[test]
    fn validation_returns_the_parsed_settings() {
        let mut c = Config::empty();
        c.apply(&Overrides {
            server: Some("wss://control.example:8443/base".into()),
            agent_id: Some("a1".into()),
            token: Some("t".into()),
            docker_socket: Some("tcp://[::1]:23750".into()),
            ..Default::default()
        });
        c.server.pin_sha256 = Some("ab".repeat(32));
        let v = c.into_valid().unwrap();
        assert_eq!(v.parsed.server_urls[0].host, "control.example");
        assert_eq!(v.parsed.server_urls[0].port, 8443);
        assert_eq!(v.parsed.pin, Some(Pin([0xab; 32])));
        assert_eq!(v.parsed.docker.to_string(), "tcp://[::1]:23750");
        assert!(v.parsed.signing_key.is_none());
        let mut c = v.config;
        c.docker.socket = "https://docker.example:2376".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("docker.socket"), "{err}");
        c.docker.socket = "unix:///run/docker.sock".into();
        c.server.pin_sha256 = Some("nope".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("server.pin_sha256"), "{err}");
    }

    #[test]
    fn backoff_follows_the_seed() {
        let r = ReconnectionConfig::default();
        let secs: Vec<f64> = (0..8).map(|a| r.base_delay_for(a).as_secs_f64()).collect();
        assert_eq!(secs, vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]);
        assert_eq!(r.delay_for(3, 0.999_999).as_secs_f64().round(), 9.0);
        assert!(r.delay_for(10, 1.0) <= Duration::from_secs(66));
    }
}
