//! Command line and configuration.
//!
//! Owns: the clap CLI, the config file format, and building the one [`Config`] value that is
//! passed down. Precedence, written down once: **CLI > environment > file > defaults**. clap
//! already merges a flag with its environment variable; [`Config::load`] lays those values
//! over the file as JSON and deserialises the result, so no field is merged by hand.
//! Must not: keep global state.
//!
//! The file is YAML (`--config FILE`); `server/config.example.yaml` lists every key with its
//! environment variable and default. Unknown keys are rejected by name.

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use protocol::Secret;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::store::Role;

#[derive(Debug, Parser)]
#[command(
    name = "docker-ctl-server",
    version = protocol::VERSION,
    about = "docker-ctl control server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Manage user API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage enrolment tokens: agents present one once to enrol themselves.
    #[command(subcommand, name = "enrol-token")]
    EnrolToken(EnrolTokenCommand),
    /// Manage people who sign in to the web UI.
    #[command(subcommand)]
    User(UserCommand),
    /// Check the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Start the server on the embedded SQLite default, create an admin token and, when
    /// /var/run/docker.sock exists, a local host with a local agent. Runs until Ctrl-C.
    Quickstart(QuickstartArgs),
    /// Sign releases where they are built: key pairs and signatures in minisign's format.
    #[command(subcommand)]
    Release(ReleaseCommand),
}

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Write a new Ed25519 key pair: DIR/release.key (secret, unencrypted, mode 0600) and
    /// DIR/release.pub (for the agents' update.public_key).
    Keygen(ReleaseKeygenArgs),
    /// Sign a file with a release key: writes FILE.minisig (prehashed; `minisign -V` checks it).
    Sign(ReleaseSignArgs),
    /// Store a signed agent binary in the data directory, for agents to update to. The
    /// signature is checked against `release_public_key` of the config first.
    Add(ReleaseAddArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ReleaseAddArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The agent binary.
    #[arg(long, value_name = "BINARY")]
    pub file: PathBuf,
    /// Its signature [default: BINARY.minisig]
    #[arg(long, value_name = "F.minisig")]
    pub signature: Option<PathBuf>,
    /// The target triple it was built for (as its signature's `target:`).
    #[arg(long, value_name = "TRIPLE")]
    pub target: String,
    /// Its version (as its signature's `version:`).
    #[arg(long, value_name = "V")]
    pub version: String,
}

#[derive(Debug, Clone, Args)]
pub struct ReleaseKeygenArgs {
    /// Directory for release.key and release.pub (created, mode 0700, when missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace an existing key pair.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ReleaseSignArgs {
    /// The secret key file (release.key, or an unencrypted minisign key).
    #[arg(long, env = "DOCKER_CTL_RELEASE_KEY", value_name = "KEY")]
    pub key: PathBuf,
    /// The file to sign.
    #[arg(long, value_name = "F")]
    pub file: PathBuf,
    /// The signed comment [default: "timestamp:<now>\tfile:<name>\thashed", as minisign]
    #[arg(long, value_name = "TEXT")]
    pub trusted_comment: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the audit hash chain; report changed or deleted entries (exit 1 if any).
    Verify(AuditVerifyArgs),
}

#[derive(Debug, Clone, Args)]
pub struct AuditVerifyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user who signs in with a password (read from standard input, one line).
    /// Works beside a running server: the user can sign in at once.
    Create(UserCreateArgs),
}

#[derive(Debug, Clone, Args)]
pub struct UserCreateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The user's name.
    #[arg(long)]
    pub name: String,
    /// admin, operator or viewer.
    #[arg(long)]
    pub role: Role,
    /// Read the password from standard input (its first line). Without it the user has no
    /// password and signs in only with API tokens.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a user API token and print only the token on stdout.
    Create(TokenCreateArgs),
}

