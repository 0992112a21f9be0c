//! The operation catalog: every operation a `command` may name, with typed params.
//!
//! Owns: parameter names, types, defaults and validation. Params are snake_case and follow
//! Docker's query names where Docker has one (`all`, `filters`, `tail`, `since`, `force`, `t`,
//! `v`, ...). Unknown params are ignored (compatibility rule), wrong types are
//! `invalid_params`. Must not: know how an operation reaches Docker (see [`crate::mapping`]).

use crate::error::{ErrorBody, ErrorCode};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Docker-style filters: `{"label": ["app=web"], "status": ["running"]}`.
///
/// Also accepts the seed's short form `{"label": "app=web"}` where a value is one string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Filters(pub BTreeMap<String, Vec<String>>);

impl Filters {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `filters` query value Docker expects: `{"label":{"app=web":true}}` is the legacy
    /// form; the list form `{"label":["app=web"]}` is accepted by every API version we support.
    pub fn to_query(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".into())
    }
}

impl<'de> Deserialize<'de> for Filters {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum One {
            Str(String),
            List(Vec<String>),
            // Docker's legacy form {"app=web": true}
            Map(BTreeMap<String, bool>),
        }
        let raw: Option<BTreeMap<String, One>> = Option::deserialize(d)?;
        let mut out = BTreeMap::new();
        for (k, v) in raw.unwrap_or_default() {
            let list = match v {
                One::Str(s) => vec![s],
                One::List(l) => l,
                One::Map(m) => m
                    .into_iter()
                    .filter(|(_, on)| *on)
                    .map(|(k, _)| k)
                    .collect(),
            };
            out.insert(k, list);
        }
        Ok(Filters(out))
    }
}

/// A list of strings that may also be given as a single string.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct StringList(pub Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Option::<Raw>::deserialize(d)? {
            None => StringList(Vec::new()),
            Some(Raw::One(s)) => StringList(vec![s]),
            Some(Raw::Many(v)) => StringList(v),
        })
    }
}

/// Environment as `["K=V"]` or `{"K": "V"}`; kept in Docker's `K=V` form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct EnvList(pub Vec<String>);

impl<'de> Deserialize<'de> for EnvList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            Map(BTreeMap<String, String>),
        }
        Ok(match Option::<Raw>::deserialize(d)? {
            None => EnvList(Vec::new()),
            Some(Raw::List(v)) => EnvList(v),
            Some(Raw::Map(m)) => EnvList(m.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
        })
    }
}

/// A number or a string (`tail: 100` or `tail: "all"`, `since: 1700000000` or `"10m"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct NumOrString(pub String);

impl<'de> Deserialize<'de> for NumOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(NumOrString(s)),
            Value::Number(n) => Ok(NumOrString(n.to_string())),
            other => Err(de::Error::custom(format!(
                "expected a number or a string, got {other}"
            ))),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NoParams {}

/// `{ "id": "web-1" }`: a full id, a short id or a name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdParams {
    pub id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FiltersParams {
    #[serde(default, skip_serializing_if = "Filters::is_empty")]
    pub filters: Filters,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerListParams {
    #[serde(default)]
    pub all: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default)]
    pub size: bool,
    #[serde(default, skip_serializing_if = "Filters::is_empty")]
    pub filters: Filters,
}

/// A published port: `"8080:80"`, `"127.0.0.1:8080:80/udp"`, `"80"`, or the object form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub protocol: String,
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Obj {
            #[serde(default)]
            host_ip: Option<String>,
            #[serde(default)]
            host_port: Option<u16>,
            container_port: u16,
            #[serde(default)]
            protocol: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Num(u16),
            Obj(Obj),
        }
        match Raw::deserialize(d)? {
            Raw::Num(p) => Ok(PortSpec {
                host_ip: None,
                host_port: None,
                container_port: p,
                protocol: "tcp".into(),
            }),
            Raw::Text(s) => PortSpec::parse(&s).map_err(de::Error::custom),
            Raw::Obj(o) => {
                let protocol = o.protocol.unwrap_or_else(|| "tcp".into());
                check_proto(&protocol).map_err(de::Error::custom)?;
                Ok(PortSpec {
                    host_ip: o.host_ip,
                    host_port: o.host_port,
                    container_port: o.container_port,
                    protocol,
                })
            }
        }
    }
}

fn check_proto(p: &str) -> Result<(), String> {
    match p {
        "tcp" | "udp" | "sctp" => Ok(()),
        _ => Err(format!("unknown port protocol {p:?} (tcp, udp or sctp)")),
    }
}

