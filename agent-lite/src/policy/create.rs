//! Typed container bodies (create, update, exec, volume create) and the host escapes a
//! policy switch closes in them, decided on the canonical form [`super::gojson`] reads.
//!
//! Owns: reading those bodies as dockerd does (including the create wrapper's deprecated
//! top-level host settings), the rules of `deny_privileged`, `deny_host_network` and
//! `deny_host_mounts` that need no daemon, local-driver volume options, and finding and
//! rewriting the references to other containers a create holds. Must not: do I/O (the
//! checks that need the daemon are in [`super::scope`]).

use super::gojson::{self, J};
use super::schema;
use serde_json::{Map, Value};

pub type Obj = Map<String, Value>;

/// Docker's default capability set: `CapAdd` may name these (they are no-ops), nothing else.
const DEFAULT_CAPS: &str = "CHOWN DAC_OVERRIDE FSETID FOWNER MKNOD NET_RAW SETGID SETUID SETFCAP SETPCAP NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE";

/// Log drivers that keep logs on the host; the others make the daemon connect to an address.
const LOCAL_LOG_DRIVERS: &str = "json-file local journald none";

/// Mount options of a local tmpfs volume that cannot reach host paths: flags, and keys of
/// `key=value` options.
const TMPFS_FLAGS: &str = "ro rw exec noexec suid nosuid dev nodev atime noatime relatime norelatime diratime nodiratime strictatime";
const TMPFS_KEYS: &str = "size mode uid gid nr_inodes nr_blocks";

/// Whether the space-separated `list` holds `word`.
fn listed(list: &str, word: &str) -> bool {
    list.split(' ').any(|w| w == word)
}

pub fn s<'a>(o: &'a Obj, k: &str) -> &'a str {
    o.get(k).and_then(Value::as_str).unwrap_or("")
}

pub fn strs<'a>(o: &'a Obj, k: &str) -> impl Iterator<Item = &'a str> {
    o.get(k)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn objs<'a>(o: &'a Obj, k: &str) -> impl Iterator<Item = &'a Obj> {
    o.get(k)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
}

fn obj<'a>(o: &'a Obj, k: &str) -> Option<&'a Obj> {
    o.get(k).and_then(Value::as_object)
}

fn nonempty(o: &Obj, k: &str) -> bool {
    match o.get(k) {
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(m)) => !m.is_empty(),
        _ => false,
    }
}

fn nonzero(o: &Obj, k: &str) -> bool {
    match o.get(k) {
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(x)) => !x.is_empty(),
        _ => false,
    }
}

/// Reads a container create body as dockerd 20.10 does: `Config` fields, the inner
/// `HostConfig`, `NetworkingConfig`, and the deprecated host settings at the top level (used
/// when there is no inner `HostConfig`; a few resource fields fill an inner one's zeros).
/// The result holds the one `HostConfig` dockerd would use.
pub fn read_create(bytes: &[u8]) -> Result<Obj, String> {
    let members = match gojson::parse(bytes)? {
        J::Obj(m) => m,
        _ => return Err("the container create body must be a JSON object".into()),
    };
    let outer_present = members
        .iter()
        .any(|(k, _)| gojson::field(&schema::HOST, k).is_some());
    let mut top = Obj::new();
    gojson::object(&schema::CREATE, &members, &mut top, "")?;
    let (mut out, mut outer) = (Obj::new(), Obj::new());
    let (mut inner, mut cpuset) = (None, Value::Null);
    for (k, v) in top {
        match k.as_str() {
            "HostConfig" => inner = v.as_object().cloned(),
            "Cpuset" => cpuset = v,
            _ if gojson::field(&schema::HOST, &k).is_some() => {
                outer.insert(k, v);
            }
            _ => {
                out.insert(k, v);
            }
        }
    }
    let host = match (outer_present.then_some(outer), inner) {
        (None, None) => None,
        (Some(o), None) => Some(o),
        (None, Some(i)) => Some(i),
        (Some(o), Some(mut i)) => {
            for k in [
                "Memory",
                "MemorySwap",
                "CpuShares",
                "CpusetCpus",
                "VolumeDriver",
            ] {
                if nonzero(&o, k) && !nonzero(&i, k) {
                    i.insert(k.to_string(), o[k].clone());
                }
            }
            Some(i)
        }
    };
    if let Some(mut h) = host {
        if let Value::String(c) = cpuset {
            if !c.is_empty() && s(&h, "CpusetCpus").is_empty() {
                h.insert("CpusetCpus".into(), Value::String(c));
            }
        }
        out.insert("HostConfig".into(), Value::Object(h));
    }
    Ok(out)
}