#[derive(Debug, Subcommand)]
pub enum EnrolTokenCommand {
    /// Create an enrolment token and print only the token on stdout (with --print-install,
    /// also the install line for each CPU).
    Create(EnrolTokenCreateArgs),
    /// List enrolment tokens (never the tokens themselves), one JSON object per line.
    List(EnrolTokenListArgs),
    /// Revoke an enrolment token: no new enrolment with it; enrolled hosts keep working.
    Revoke(EnrolTokenRevokeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct EnrolTokenCreateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The token's name (shown in lists and the audit log).
    #[arg(long)]
    pub name: String,
    /// KEY=VALUE: an admin label every host enrolled with the token gets (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::enrolment::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Expire the token after this long: seconds, or 90m, 12h, 7d, 2w [default: never]
    #[arg(long, value_name = "DURATION", value_parser = crate::enrolment::parse_duration)]
    pub expires_in: Option<Duration>,
    /// Most hosts the token may enrol [default: unlimited]
    #[arg(long, value_name = "N")]
    pub max_uses: Option<i64>,
    /// Hosts wait as `pending` until an admin approves them.
    #[arg(long)]
    pub require_approval: bool,
    /// Also print the install line for each CPU (x86_64, aarch64, armv7), run next to the
    /// release tarball: install.sh --server URL --enrol-token-file FILE.
    #[arg(long)]
    pub print_install: bool,
    /// The URL agents dial, for --print-install [default: public_url of the config, else
    /// ws(s)://LISTEN]
    #[arg(long, env = "DOCKER_CTL_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct EnrolTokenListArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Clone, Args)]
pub struct EnrolTokenRevokeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The token's id (from `enrol-token list`).
    pub id: String,
}

/// Options shared by every subcommand.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// PostgreSQL URL (postgres://...). Without it: an SQLite file under --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory for the SQLite database and the encryption key file [default: ./data]
    #[arg(long, env = "DOCKER_CTL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// YAML config file.
    #[arg(long, env = "DOCKER_CTL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "DOCKER_CTL_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "DOCKER_CTL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain: serve https and wss with rustls (needs --tls-key).
    #[arg(long, env = "DOCKER_CTL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "DOCKER_CTL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Reverse proxies (CIDRs or addresses, comma-separated) whose X-Forwarded-For /
    /// Forwarded header names the client [default: none]
    #[arg(long, env = "DOCKER_CTL_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Option<Vec<IpNet>>,
    #[command(flatten)]
    pub replica: ReplicaArgs,
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// This server as one replica of several on one PostgreSQL database.
#[derive(Debug, Clone, Default, Args)]
pub struct ReplicaArgs {
    /// This replica's id, unique among the replicas of one database (sets `server_id`)
    /// [default: default]
    #[arg(long, env = "DOCKER_CTL_REPLICA_ID", value_name = "ID")]
    pub replica_id: Option<String>,
    /// The http:// or https:// URL other replicas reach this one at (sets `advertise_url`)
    /// [default: http://LISTEN]
    #[arg(long, env = "DOCKER_CTL_ADVERTISE_URL", value_name = "URL")]
    pub advertise_url: Option<String>,
    /// PEM file of the CA that signed the replicas' certificates, for forwarding to replicas
    /// whose advertise URL is https:// (sets `replica_ca`)
    #[arg(long, env = "DOCKER_CTL_REPLICA_CA", value_name = "FILE")]
    pub replica_ca: Option<PathBuf>,
    /// This replica's region (shown with the agents it holds) [default: none]
    #[arg(long, env = "DOCKER_CTL_REGION", value_name = "R")]
    pub region: Option<String>,
}

/// The seed's AGENT_CONFIG keys (and a few more), as flags.
#[derive(Debug, Clone, Default, Args)]
pub struct AgentArgs {
    /// Seconds an agent socket may stay without any inbound frame before it is closed [default: 300]
    #[arg(long, env = "DOCKER_CTL_WEBSOCKET_TIMEOUT")]
    pub websocket_timeout: Option<f64>,
    /// Seconds between agent heartbeats; 3 missed ones mark the agent offline [default: 30]
    #[arg(long, env = "DOCKER_CTL_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<f64>,
    /// Most agents enrolled for one host [default: 100]
    #[arg(long, env = "DOCKER_CTL_MAX_AGENTS_PER_HOST")]
    pub max_agents_per_host: Option<u32>,
    /// Seconds a command may take [default: 300]
    #[arg(long, env = "DOCKER_CTL_COMMAND_TIMEOUT")]
    pub command_timeout: Option<f64>,
    /// Accept agent connections and agent-mode hosts [default: true]
    #[arg(long, env = "DOCKER_CTL_ENABLE_AGENT_MODE")]
    pub enable_agent_mode: Option<bool>,
    /// Seconds an agent has to send `auth` after connecting [default: 10]
    #[arg(long, env = "DOCKER_CTL_AUTH_TIMEOUT")]
    pub auth_timeout: Option<f64>,
    /// Seconds an old agent token keeps working after a rotation [default: 300]
    #[arg(long, env = "DOCKER_CTL_TOKEN_GRACE_PERIOD")]
    pub token_grace_period: Option<f64>,
}

#[derive(Debug, Clone, Args)]
pub struct TokenCreateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The user's name.
    #[arg(long)]
    pub name: String,
    /// admin, operator or viewer.
    #[arg(long)]
    pub role: Role,
    /// Expire the token after this many seconds.
    #[arg(long)]
    pub expires_in: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct QuickstartArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "DOCKER_CTL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The Docker socket the local agent manages.
    #[arg(long, default_value = "/var/run/docker.sock")]
    pub docker_socket: PathBuf,
    /// Path of the agent binary [default: next to this binary, then PATH]
    #[arg(long, env = "DOCKER_CTL_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A CIDR (`10.0.0.0/8`) or a single address (`10.0.0.1`, taken as `/32` or `/128`).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR (10.0.0.0/8) or an address"))
}