impl PortSpec {
    /// Parses Docker CLI's `-p` syntax: `[ip:][host_port:]container_port[/proto]`.
    pub fn parse(s: &str) -> Result<PortSpec, String> {
        let (rest, protocol) = match s.rsplit_once('/') {
            Some((r, p)) => (r, p.to_string()),
            None => (s, "tcp".to_string()),
        };
        check_proto(&protocol)?;
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("invalid port {p:?} in {s:?}"))
        };
        // An IPv6 host ip is bracketed: [::1]:8080:80
        let (host_ip, rest) = if let Some(stripped) = rest.strip_prefix('[') {
            let (ip, r) = stripped
                .split_once("]:")
                .ok_or_else(|| format!("invalid port spec {s:?}"))?;
            (Some(ip.to_string()), r)
        } else {
            (None, rest)
        };
        let parts: Vec<&str> = rest.split(':').collect();
        match (host_ip, parts.as_slice()) {
            (None, [c]) => Ok(PortSpec {
                host_ip: None,
                host_port: None,
                container_port: port(c)?,
                protocol,
            }),
            (ip, [h, c]) if ip.is_some() => Ok(PortSpec {
                host_ip: ip,
                host_port: if h.is_empty() { None } else { Some(port(h)?) },
                container_port: port(c)?,
                protocol,
            }),
            (None, [h, c]) => Ok(PortSpec {
                host_ip: None,
                host_port: Some(port(h)?),
                container_port: port(c)?,
                protocol,
            }),
            (None, [ip, h, c]) => Ok(PortSpec {
                host_ip: Some(ip.to_string()),
                host_port: if h.is_empty() { None } else { Some(port(h)?) },
                container_port: port(c)?,
                protocol,
            }),
            _ => Err(format!("invalid port spec {s:?}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountType {
    Bind,
    Volume,
    Tmpfs,
}

/// A mount: `"/host/path:/in/container[:ro]"` (bind), `"volname:/data"` (volume), or the
/// object form `{type, source, target, read_only}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountSpec {
    #[serde(rename = "type")]
    pub kind: MountType,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

impl<'de> Deserialize<'de> for MountSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Obj {
            #[serde(rename = "type")]
            kind: MountType,
            #[serde(default)]
            source: String,
            target: String,
            #[serde(default)]
            read_only: bool,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Obj(Obj),
        }
        let m = match Raw::deserialize(d)? {
            Raw::Text(s) => MountSpec::parse(&s).map_err(de::Error::custom)?,
            Raw::Obj(o) => MountSpec {
                kind: o.kind,
                source: o.source,
                target: o.target,
                read_only: o.read_only,
            },
        };
        if !m.target.starts_with('/') {
            return Err(de::Error::custom(format!(
                "mount target {:?} must be an absolute path",
                m.target
            )));
        }
        if m.kind != MountType::Tmpfs && m.source.is_empty() {
            return Err(de::Error::custom("mount source is required"));
        }
        Ok(m)
    }
}