/// Where a host config comes from: a request we check, or an existing container's inspect
/// (whose unset fields dockerd has filled with its defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Request,
    Existing,
}

fn is_host(mode: &str) -> bool {
    mode.eq_ignore_ascii_case("host")
}

/// Why `hc` escapes to the host under `deny_privileged`, if it does.
pub fn privileged(hc: &Obj, origin: Origin) -> Option<String> {
    if hc.get("Privileged").and_then(Value::as_bool) == Some(true) {
        return Some("HostConfig.Privileged".into());
    }
    // dockerd fills an existing container's CgroupnsMode with its default, which is host on
    // cgroup v1 hosts: only a request asking for it is refused.
    let cgroupns = (origin == Origin::Request).then_some("CgroupnsMode");
    for k in ["PidMode", "IpcMode", "UTSMode", "UsernsMode"]
        .into_iter()
        .chain(cgroupns)
    {
        if is_host(s(hc, k)) {
            return Some(format!("HostConfig.{k} host"));
        }
    }
    for cap in strs(hc, "CapAdd") {
        let c = cap.to_ascii_uppercase();
        let bare = c.strip_prefix("CAP_").unwrap_or(&c);
        if !listed(DEFAULT_CAPS, bare) {
            return Some(format!(
                "HostConfig.CapAdd {cap} is not in Docker's default set"
            ));
        }
    }
    if let Some(opt) = strs(hc, "SecurityOpt").find(|o| !security_opt_ok(o)) {
        return Some(format!("HostConfig.SecurityOpt {opt}"));
    }
    for k in ["MaskedPaths", "ReadonlyPaths"] {
        let replaced = match origin {
            Origin::Request => hc.get(k).is_some_and(|v| !v.is_null()),
            Origin::Existing => hc
                .get(k)
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty),
        };
        if replaced {
            return Some(format!("HostConfig.{k} replaces Docker's defaults"));
        }
    }
    for k in [
        "Devices",
        "DeviceRequests",
        "DeviceCgroupRules",
        "Annotations",
    ] {
        if nonempty(hc, k) {
            return Some(format!("HostConfig.{k}"));
        }
    }
    None
}

/// `no-new-privileges` (any value) and AppArmor's default profile; everything else
/// (`seccomp=`, `apparmor=`, `label=`, `label:disable`, `disable`, `systempaths=`) can only
/// loosen confinement. Parsed as dockerd does: `=`, else the legacy `:`.
fn security_opt_ok(opt: &str) -> bool {
    if opt == "no-new-privileges" {
        return true;
    }
    let kv = opt.split_once('=').or_else(|| opt.split_once(':'));
    matches!(
        kv,
        Some(("no-new-privileges", _)) | Some(("apparmor", "docker-default"))
    )
}

/// Why `hc` (and the create's `NetworkingConfig`) reaches the host's network under
/// `deny_host_network`, if it does. `container:X` modes are checked against X elsewhere.
pub fn host_network(hc: &Obj, net: Option<&Obj>) -> Option<String> {
    if is_host(s(hc, "NetworkMode")) {
        return Some("HostConfig.NetworkMode host".into());
    }
    let endpoints = net.and_then(|n| obj(n, "EndpointsConfig"));
    if endpoints.is_some_and(|e| e.keys().any(|k| is_host(k))) {
        return Some("NetworkingConfig.EndpointsConfig host".into());
    }
    let log = obj(hc, "LogConfig").map_or("", |l| s(l, "Type"));
    if !log.is_empty() && !listed(LOCAL_LOG_DRIVERS, log) {
        return Some(format!(
            "HostConfig.LogConfig.Type {log} sends logs to a network address"
        ));
    }
    None
}