fn cidr_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_cidr(s).map_err(serde::de::Error::custom))
        .collect()
}

/// A duration written in seconds (fractions allowed) in files, flags and env.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub Duration);

impl Seconds {
    pub const fn secs(s: u64) -> Seconds {
        Seconds(Duration::from_secs(s))
    }
    pub fn get(self) -> Duration {
        self.0
    }
    /// Whole seconds, at least 1 (what the agent is told).
    pub fn whole_secs(self) -> u64 {
        self.0.as_secs_f64().ceil().max(1.0) as u64
    }
}

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0.as_secs_f64())
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !v.is_finite() || !(0.0..=1e9).contains(&v) {
            return Err(serde::de::Error::custom(format!(
                "{v} is not a valid number of seconds"
            )));
        }
        Ok(Seconds(Duration::from_secs_f64(v)))
    }
}

/// The server's whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `listen` / `--listen` / `DOCKER_CTL_LISTEN`.
    pub listen: SocketAddr,
    /// `database_url` / `--database-url` / `DATABASE_URL`. None: SQLite in `data_dir`.
    pub database_url: Option<Secret>,
    /// Connections in the database pool. Default 16 on PostgreSQL, 8 on SQLite. Agent
    /// handshakes are admitted a half of it at a time (see `docs/api.md`).
    pub database_max_connections: Option<u32>,
    /// Seconds a statement waits for a free pool connection before it fails. Default 10.
    pub database_acquire_timeout: Option<Seconds>,
    /// `data_dir` / `--data-dir` / `DOCKER_CTL_DATA_DIR`.
    pub data_dir: PathBuf,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub log_format: LogFormat,
    /// Base64 of 32 bytes: the key that encrypts direct hosts' TLS client keys. None: the
    /// 0600 file `data_dir/secret.key`, created on first start.
    pub encryption_key: Option<Secret>,
    /// Seconds in-flight requests get to finish after SIGTERM.
    pub shutdown_timeout: Seconds,
    /// This replica's id (`--replica-id` / `DOCKER_CTL_REPLICA_ID`), stored with each agent
    /// session and its presence. Default: `default`.
    pub server_id: Option<String>,
    /// The `http://` or `https://` URL other replicas reach this one at (`--advertise-url` /
    /// `DOCKER_CTL_ADVERTISE_URL`). None: `http://LISTEN`.
    pub advertise_url: Option<String>,
    /// The CA (PEM file) that signed the replicas' certificates: the only trust for
    /// forwarding to a replica whose advertise URL is `https://` (`--replica-ca` /
    /// `DOCKER_CTL_REPLICA_CA`). Required when this replica's own URL is `https://`.
    pub replica_ca: Option<PathBuf>,
    /// This replica's region (`--region` / `DOCKER_CTL_REGION`).
    pub region: Option<String>,
    /// Seconds between this replica's heartbeats in the database. A replica silent for 3
    /// intervals has lost the agents it held. Default 2.
    pub replica_heartbeat_interval: Seconds,
    /// The URL agents dial (`wss://ctl.example.com`), printed in install lines by
    /// `enrol-token create --print-install`. None: `ws(s)://LISTEN`.
    pub public_url: Option<String>,
    /// Failed user-API authentications allowed per source IP and minute.
    pub api_auth_failures_per_minute: u32,
    /// REST requests per second allowed per API token (burst: twice that); more get 429.
    /// Default 200.
    pub api_requests_per_second: u32,
    /// Seconds a client has to send a request's headers before the connection is closed
    /// (slowloris). Default 30.
    pub http_header_timeout: Seconds,
    /// Reverse proxies whose `X-Forwarded-For` (else `Forwarded: for=`) names the client:
    /// the right-most hop that is not one of them is the address used for the failed-login
    /// limits, `allowed_cidrs` and the audit log. Headers from other peers are ignored.
    /// Default: none (the TCP peer is the client).
    #[serde(deserialize_with = "cidr_list")]
    pub trusted_proxies: Vec<IpNet>,
    /// `release_public_key`: the `release.pub` whose signature a release must carry before
    /// `release add` stores it. None: no release can be added.
    pub release_public_key: Option<PathBuf>,
    pub sessions: SessionsConfig,
    pub agent: AgentConfig,
}