impl MountSpec {
    pub fn parse(s: &str) -> Result<MountSpec, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, opts) = match parts.as_slice() {
            [src, dst] => (*src, *dst, ""),
            [src, dst, o] => (*src, *dst, *o),
            _ => return Err(format!("invalid mount {s:?}: expected source:target[:ro]")),
        };
        let read_only = match opts {
            "" | "rw" => false,
            "ro" => true,
            o => return Err(format!("invalid mount option {o:?} in {s:?} (ro or rw)")),
        };
        let kind = if source.starts_with('/') {
            MountType::Bind
        } else {
            MountType::Volume
        };
        Ok(MountSpec {
            kind,
            source: source.into(),
            target: target.into(),
            read_only,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerCreateParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<StringList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<StringList>,
    #[serde(default, skip_serializing_if = "is_empty_env")]
    pub env: EnvList,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    /// A network to attach to; `host` and `none` are Docker's special networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `no`, `always`, `unless-stopped`, `on-failure` or `on-failure:N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default)]
    pub tty: bool,
    /// Docker's own create body, merged last, for anything not covered above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<Value>,
}

fn is_empty_env(e: &EnvList) -> bool {
    e.0.is_empty()
}

/// `stop` and `restart`: `t` is Docker's seconds to wait before killing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopParams {
    pub id: String,
    #[serde(default, alias = "timeout", skip_serializing_if = "Option::is_none")]
    pub t: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KillParams {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRemoveParams {
    pub id: String,
    #[serde(default)]
    pub force: bool,
    /// Remove anonymous volumes too (Docker's `v`).
    #[serde(default, alias = "volumes")]
    pub v: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenameParams {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopParams {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ps_args: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogsParams {
    pub id: String,
    /// Lines from the end: a number or `"all"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<NumOrString>,
    /// Unix seconds (or an RFC 3339 time / Go duration, as Docker takes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<NumOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<NumOrString>,
    #[serde(default)]
    pub timestamps: bool,
    #[serde(default = "yes")]
    pub stdout: bool,
    #[serde(default = "yes")]
    pub stderr: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecParams {
    pub id: String,
    pub cmd: StringList,
    #[serde(default, skip_serializing_if = "is_empty_env")]
    pub env: EnvList,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default)]
    pub privileged: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageListParams {
    #[serde(default)]
    pub all: bool,
    #[serde(default, skip_serializing_if = "Filters::is_empty")]
    pub filters: Filters,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagePullParams {
    /// `busybox`, `busybox:1.36` or `registry.local/x/y@sha256:...` (Docker's `fromImage`).
    #[serde(alias = "from_image")]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Credentials for the image's registry, sent to the daemon as `X-Registry-Auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegistryAuth>,
}

/// A registry login for one pull. `Debug` masks the password.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryAuth {
    pub username: String,
    pub password: crate::Secret,
    /// The registry's address, e.g. `registry.example:5000`.
    #[serde(default)]
    pub serveraddress: String,
}

impl RegistryAuth {
    /// The `X-Registry-Auth` header value: base64url of the JSON Docker reads.
    pub fn header_value(&self) -> crate::Secret {
        use base64::Engine;
        let doc = serde_json::json!({
            "username": self.username,
            "password": self.password.expose(),
            "serveraddress": self.serveraddress,
        });
        crate::Secret::new(base64::engine::general_purpose::URL_SAFE.encode(doc.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRemoveParams {
    pub id: String,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub noprune: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageTagParams {
    pub id: String,
    pub repo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeCreateParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeRemoveParams {
    pub id: String,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkCreateParams {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// Docker's own create body, merged last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkConnectParams {
    /// The network.
    pub id: String,
    /// The container: id or name.
    pub container: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkDisconnectParams {
    pub id: String,
    pub container: String,
    #[serde(default)]
    pub force: bool,
}

/// What an operation does, for role checks: viewers may run `Read` only. Reading the
/// contents of a container's files or of an image (archive, export, save) is `Write`: it
/// hands out whatever secrets they hold, so it needs an operator, and it is audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One entry of the operation catalog: what the server's authority, the agent's policy and
/// the docs know about an operation without parsing its params.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperationInfo {
    /// The wire name, e.g. `container.list`.
    pub name: &'static str,
    /// Whether a viewer may run it.
    pub access: Access,
    /// The param that names an existing container (`id`, or `container` for network
    /// connect and disconnect), when the operation acts on one.
    pub container: Option<&'static str>,
}

/// Writes the catalog once: the [`Operation`] enum with its wire names, [`CATALOG`],
/// [`OPERATION_NAMES`] and [`Operation::info`] all come from the one table below.
macro_rules! catalog {
    ($( $variant:ident($params:ty) = $name:literal, $access:ident, $container:expr; )*) => {
        /// Every operation of the catalog with its typed params.
        ///
        /// Serialised as `{"operation": "container.list", "params": {...}}`, which is exactly
        /// the `command` payload's shape.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "operation", content = "params")]
        pub enum Operation {
            $( #[serde(rename = $name)] $variant($params), )*
        }

        /// The operation catalog, in catalog order.
        pub const CATALOG: &[OperationInfo] = &[
            $( OperationInfo { name: $name, access: Access::$access, container: $container }, )*
        ];

        /// Every operation name of the catalog, in catalog order.
        pub const OPERATION_NAMES: &[&str] = &[ $( $name, )* ];

        impl Operation {
            /// Reads `params` as the params of operation `name`; `None` for a name that is
            /// not in the catalog. Each params type is read directly (not through the
            /// tagged enum), which keeps the agent small.
            fn from_parts(name: &str, params: Value) -> Option<serde_json::Result<Operation>> {
                Some(match name {
                    $( $name => serde_json::from_value::<$params>(params).map(Operation::$variant), )*
                    _ => return None,
                })
            }

            /// The operation's catalog entry.
            pub fn info(&self) -> &'static OperationInfo {
                match self {
                    $( Operation::$variant(_) => &OperationInfo {
                        name: $name,
                        access: Access::$access,
                        container: $container,
                    }, )*
                }
            }
        }
    };
}

const ID: Option<&str> = Some("id");

catalog! {
    SystemPing(NoParams) = "system.ping", Read, None;
    SystemInfo(NoParams) = "system.info", Read, None;
    SystemVersion(NoParams) = "system.version", Read, None;
    SystemDf(NoParams) = "system.df", Read, None;

    ContainerList(ContainerListParams) = "container.list", Read, None;
    ContainerInspect(IdParams) = "container.inspect", Read, ID;
    ContainerCreate(ContainerCreateParams) = "container.create", Write, None;
    ContainerStart(IdParams) = "container.start", Write, ID;
    ContainerStop(StopParams) = "container.stop", Write, ID;
    ContainerRestart(StopParams) = "container.restart", Write, ID;
    ContainerKill(KillParams) = "container.kill", Write, ID;
    ContainerPause(IdParams) = "container.pause", Write, ID;
    ContainerUnpause(IdParams) = "container.unpause", Write, ID;
    ContainerRemove(ContainerRemoveParams) = "container.remove", Write, ID;
    ContainerRename(RenameParams) = "container.rename", Write, ID;
    ContainerPrune(FiltersParams) = "container.prune", Write, None;
    ContainerTop(TopParams) = "container.top", Read, ID;
    ContainerLogs(LogsParams) = "container.logs", Read, ID;
    ContainerStats(IdParams) = "container.stats", Read, ID;
    ContainerExec(ExecParams) = "container.exec", Write, ID;

    ImageList(ImageListParams) = "image.list", Read, None;
    ImageInspect(IdParams) = "image.inspect", Read, None;
    ImagePull(ImagePullParams) = "image.pull", Write, None;
    ImageRemove(ImageRemoveParams) = "image.remove", Write, None;
    ImageTag(ImageTagParams) = "image.tag", Write, None;
    ImagePrune(FiltersParams) = "image.prune", Write, None;

    VolumeList(FiltersParams) = "volume.list", Read, None;
    VolumeInspect(IdParams) = "volume.inspect", Read, None;
    VolumeCreate(VolumeCreateParams) = "volume.create", Write, None;
    VolumeRemove(VolumeRemoveParams) = "volume.remove", Write, None;
    VolumePrune(FiltersParams) = "volume.prune", Write, None;

    NetworkList(FiltersParams) = "network.list", Read, None;
    NetworkInspect(IdParams) = "network.inspect", Read, None;
    NetworkCreate(NetworkCreateParams) = "network.create", Write, None;
    NetworkRemove(IdParams) = "network.remove", Write, None;
    NetworkConnect(NetworkConnectParams) = "network.connect", Write, Some("container");
    NetworkDisconnect(NetworkDisconnectParams) = "network.disconnect", Write, Some("container");
    NetworkPrune(FiltersParams) = "network.prune", Write, None;

    SwarmInspect(NoParams) = "swarm.inspect", Read, None;
    ServiceList(FiltersParams) = "service.list", Read, None;
    NodeList(FiltersParams) = "node.list", Read, None;
}

/// The catalog entry of an operation name.
pub fn lookup(name: &str) -> Option<&'static OperationInfo> {
    CATALOG.iter().find(|o| o.name == name)
}

impl Operation {
    /// Parses an operation name and its params (a JSON object, or null for none).
    ///
    /// Errors: `unsupported` for an unknown name, `invalid_params` for params that do not fit.
    pub fn parse(name: &str, params: &Value) -> Result<Operation, ErrorBody> {
        let unknown = || {
            ErrorBody::new(
                ErrorCode::Unsupported,
                format!("unknown operation {name:?}"),
            )
        };
        if lookup(name).is_none() {
            return Err(unknown());
        }
        let params = match params {
            Value::Null => Value::Object(Default::default()),
            Value::Object(_) => params.clone(),
            _ => return Err(ErrorBody::invalid_params("params must be a JSON object")),
        };
        let op = Operation::from_parts(name, params)
            .ok_or_else(unknown)?
            .map_err(|e| ErrorBody::invalid_params(format!("{name}: {e}")))?;
        op.validate()?;
        Ok(op)
    }

    /// The catalog name, e.g. `container.list`.
    pub fn name(&self) -> &'static str {
        self.info().name
    }

    /// The params as a JSON object.
    pub fn params(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut m)) => m.remove("params").unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// Whether the operation only reads. Viewers may run read operations only.
    pub fn access(&self) -> Access {
        self.info().access
    }

    /// The agent capability the operation needs, beyond `docker`.
    pub fn required_capability(&self) -> Option<&'static str> {
        match self {
            Operation::SwarmInspect(_) | Operation::ServiceList(_) | Operation::NodeList(_) => {
                Some("swarm")
            }
            _ => None,
        }
    }

    /// Checks values that serde's types cannot: object ids and names.
    pub fn validate(&self) -> Result<(), ErrorBody> {
        use Operation::*;
        match self {
            ContainerInspect(p) | ContainerStart(p) | ContainerPause(p) | ContainerUnpause(p)
            | ContainerStats(p) | ImageInspect(p) | VolumeInspect(p) | NetworkInspect(p)
            | NetworkRemove(p) => check_id(&p.id),
            ContainerStop(p) | ContainerRestart(p) => check_id(&p.id),
            ContainerKill(p) => {
                check_id(&p.id)?;
                if let Some(s) = &p.signal {
                    if s.is_empty()
                        || s.len() > 16
                        || !s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+')
                    {
                        return Err(ErrorBody::invalid_params(format!("invalid signal {s:?}")));
                    }
                }
                Ok(())
            }
            ContainerRemove(p) => check_id(&p.id),
            ContainerRename(p) => {
                check_id(&p.id)?;
                check_name(&p.name)
            }
            ContainerTop(p) => check_id(&p.id),
            ContainerLogs(p) => check_id(&p.id),
            ContainerExec(p) => {
                check_id(&p.id)?;
                if p.cmd.0.is_empty() {
                    return Err(ErrorBody::invalid_params("cmd must not be empty"));
                }
                Ok(())
            }
            ContainerCreate(p) => {
                check_id(&p.image)?;
                if let Some(n) = &p.name {
                    check_name(n)?;
                }
                if let Some(rp) = &p.restart_policy {
                    parse_restart_policy(rp)?;
                }
                if let Some(d) = &p.docker {
                    if !d.is_object() {
                        return Err(ErrorBody::invalid_params("docker must be a JSON object"));
                    }
                }
                Ok(())
            }
            ImagePull(p) => check_id(&p.image),
            ImageRemove(p) => check_id(&p.id),
            ImageTag(p) => {
                check_id(&p.id)?;
                check_id(&p.repo)
            }
            VolumeCreate(p) => p.name.as_deref().map_or(Ok(()), check_name),
            VolumeRemove(p) => check_id(&p.id),
            NetworkCreate(p) => check_name(&p.name),
            NetworkConnect(p) => {
                check_id(&p.id)?;
                check_id(&p.container)
            }
            NetworkDisconnect(p) => {
                check_id(&p.id)?;
                check_id(&p.container)
            }
            _ => Ok(()),
        }
    }
}

/// Read or write, by operation name (also for names that fail to parse). Names that are
/// not in the catalog, such as `container.export`, `container.archive.get` or `image.save`,
/// are `Write`.
pub fn access_of(name: &str) -> Access {
    lookup(name).map_or(Access::Write, |o| o.access)
}

/// Checks an object reference (id, short id, name, or image reference). Refuses anything
/// that could change the Docker API path: `..` segments, `?`, `#`, `%`, whitespace, controls.
pub fn check_id(id: &str) -> Result<(), ErrorBody> {
    let ok_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':' | '/' | '@');
    if id.is_empty() || id.len() > 512 {
        return Err(ErrorBody::invalid_params("id must be 1 to 512 characters"));
    }
    if !id.chars().all(ok_char)
        || id.split('/').any(|seg| seg == ".." || seg == ".")
        || id.starts_with('/')
    {
        return Err(ErrorBody::invalid_params(format!("invalid id {id:?}")));
    }
    Ok(())
}

/// Checks a new object name: Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn check_name(name: &str) -> Result<(), ErrorBody> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || name.len() > 255
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(ErrorBody::invalid_params(format!(
            "invalid name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit"
        )));
    }
    Ok(())
}

/// Parses `no`, `always`, `unless-stopped`, `on-failure` and `on-failure:N` into Docker's
/// `RestartPolicy` object.
pub fn parse_restart_policy(s: &str) -> Result<Value, ErrorBody> {
    let (name, count) = match s.split_once(':') {
        Some(("on-failure", n)) => (
            "on-failure",
            n.parse::<u32>().map_err(|_| {
                ErrorBody::invalid_params(format!("invalid restart count in {s:?}"))
            })?,
        ),
        Some(_) => {
            return Err(ErrorBody::invalid_params(format!(
                "invalid restart_policy {s:?}"
            )))
        }
        None => (s, 0),
    };
    match name {
        "no" | "" => Ok(serde_json::json!({"Name": ""})),
        "always" | "unless-stopped" | "on-failure" => {
            Ok(serde_json::json!({"Name": name, "MaximumRetryCount": count}))
        }
        _ => Err(ErrorBody::invalid_params(format!(
            "invalid restart_policy {s:?}: no, always, unless-stopped or on-failure[:N]"
        ))),
    }
}