/// The volume names a create mounts (which must exist, and be checked), or why it mounts a
/// host path under `deny_host_mounts`.
pub fn mounts(hc: &Obj) -> Result<Vec<String>, String> {
    let driver = s(hc, "VolumeDriver");
    if !matches!(driver, "" | "local") {
        return Err(format!(
            "HostConfig.VolumeDriver {driver} may mount host paths"
        ));
    }
    let mut named = Vec::new();
    for b in strs(hc, "Binds") {
        let parts: Vec<&str> = b.split(':').collect();
        match parts.as_slice() {
            [_container_path] => {}
            [src, _, ..] if parts.len() <= 3 => {
                if src.starts_with('/') {
                    return Err(format!("HostConfig.Binds {b} mounts a host path"));
                }
                named.push(src.to_string());
            }
            _ => return Err(format!("HostConfig.Binds {b} is not a valid bind")),
        }
    }
    for m in objs(hc, "Mounts") {
        let kind = s(m, "Type").to_ascii_lowercase();
        match kind.as_str() {
            "tmpfs" => {}
            "volume" => {
                let opts = obj(m, "VolumeOptions").and_then(|o| obj(o, "DriverConfig"));
                if let Some(d) = opts {
                    let empty = Obj::new();
                    volume_options(s(d, "Name"), obj(d, "Options").unwrap_or(&empty))
                        .map_err(|e| format!("HostConfig.Mounts {}: {e}", s(m, "Target")))?;
                }
                if !s(m, "Source").is_empty() {
                    named.push(s(m, "Source").to_string());
                }
            }
            _ => {
                return Err(format!(
                    "HostConfig.Mounts of type {:?} ({})",
                    s(m, "Type"),
                    s(m, "Target")
                ))
            }
        }
    }
    Ok(named)
}

/// Whether a volume of `driver` with `opts` stays away from host paths: the local driver
/// with no options, or a tmpfs without bind flags. Any other driver may mount anything.
pub fn volume_options(driver: &str, opts: &Obj) -> Result<(), String> {
    if !matches!(driver, "" | "local") {
        return Err(format!("volume driver {driver} may mount host paths"));
    }
    if opts.is_empty() {
        return Ok(());
    }
    let get = |k: &str| opts.get(k).and_then(Value::as_str).unwrap_or("");
    if let Some(k) = opts
        .keys()
        .find(|k| !matches!(k.as_str(), "type" | "o" | "device" | "size"))
    {
        return Err(format!("volume option {k}"));
    }
    if get("type") != "tmpfs" {
        return Err(format!(
            "volume option type={} (only tmpfs is allowed; device and bind options mount host paths)",
            get("type")
        ));
    }
    for o in get("o").split(',').filter(|o| !o.is_empty()) {
        let ok = match o.split_once('=') {
            Some((k, _)) => listed(TMPFS_KEYS, k),
            None => listed(TMPFS_FLAGS, o),
        };
        if !ok {
            return Err(format!("volume option o={o}"));
        }
    }
    Ok(())
}

/// How a create refers to another container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    /// `NetworkMode`, `PidMode`, `IpcMode` or `Cgroup` of the form `container:X`: shares X's
    /// namespace or cgroup.
    Mode(&'static str),
    /// `VolumesFrom`: mounts what X mounts.
    VolumesFrom,
    /// `Links` (of the host config or of an endpoint): names X, shares nothing.
    Link,
}

/// One reference to another container, and where it sits in the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Ref {
    pub kind: RefKind,
    /// The container as written (a name, id or id prefix).
    pub name: String,
    /// What follows the name (`:ro`, `:alias`), kept when the reference is rewritten.
    pub suffix: String,
    /// `None`: the host config; `Some(net)`: the endpoint config of that network.
    pub endpoint: Option<String>,
    /// The index in its list (`VolumesFrom`, `Links`).
    pub index: usize,
}

const MODES: [&str; 4] = ["NetworkMode", "PidMode", "IpcMode", "Cgroup"];

/// Docker's `ParseLink`: `name`, `name:alias`, or the `/name:/self/alias` form of inspect.
pub fn parse_link(l: &str) -> Result<(String, String), String> {
    let parts: Vec<&str> = l.split(':').collect();
    match parts.as_slice() {
        [""] => Err("an empty link".into()),
        [name] => Ok((name.to_string(), format!(":{name}"))),
        [name, alias] if name.starts_with('/') => {
            let alias = alias.rsplit('/').next().unwrap_or(alias);
            Ok((name[1..].to_string(), format!(":{alias}")))
        }
        [name, alias] => Ok((name.to_string(), format!(":{alias}"))),
        _ => Err(format!("bad link {l}")),
    }
}