/// Browser sessions of people who sign in to the web UI.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// Seconds a session may stay unused. Default 28800 (8 hours).
    pub idle_timeout: Seconds,
    /// Seconds a session lasts at most. Default 604800 (7 days).
    pub max_age: Seconds,
    /// Failed sign-ins per client address and minute before that address's attempts are
    /// refused unchecked. Default 10.
    pub failures_per_address: u32,
    /// Failed sign-ins per user name and fifteen minutes before that user's attempts are
    /// refused unchecked (except from a browser with the user's device cookie). Default 10.
    pub failures_per_user: u32,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            idle_timeout: Seconds::secs(8 * 3600),
            max_age: Seconds::secs(7 * 24 * 3600),
            failures_per_address: 10,
            failures_per_user: 10,
        }
    }
}

/// The seed's `AGENT_CONFIG` and the agent endpoint's limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Seconds an agent socket may stay without any inbound frame (message or pong) before
    /// the server closes it. Default 300.
    pub websocket_timeout: Seconds,
    /// Seconds between heartbeats the agent is told to keep. After 3 missed intervals the
    /// agent is marked offline. Default 30.
    pub heartbeat_interval: Seconds,
    /// Most agents (not revoked) enrolled for one host. Default 100.
    pub max_agents_per_host: u32,
    /// Seconds a command may take before the API answers 504 timeout. Default 300.
    pub command_timeout: Seconds,
    /// Accept agent connections and route agent-mode hosts. Default true.
    pub enable_agent_mode: bool,
    /// Seconds an agent has after the upgrade to send `auth`. Default 10.
    pub auth_timeout: Seconds,
    /// Seconds between the server's WebSocket pings (at most 25). Default 25.
    pub ping_interval: Seconds,
    /// Seconds the previous token keeps working after a rotation. Default 300.
    pub token_grace_period: Seconds,
    /// Seconds a new agent token is valid. None (default): no expiry.
    pub token_ttl: Option<Seconds>,
    /// Messages per second an agent may send (burst: twice that). Default 100.
    pub max_messages_per_second: u32,
    /// Failed agent authentications allowed per source IP and minute. Default 10.
    pub auth_failures_per_minute: u32,
    /// Docker events kept per host. Default 1000.
    pub event_retention_count: i64,
    /// Seconds Docker events are kept. Default 604800 (7 days).
    pub event_retention_age: Seconds,
    /// Commands queued for one agent before new ones are refused with 429. Default 64.
    pub max_pending_commands: usize,
    /// Messages with a bad signature before the server closes the socket. Default 5.
    pub max_bad_signatures: u32,
    /// Seconds finished command records are kept (idempotency keys are honoured as long as
    /// their record exists). Default 604800 (7 days).
    pub command_retention_age: Seconds,
    /// Seconds agent connection events (`agent_events`: connects, disconnects, failed
    /// handshakes) are kept. Default 604800 (7 days).
    pub agent_event_retention_age: Seconds,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            database_max_connections: None,
            database_acquire_timeout: None,
            data_dir: PathBuf::from("data"),
            tls_cert: None,
            tls_key: None,
            log_format: LogFormat::Text,
            encryption_key: None,
            shutdown_timeout: Seconds::secs(10),
            server_id: None,
            advertise_url: None,
            replica_ca: None,
            region: None,
            replica_heartbeat_interval: Seconds::secs(2),
            public_url: None,
            api_auth_failures_per_minute: 30,
            api_requests_per_second: 200,
            http_header_timeout: Seconds::secs(30),
            trusted_proxies: Vec::new(),
            release_public_key: None,
            sessions: SessionsConfig::default(),
            agent: AgentConfig::default(),
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            websocket_timeout: Seconds::secs(300),
            heartbeat_interval: Seconds::secs(30),
            max_agents_per_host: 100,
            command_timeout: Seconds::secs(300),
            enable_agent_mode: true,
            auth_timeout: Seconds::secs(10),
            ping_interval: Seconds::secs(25),
            token_grace_period: Seconds::secs(300),
            token_ttl: None,
            max_messages_per_second: 100,
            auth_failures_per_minute: 10,
            event_retention_count: 1000,
            event_retention_age: Seconds::secs(7 * 24 * 3600),
            max_pending_commands: 64,
            max_bad_signatures: 5,
            command_retention_age: Seconds::secs(7 * 24 * 3600),
            agent_event_retention_age: Seconds::secs(7 * 24 * 3600),
        }
    }
}