fn link_refs(list: &Obj, endpoint: Option<&str>, out: &mut Vec<Ref>) -> Result<(), String> {
    for (index, l) in strs(list, "Links").enumerate() {
        let (name, suffix) = parse_link(l)?;
        out.push(Ref {
            kind: RefKind::Link,
            name,
            suffix,
            endpoint: endpoint.map(str::to_string),
            index,
        });
    }
    Ok(())
}

/// Every reference to another container in a canonical create body.
pub fn refs(body: &Obj) -> Result<Vec<Ref>, String> {
    let mut out = Vec::new();
    if let Some(hc) = obj(body, "HostConfig") {
        for k in MODES {
            let mode = s(hc, k);
            if let Some((head, name)) = mode.split_once(':') {
                if head == "container" {
                    out.push(Ref {
                        kind: RefKind::Mode(k),
                        name: name.to_string(),
                        suffix: String::new(),
                        endpoint: None,
                        index: 0,
                    });
                } else if head.eq_ignore_ascii_case("container") {
                    return Err(format!("HostConfig.{k} {mode} is not valid"));
                }
            }
        }
        for (index, v) in strs(hc, "VolumesFrom").enumerate() {
            let (name, suffix) = match v.split_once(':') {
                Some((n, mode)) => (n, format!(":{mode}")),
                None => (v, String::new()),
            };
            out.push(Ref {
                kind: RefKind::VolumesFrom,
                name: name.to_string(),
                suffix,
                endpoint: None,
                index,
            });
        }
        link_refs(hc, None, &mut out)?;
    }
    let endpoints = obj(body, "NetworkingConfig").and_then(|n| obj(n, "EndpointsConfig"));
    for (net, e) in endpoints.into_iter().flatten() {
        if let Some(e) = e.as_object() {
            link_refs(e, Some(net), &mut out)?;
        }
    }
    if out.iter().any(|r| r.name.is_empty()) {
        return Err("a reference to a container with an empty name".into());
    }
    Ok(out)
}

/// Writes `id` in place of the name `r` found.
pub fn rewrite(body: &mut Obj, r: &Ref, id: &str) {
    let Some(hc_or_endpoint) = (match &r.endpoint {
        None => body.get_mut("HostConfig"),
        Some(net) => body
            .get_mut("NetworkingConfig")
            .and_then(|n| n.get_mut("EndpointsConfig"))
            .and_then(|e| e.get_mut(net)),
    }) else {
        return;
    };
    let (key, text) = match r.kind {
        RefKind::Mode(k) => (k, format!("container:{id}")),
        RefKind::VolumesFrom => ("VolumesFrom", format!("{id}{}", r.suffix)),
        RefKind::Link => ("Links", format!("{id}{}", r.suffix)),
    };
    let Some(slot) = hc_or_endpoint.get_mut(key) else {
        return;
    };
    match (r.kind, slot) {
        (RefKind::Mode(_), slot) => *slot = Value::String(text),
        (_, Value::Array(a)) => {
            if let Some(x) = a.get_mut(r.index) {
                *x = Value::String(text);
            }
        }
        _ => {}
    }
}