fn put<T: Serialize>(m: &mut Map<String, Value>, key: &str, v: &Option<T>) {
    if let Some(v) = v {
        m.insert(key.to_string(), json!(v));
    }
}

/// Lays `over` onto `base`, object key by key.
fn overlay(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                overlay(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

impl CommonArgs {
    fn overrides(&self) -> Map<String, Value> {
        let mut m = Map::new();
        put(&mut m, "database_url", &self.database_url);
        put(&mut m, "data_dir", &self.data_dir);
        put(&mut m, "log_format", &self.log_format);
        m
    }
}

impl ServeArgs {
    fn overrides(&self) -> Value {
        let mut m = self.common.overrides();
        put(&mut m, "listen", &self.listen);
        put(&mut m, "tls_cert", &self.tls_cert);
        put(&mut m, "tls_key", &self.tls_key);
        put(&mut m, "trusted_proxies", &self.trusted_proxies);
        put(&mut m, "server_id", &self.replica.replica_id);
        put(&mut m, "advertise_url", &self.replica.advertise_url);
        put(&mut m, "replica_ca", &self.replica.replica_ca);
        put(&mut m, "region", &self.replica.region);
        let a = &self.agent;
        let mut am = Map::new();
        put(&mut am, "websocket_timeout", &a.websocket_timeout);
        put(&mut am, "heartbeat_interval", &a.heartbeat_interval);
        put(&mut am, "max_agents_per_host", &a.max_agents_per_host);
        put(&mut am, "command_timeout", &a.command_timeout);
        put(&mut am, "enable_agent_mode", &a.enable_agent_mode);
        put(&mut am, "auth_timeout", &a.auth_timeout);
        put(&mut am, "token_grace_period", &a.token_grace_period);
        if !am.is_empty() {
            m.insert("agent".into(), Value::Object(am));
        }
        Value::Object(m)
    }
}

impl Config {
    /// Builds the config of `serve`: the file (if any), then the flags and environment.
    pub fn load(args: &ServeArgs) -> anyhow::Result<Config> {
        Config::from_layers(args.common.config.as_deref(), args.overrides())
    }

    /// The config of `token create`: same database, data dir and file as `serve`.
    pub fn load_common(args: &CommonArgs) -> anyhow::Result<Config> {
        Config::from_layers(args.config.as_deref(), Value::Object(args.overrides()))
    }

    /// `file` (YAML) overlaid with `overrides` (JSON of the CLI/env values that were given).
    pub fn from_layers(file: Option<&Path>, overrides: Value) -> anyhow::Result<Config> {
        let mut base = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                let v: Value = serde_yaml_ng::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?;
                match v {
                    Value::Null => json!({}),
                    Value::Object(_) => v,
                    _ => bail!("config file {} must be a YAML mapping", path.display()),
                }
            }
            None => json!({}),
        };
        overlay(&mut base, overrides);
        let config: Config = serde_json::from_value(base).context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde's types cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        let a = &self.agent;
        if a.ping_interval.get() > Duration::from_secs(25) || a.ping_interval.get().is_zero() {
            bail!("agent.ping_interval must be between 0 and 25 seconds");
        }
        for (name, v) in [
            ("agent.heartbeat_interval", a.heartbeat_interval),
            ("agent.command_timeout", a.command_timeout),
            ("agent.auth_timeout", a.auth_timeout),
            ("agent.websocket_timeout", a.websocket_timeout),
        ] {
            if v.get().is_zero() {
                bail!("{name} must be greater than 0");
            }
        }
        if a.max_agents_per_host == 0 {
            bail!("agent.max_agents_per_host must be at least 1");
        }
        if self
            .database_max_connections
            .is_some_and(|n| !(1..=1000).contains(&n))
        {
            bail!("database_max_connections must be between 1 and 1000");
        }
        if self
            .database_acquire_timeout
            .is_some_and(|t| t.get().is_zero())
        {
            bail!("database_acquire_timeout must be greater than 0");
        }
        if self.api_requests_per_second == 0 {
            bail!("api_requests_per_second must be at least 1");
        }
        if self.http_header_timeout.get().is_zero() {
            bail!("http_header_timeout must be greater than 0");
        }
        let s = &self.sessions;
        if s.idle_timeout.get().is_zero() || s.max_age.get().is_zero() {
            bail!("sessions.idle_timeout and sessions.max_age must be greater than 0");
        }
        if s.failures_per_address == 0 || s.failures_per_user == 0 {
            bail!(
                "sessions.failures_per_address and sessions.failures_per_user must be at least 1"
            );
        }
        if a.max_messages_per_second == 0 {
            bail!("agent.max_messages_per_second must be at least 1");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("--tls-cert and --tls-key go together");
        }
        if let Some(u) = &self.public_url {
            check_public_url(u)?;
        }
        self.validate_replica()?;
        if let Some(url) = &self.database_url {
            let u = url.expose();
            if !(u.starts_with("postgres://")
                || u.starts_with("postgresql://")
                || u.starts_with("sqlite:"))
            {
                bail!("database_url must start with postgres://, postgresql:// or sqlite:");
            }
        }
        Ok(())
    }

    /// The replica's id, advertise URL and region.
    fn validate_replica(&self) -> anyhow::Result<()> {
        if let Some(id) = &self.server_id {
            if !valid_name(id) {
                bail!("the replica id (server_id, --replica-id) must be 1 to 64 of [A-Za-z0-9._-], not {id:?}");
            }
        }
        if let Some(r) = &self.region {
            if !valid_name(r) {
                bail!("the region (--region) must be 1 to 64 of [A-Za-z0-9._-], not {r:?}");
            }
        }
        if let Some(u) = &self.advertise_url {
            check_advertise_url(u)?;
            if u.starts_with("https://") && self.replica_ca.is_none() {
                bail!("advertise_url {u:?} is https://: set replica_ca (--replica-ca), the CA that signed the replicas' certificates");
            }
        }
        if self.replica_heartbeat_interval.get() < Duration::from_millis(100)
            || self.replica_heartbeat_interval.get() > Duration::from_secs(60)
        {
            bail!("replica_heartbeat_interval must be between 0.1 and 60 seconds");
        }
        Ok(())
    }

    /// This replica's id: `server_id`, else `default`.
    pub fn replica_id(&self) -> String {
        self.server_id.clone().unwrap_or_else(|| "default".into())
    }

    /// The URL other replicas reach this one at: `advertise_url`, else `http://LISTEN`.
    pub fn advertise_url(&self) -> String {
        match &self.advertise_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{}", self.listen),
        }
    }

    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_ref().map(|s| s.expose())
    }

    /// The database pool's settings.
    pub fn pool_settings(&self) -> crate::store::PoolSettings {
        crate::store::PoolSettings {
            max_connections: self.database_max_connections,
            acquire_timeout: self.database_acquire_timeout.map(|s| s.get()),
        }
    }

    /// The URL agents dial: `public_url`, else `ws(s)://LISTEN` (true when it was guessed).
    pub fn agent_url(&self) -> (String, bool) {
        match &self.public_url {
            Some(u) => (u.trim_end_matches('/').to_string(), false),
            None => {
                let scheme = if self.tls_cert.is_some() { "wss" } else { "ws" };
                (format!("{scheme}://{}", self.listen), true)
            }
        }
    }
}

/// A replica id or a region: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A URL replicas can reach: `http://` with a host, and no path, query or whitespace.
/// (Replicas authenticate each other with the cluster credential; TLS between them is not
/// offered yet.)
pub fn check_advertise_url(u: &str) -> anyhow::Result<()> {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"));
    let ok = rest.is_some_and(|r| {
        let r = r.trim_end_matches('/');
        !r.is_empty() && !r.contains(['/', '?', '#', '@']) && r.len() <= 255
    }) && u.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        bail!("advertise_url {u:?} must be an http:// or https:// URL of this replica (scheme, host and port only)");
    }
    Ok(())
}

/// A URL agents can dial: `ws://` or `wss://`, with nothing a shell line could misread.
pub fn check_public_url(u: &str) -> anyhow::Result<()> {
    let ok = (u.starts_with("wss://") || u.starts_with("ws://"))
        && u.len() <= 2048
        && u.bytes()
            .all(|b| b.is_ascii_graphic() && !b"'\"\\`$;&|<>".contains(&b));
    if !ok {
        bail!("public_url {u:?} must be a ws:// or wss:// URL (no quotes, spaces or shell characters)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_seed() {
        let c = Config::from_layers(None, json!({})).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.agent.websocket_timeout, Seconds::secs(300));
        assert_eq!(c.agent.heartbeat_interval, Seconds::secs(30));
        assert_eq!(c.agent.max_agents_per_host, 100);
        assert_eq!(c.agent.command_timeout, Seconds::secs(300));
        assert!(c.agent.enable_agent_mode);
    }

    #[test]
    fn cli_beats_file_and_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(
            &f,
            "listen: 127.0.0.1:9000\nagent:\n  heartbeat_interval: 5\n  command_timeout: 7\n",
        )
        .unwrap();
        let args = ServeArgs {
            common: CommonArgs {
                config: Some(f),
                ..Default::default()
            },
            agent: AgentArgs {
                heartbeat_interval: Some(2.5),
                ..Default::default()
            },
            ..Default::default()
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(
            c.agent.heartbeat_interval.get(),
            Duration::from_millis(2500)
        );
        assert_eq!(c.agent.command_timeout, Seconds::secs(7));
        assert_eq!(c.agent.max_agents_per_host, 100);
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, "agent:\n  heartbeat_intervall: 5\n").unwrap();
        let err = Config::from_layers(Some(&f), json!({})).unwrap_err();
        assert!(
            format!("{err:#}").contains("heartbeat_intervall"),
            "{err:#}"
        );
    }

    #[test]
    fn the_example_file_is_valid_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yaml");
        let c = Config::from_layers(Some(&path), json!({})).unwrap();
        let d = Config::default();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.agent.heartbeat_interval, d.agent.heartbeat_interval);
        assert_eq!(c.agent.event_retention_age, d.agent.event_retention_age);
        assert_eq!(c.agent.max_pending_commands, d.agent.max_pending_commands);
        assert_eq!(
            c.agent.agent_event_retention_age,
            d.agent.agent_event_retention_age
        );
    }

    #[test]
    fn trusted_proxies_from_file_env_and_flag() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(&f, "trusted_proxies: [\"10.0.0.0/8\", \"192.0.2.1\"]\n").unwrap();
        let from_file = Config::from_layers(Some(&f), json!({})).unwrap();
        assert_eq!(
            from_file.trusted_proxies,
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "192.0.2.1/32".parse().unwrap()
            ]
        );
        let cli = Cli::try_parse_from([
            "docker-ctl-server",
            "serve",
            "--config",
            f.to_str().unwrap(),
            "--trusted-proxies",
            "127.0.0.1,::1",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(
            c.trusted_proxies,
            vec![
                "127.0.0.1/32".parse::<IpNet>().unwrap(),
                "::1/128".parse().unwrap()
            ],
            "the flag replaces the file's list"
        );
        let err = Config::from_layers(None, json!({"trusted_proxies": ["nope"]})).unwrap_err();
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
        assert!(Config::default().trusted_proxies.is_empty());
    }

    #[test]
    fn replica_flags_set_server_id_advertise_url_and_region() {
        let cli = Cli::try_parse_from([
            "docker-ctl-server",
            "serve",
            "--replica-id",
            "eu-1",
            "--advertise-url",
            "http://10.0.0.5:8080/",
            "--region",
            "eu",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        let c = Config::load(&args).unwrap();
        assert_eq!(c.server_id.as_deref(), Some("eu-1"));
        assert_eq!(c.replica_id(), "eu-1");
        assert_eq!(c.advertise_url(), "http://10.0.0.5:8080");
        assert_eq!(c.region.as_deref(), Some("eu"));
        let d = Config::default();
        assert_eq!(d.replica_id(), "default");
        assert_eq!(d.advertise_url(), "http://127.0.0.1:8080");
        for bad in [
            json!({"advertise_url": "ws://x:1"}),
            json!({"advertise_url": "https://x:1"}),
            json!({"advertise_url": "https://x:1/path"}),
            json!({"advertise_url": "http://x:1/path"}),
            json!({"advertise_url": "http://"}),
            json!({"server_id": "a b"}),
            json!({"server_id": ""}),
            json!({"region": "x".repeat(65)}),
            json!({"replica_heartbeat_interval": 0}),
        ] {
            assert!(Config::from_layers(None, bad.clone()).is_err(), "{bad}");
        }
        let err = Config::from_layers(None, json!({"advertise_url": "https://x:1"})).unwrap_err();
        assert!(format!("{err:#}").contains("replica_ca"), "{err:#}");
        let tls = Config::from_layers(
            None,
            json!({"advertise_url": "https://r1.internal:8443/", "replica_ca": "/etc/ca.pem"}),
        )
        .unwrap();
        assert_eq!(tls.advertise_url(), "https://r1.internal:8443");
    }

    #[test]
    fn validation_refuses_a_slow_ping() {
        let err = Config::from_layers(None, json!({"agent": {"ping_interval": 60}})).unwrap_err();
        assert!(err.to_string().contains("ping_interval"));
    }

    #[test]
    fn database_url_is_masked_in_debug() {
        let c = Config::from_layers(None, json!({"database_url": "postgres://u:pw@h/db"})).unwrap();
        assert!(!format!("{c:?}").contains("pw@"));
    }
}