/// Adds `labels` to the create's `Labels` (ours win).
pub fn add_labels(body: &mut Obj, labels: &std::collections::BTreeMap<String, String>) {
    if labels.is_empty() {
        return;
    }
    let entry = body
        .entry("Labels")
        .or_insert_with(|| Value::Object(Obj::new()));
    if !entry.is_object() {
        *entry = Value::Object(Obj::new());
    }
    if let Some(m) = entry.as_object_mut() {
        for (k, v) in labels {
            m.insert(k.clone(), Value::String(v.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create(body: &str) -> Value {
        Value::Object(read_create(body.as_bytes()).unwrap_or_else(|e| panic!("{e}: {body}")))
    }

    fn hc(body: &str) -> Obj {
        create(body)["HostConfig"]
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn keys_match_in_any_case_and_the_last_scalar_wins() {
        let v = create(
            r#"{"image":"x","HOSTCONFIG":{"privileged":true,"NetworkMode":"bridge","networkmode":"host"}}"#,
        );
        assert_eq!(v["Image"], "x");
        assert_eq!(v["HostConfig"]["Privileged"], true);
        assert_eq!(v["HostConfig"]["NetworkMode"], "host");
        let h = hc(r#"{"HostConfig":{"Privileged":true,"privileged":false}}"#);
        assert_eq!(h["Privileged"], false);
        // Go folds the long s and the Kelvin sign too.
        let h = hc("{\"HostConfig\":{\"Bind\u{17F}\":[\"/:/h\"],\"Lin\u{212A}s\":[\"a\"]}}");
        assert_eq!(h["Binds"], json!(["/:/h"]));
        assert_eq!(h["Links"], json!(["a"]));
    }

    #[test]
    fn repeated_objects_merge_as_go_merges_them() {
        // dockerd merges the second HostConfig into the first: still privileged.
        let h = hc(r#"{"HostConfig":{"Privileged":true,"Binds":["/:/host"]},"HostConfig":{}}"#);
        assert_eq!(h["Privileged"], true);
        assert_eq!(h["Binds"], json!(["/:/host"]));
        let h = hc(r#"{"HostConfig":{"Privileged":true},"hostconfig":{"Memory":5}}"#);
        assert_eq!(
            (h["Privileged"].clone(), h["Memory"].clone()),
            (json!(true), json!(5))
        );
        // Null leaves a bool alone, clears a list and a pointer.
        let h = hc(
            r#"{"HostConfig":{"Privileged":true,"Binds":["/:/h"],"privileged":null,"binds":null}}"#,
        );
        assert_eq!(h["Privileged"], true);
        assert!(h["Binds"].is_null());
        // Maps merge, the last value of a key wins.
        let v = create(r#"{"Labels":{"a":"1","b":"1"},"labels":{"b":"2"}}"#);
        assert_eq!(v["Labels"], json!({"a": "1", "b": "2"}));
        // A later list of strings replaces the earlier one.
        let h = hc(r#"{"HostConfig":{"CapAdd":["SYS_ADMIN"],"capadd":"NET_RAW"}}"#);
        assert_eq!(h["CapAdd"], json!(["NET_RAW"]));
    }

    #[test]
    fn top_level_host_settings_apply_without_an_inner_host_config() {
        let h = hc(r#"{"Image":"x","Privileged":true,"Binds":["/:/h"]}"#);
        assert_eq!(h["Privileged"], true);
        // A null inner HostConfig brings the top level back.
        let h = hc(r#"{"HostConfig":{"Privileged":false},"privileged":true,"HostConfig":null}"#);
        assert_eq!(h["Privileged"], true);
        // With an inner one, only a few resource zeros are filled from the top.
        let h = hc(r#"{"Privileged":true,"Memory":7,"Cpuset":"0","HostConfig":{"CpusetCpus":""}}"#);
        assert!(h.get("Privileged").is_none());
        assert_eq!(h["Memory"], 7);
        assert_eq!(h["CpusetCpus"], "0");
        let v = create(r#"{"Image":"x","Cpuset":"1"}"#);
        assert!(v.get("HostConfig").is_none() && v.get("Cpuset").is_none());
        let h = hc(r#"{"Privileged":true,"HostConfig":{"Privileged":null}}"#);
        assert!(h["Privileged"].is_null(), "a null bool is Go's false");
    }

    #[test]
    fn ambiguous_or_unknown_input_is_refused() {
        for bad in [
            r#"{"HostConfig":{"Privileged":true}} trailing"#,
            r#"{"HostConfig":{"Privileged":"yes"}}"#,
            r#"{"HostConfig":{"Mounts":[{"Type":"bind","Source":"/","Target":"/h"}]},"HostConfig":{"Mounts":[{"Target":"/x"}]}}"#,
            r#"{"HostConfig":{"Binds":[null]}}"#,
            r#"{"Labels":{"a":null}}"#,
            r#"{"HostConfig":{"Capabilities":["ALL"]}}"#,
            r#"{"Frobnicate":1}"#,
            r#"[]"#,
            "",
        ] {
            assert!(read_create(bad.as_bytes()).is_err(), "{bad}");
        }
        // Unknown zero values are dropped, as the CLI sends fields newer than ours.
        let v = create(r#"{"Image":"x","NewField":0,"HostConfig":{"Other":[],"More":null}}"#);
        assert_eq!(v, json!({"Image": "x", "HostConfig": {}}));
        // An empty list after a list of objects is no merge.
        let h = hc(r#"{"HostConfig":{"Mounts":[{"Type":"bind"}],"Mounts":[]}}"#);
        assert_eq!(h["Mounts"], json!([]));
    }

    #[test]
    fn the_cli_body_reads_back_to_itself() {
        let cli = r#"{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":null,"Cmd":["sh"],"Image":"busybox:local","Volumes":{},"WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":{"app":"web"},"HostConfig":{"Binds":null,"ContainerIDFile":"","LogConfig":{"Type":"","Config":{}},"NetworkMode":"default","PortBindings":{"80/tcp":[{"HostIp":"","HostPort":"8080"}]},"RestartPolicy":{"Name":"no","MaximumRetryCount":0},"AutoRemove":false,"VolumeDriver":"","VolumesFrom":null,"ConsoleSize":[0,0],"CapAdd":null,"CapDrop":null,"CgroupnsMode":"","Dns":[],"DnsOptions":[],"DnsSearch":[],"ExtraHosts":null,"GroupAdd":null,"IpcMode":"","Cgroup":"","Links":null,"OomScoreAdj":0,"PidMode":"","Privileged":false,"PublishAllPorts":false,"ReadonlyRootfs":false,"SecurityOpt":null,"UTSMode":"","UsernsMode":"","ShmSize":0,"Isolation":"","CpuShares":0,"Memory":0,"NanoCpus":0,"CgroupParent":"","BlkioWeight":0,"BlkioWeightDevice":[],"BlkioDeviceReadBps":[],"BlkioDeviceWriteBps":[],"BlkioDeviceReadIOps":[],"BlkioDeviceWriteIOps":[],"CpuPeriod":0,"CpuQuota":0,"CpuRealtimePeriod":0,"CpuRealtimeRuntime":0,"CpusetCpus":"","CpusetMems":"","Devices":[],"DeviceCgroupRules":null,"DeviceRequests":null,"MemoryReservation":0,"MemorySwap":0,"MemorySwappiness":-1,"OomKillDisable":false,"PidsLimit":0,"Ulimits":[],"CpuCount":0,"CpuPercent":0,"IOMaximumIOps":0,"IOMaximumBandwidth":0,"MaskedPaths":null,"ReadonlyPaths":null},"NetworkingConfig":{"EndpointsConfig":{"default":{"IPAMConfig":null,"Links":null,"Aliases":null,"MacAddress":"","DriverOpts":null,"GwPriority":0,"NetworkID":"","EndpointID":"","Gateway":"","IPAddress":"","IPPrefixLen":0,"IPv6Gateway":"","GlobalIPv6Address":"","GlobalIPv6PrefixLen":0,"DNSNames":null}}}}"#;
        let v = create(cli);
        assert_eq!(
            v["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"],
            "8080"
        );
        assert_eq!(v["HostConfig"]["MemorySwappiness"], -1);
        let h = v["HostConfig"].as_object().unwrap();
        assert_eq!(privileged(h, Origin::Request), None);
        assert_eq!(host_network(h, v["NetworkingConfig"].as_object()), None);
        assert_eq!(mounts(h), Ok(vec![]));
        // What we send reads back to itself: nothing was lost or added in the round trip.
        let again = create(&v.to_string());
        assert_eq!(again, v);
    }

    #[test]
    fn escapes_under_deny_privileged() {
        let esc = |h: &str| privileged(&hc(h), Origin::Request);
        for h in [
            r#"{"HostConfig":{"Privileged":true}}"#,
            r#"{"HostConfig":{"PidMode":"host"}}"#,
            r#"{"HostConfig":{"IpcMode":"host"}}"#,
            r#"{"HostConfig":{"UTSMode":"host"}}"#,
            r#"{"HostConfig":{"UsernsMode":"host"}}"#,
            r#"{"HostConfig":{"CgroupnsMode":"host"}}"#,
            r#"{"HostConfig":{"CapAdd":["SYS_ADMIN"]}}"#,
            r#"{"HostConfig":{"CapAdd":"cap_sys_ptrace"}}"#,
            r#"{"HostConfig":{"CapAdd":["ALL"]}}"#,
            r#"{"HostConfig":{"SecurityOpt":["seccomp=unconfined"]}}"#,
            r#"{"HostConfig":{"SecurityOpt":["seccomp:unconfined"]}}"#,
            r#"{"HostConfig":{"SecurityOpt":["apparmor=unconfined"]}}"#,
            r#"{"HostConfig":{"SecurityOpt":["label=disable"]}}"#,
            r#"{"HostConfig":{"SecurityOpt":["label:disable"]}}"#,
            r#"{"HostConfig":{"SecurityOpt":["disable"]}}"#,
            r#"{"HostConfig":{"SecurityOpt":["systempaths=unconfined"]}}"#,
            r#"{"HostConfig":{"SecurityOpt":["seccomp={\"defaultAction\":\"SCMP_ACT_ALLOW\"}"]}}"#,
            r#"{"HostConfig":{"MaskedPaths":[]}}"#,
            r#"{"HostConfig":{"ReadonlyPaths":[]}}"#,
            r#"{"HostConfig":{"Devices":[{"PathOnHost":"/dev/sda","PathInContainer":"/dev/sda","CgroupPermissions":"rwm"}]}}"#,
            r#"{"HostConfig":{"DeviceRequests":[{"Count":-1,"Capabilities":[["gpu"]]}]}}"#,
            r#"{"HostConfig":{"DeviceCgroupRules":["a *:* rwm"]}}"#,
            r#"{"PidMode":"host"}"#,
        ] {
            assert!(esc(h).is_some(), "{h}");
        }
        for h in [
            r#"{"HostConfig":{"CapAdd":["NET_BIND_SERVICE","CAP_CHOWN"],"CapDrop":["ALL"]}}"#,
            r#"{"HostConfig":{"SecurityOpt":["no-new-privileges","no-new-privileges:true","apparmor=docker-default"]}}"#,
            r#"{"HostConfig":{"PidMode":"","IpcMode":"private","MaskedPaths":null}}"#,
        ] {
            assert_eq!(esc(h), None, "{h}");
        }
        let existing = json!({"MaskedPaths": ["/proc/kcore"], "ReadonlyPaths": ["/proc/sys"], "CgroupnsMode": "host"});
        assert_eq!(
            privileged(existing.as_object().unwrap(), Origin::Existing),
            None
        );
        let unmasked = json!({"MaskedPaths": [], "ReadonlyPaths": ["/proc/sys"]});
        assert!(privileged(unmasked.as_object().unwrap(), Origin::Existing).is_some());
    }

    #[test]
    fn escapes_under_deny_host_network_and_deny_host_mounts() {
        let net = |b: &str| {
            let v = create(b);
            host_network(
                v["HostConfig"].as_object().unwrap_or(&Obj::new()),
                v["NetworkingConfig"].as_object(),
            )
        };
        assert!(net(r#"{"HostConfig":{"networkmode":"host"}}"#).is_some());
        assert!(
            net(r#"{"HostConfig":{},"NetworkingConfig":{"EndpointsConfig":{"host":{}}}}"#)
                .is_some()
        );
        assert!(net(r#"{"HostConfig":{"LogConfig":{"Type":"syslog","Config":{"syslog-address":"tcp://10.0.0.1:514"}}}}"#).is_some());
        assert_eq!(
            net(r#"{"HostConfig":{"NetworkMode":"bridge","LogConfig":{"Type":"json-file"}}}"#),
            None
        );

        let m = |b: &str| mounts(&hc(b));
        for b in [
            r#"{"HostConfig":{"Binds":["/:/host"]}}"#,
            r#"{"HostConfig":{"Binds":["/etc:/e:ro"]}}"#,
            r#"{"HostConfig":{"Mounts":[{"Type":"bind","Source":"/","Target":"/h"}]}}"#,
            r#"{"HostConfig":{"Mounts":[{"Type":"BIND","Source":"/","Target":"/h"}]}}"#,
            r#"{"HostConfig":{"Mounts":[{"Type":"npipe","Source":"x","Target":"/h"}]}}"#,
            r#"{"HostConfig":{"Mounts":[{"Type":"volume","Target":"/h","VolumeOptions":{"DriverConfig":{"Name":"local","Options":{"type":"none","o":"bind","device":"/"}}}}]}}"#,
            r#"{"HostConfig":{"Mounts":[{"Type":"volume","Target":"/h","VolumeOptions":{"DriverConfig":{"Options":{"type":"tmpfs","o":"bind","device":"/"}}}}]}}"#,
            r#"{"HostConfig":{"VolumeDriver":"some-plugin"}}"#,
            r#"{"Binds":["/:/h"]}"#,
        ] {
            assert!(m(b).is_err(), "{b}");
        }
        assert_eq!(
            m(
                r#"{"HostConfig":{"Binds":["vol:/a","/anon"],"Mounts":[{"Type":"volume","Source":"v2","Target":"/b"},{"Type":"tmpfs","Target":"/t"},{"Type":"volume","Target":"/c","VolumeOptions":{"DriverConfig":{"Name":"local","Options":{"type":"tmpfs","device":"tmpfs","o":"size=1m,uid=1"}}}}]}}"#
            ),
            Ok(vec!["vol".to_string(), "v2".to_string()])
        );
        let opts = |o: Value| volume_options("local", o.as_object().unwrap());
        assert!(opts(json!({"type": "none", "o": "bind", "device": "/"})).is_err());
        assert!(opts(json!({"type": "ext4", "device": "/dev/sda1"})).is_err());
        assert!(opts(json!({"type": "nfs", "o": "addr=10.0.0.1", "device": ":/x"})).is_err());
        assert!(opts(json!({"type": "tmpfs", "o": "rbind", "device": "/"})).is_err());
        assert!(opts(json!({"type": "tmpfs", "device": "tmpfs", "o": "size=10m"})).is_ok());
        assert!(opts(json!({})).is_ok());
        assert!(volume_options("plugin", &Obj::new()).is_err());
    }

    #[test]
    fn references_to_other_containers_are_found_and_rewritten() {
        let mut body = read_create(
            br#"{"HostConfig":{"NetworkMode":"container:web","PidMode":"container:db","IpcMode":"shareable","Cgroup":"container:c","VolumesFrom":["data:ro","logs"],"Links":["a:alias","b","/c:/me/cc"]},"NetworkingConfig":{"EndpointsConfig":{"n1":{"Links":["d:x"]}}}}"#,
        )
        .unwrap();
        let found = refs(&body).unwrap();
        let names: Vec<(&str, &str)> = found
            .iter()
            .map(|r| (r.name.as_str(), r.suffix.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("web", ""),
                ("db", ""),
                ("c", ""),
                ("data", ":ro"),
                ("logs", ""),
                ("a", ":alias"),
                ("b", ":b"),
                ("c", ":cc"),
                ("d", ":x")
            ]
        );
        for r in &found {
            rewrite(&mut body, r, &format!("ID-{}", r.name));
        }
        let v = Value::Object(body);
        assert_eq!(v["HostConfig"]["NetworkMode"], "container:ID-web");
        assert_eq!(v["HostConfig"]["PidMode"], "container:ID-db");
        assert_eq!(v["HostConfig"]["Cgroup"], "container:ID-c");
        assert_eq!(
            v["HostConfig"]["VolumesFrom"],
            json!(["ID-data:ro", "ID-logs"])
        );
        assert_eq!(
            v["HostConfig"]["Links"],
            json!(["ID-a:alias", "ID-b:b", "ID-c:cc"])
        );
        assert_eq!(
            v["NetworkingConfig"]["EndpointsConfig"]["n1"]["Links"],
            json!(["ID-d:x"])
        );
        assert!(
            refs(&read_create(br#"{"HostConfig":{"PidMode":"Container:x"}}"#).unwrap()).is_err()
        );
        assert!(
            refs(&read_create(br#"{"HostConfig":{"NetworkMode":"container:"}}"#).unwrap()).is_err()
        );
    }

    #[test]
    fn field_names_are_unique_for_go_in_every_struct() {
        fn check(s: &'static super::gojson::S, seen: &mut Vec<*const ()>) {
            let names: Vec<&str> = s.0.iter().flat_map(|g| g.iter()).map(|f| f.0).collect();
            assert!(!names.is_empty());
            for (i, a) in names.iter().enumerate() {
                for b in &names[i + 1..] {
                    assert!(!a.eq_ignore_ascii_case(b), "{a} and {b} collide");
                }
            }
            for f in s.0.iter().flat_map(|g| g.iter()) {
                let mut t = &f.1;
                loop {
                    match t {
                        super::gojson::T::List(e) | super::gojson::T::Map(e) => t = e,
                        super::gojson::T::Obj(s) | super::gojson::T::PObj(s) => {
                            let p = *s as *const super::gojson::S as *const ();
                            if !seen.contains(&p) {
                                seen.push(p);
                                check(s, seen);
                            }
                            break;
                        }
                        _ => break,
                    }
                }
            }
        }
        let mut seen = Vec::new();
        for s in [
            &schema::CREATE,
            &schema::UPDATE,
            &schema::EXEC,
            &schema::CONNECT,
            &schema::VOLUME,
        ] {
            check(s, &mut seen);
        }
        assert!(seen.len() > 10);
    }
}
