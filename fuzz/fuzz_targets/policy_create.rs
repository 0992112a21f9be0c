//! Container create bodies against the agent's strictest policy. The input either is a body
//! as is, or drives mutations of known escapes (key case, `ſ`/Kelvin letters, repeated
//! members, a second or null `HostConfig`, host settings moved to the top, unknown fields,
//! nulls, nesting). Whatever the agent forwards must pass the policy when an independent,
//! case-insensitive reader looks at it the way dockerd does, must hold no key twice in any
//! case, and must read back to itself. Never a panic.
#![no_main]

use agent_lite::policy::gojson::{parse, J};
use agent_lite::policy::request::{admit, Body};
use agent_lite::policy::scope::{Daemon, Scope};
use agent_lite::policy::Policy;
use libfuzzer_sys::fuzz_target;
use protocol::ErrorBody;
use serde_json::{json, Map, Value};

/// Every container and volume exists and is harmless.
struct Benign;

impl Daemon for Benign {
    fn get(&self, path: &str) -> Result<Value, ErrorBody> {
        if path.starts_with("/volumes/") {
            return Ok(json!({"Name": "v", "Driver": "local", "Options": null}));
        }
        Ok(
            json!({"Id": "0123abcd", "Config": {"Labels": {"team": "a"}},
                  "HostConfig": {"NetworkMode": "bridge"}, "Mounts": []}),
        )
    }
}

const BASES: &[&str] = &[
    r#"{"Image":"x","HostConfig":{"Privileged":true}}"#,
    r#"{"Image":"x","HostConfig":{"Binds":["/:/host"],"NetworkMode":"host"}}"#,
    r#"{"Image":"x","HostConfig":{"Mounts":[{"Type":"bind","Source":"/","Target":"/h"}]}}"#,
    r#"{"Image":"x","HostConfig":{"PidMode":"host","CapAdd":["SYS_ADMIN"],"SecurityOpt":["seccomp=unconfined"]}}"#,
    r#"{"Image":"x","HostConfig":{"Devices":[{"PathOnHost":"/dev/sda"}],"MaskedPaths":[]}}"#,
    r#"{"Image":"x","HostConfig":{"Mounts":[{"Type":"volume","Target":"/h","VolumeOptions":{"DriverConfig":{"Name":"local","Options":{"type":"none","o":"bind","device":"/"}}}}]}}"#,
    r#"{"Image":"x","HostConfig":{"NetworkMode":"bridge","Binds":["v:/d"],"VolumesFrom":["c"],"Links":["c:a"]},"NetworkingConfig":{"EndpointsConfig":{"bridge":{"Links":["c"]}}},"Labels":{"a":"b"}}"#,
    r#"{"Image":"x","Privileged":true,"Binds":["/:/h"],"LogConfig":{"Type":"syslog"}}"#,
];

/// Host settings that must not be effective in what is forwarded.
fn escapes(hc: &Map<String, Value>) -> Option<String> {
    let get = |k: &str| ci(hc, k);
    let s = |k: &str| {
        get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase()
    };
    let list = |k: &str| {
        get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    if get("privileged") == Some(&Value::Bool(true)) {
        return Some("privileged".into());
    }
    for k in [
        "pidmode",
        "ipcmode",
        "utsmode",
        "usernsmode",
        "cgroupnsmode",
        "networkmode",
    ] {
        if s(k) == "host" {
            return Some(k.into());
        }
    }
    for k in [
        "devices",
        "devicerequests",
        "devicecgrouprules",
        "annotations",
    ] {
        let set = |v: &Value| match v {
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => false,
        };
        if get(k).is_some_and(set) {
            return Some(k.into());
        }
    }
    for k in ["maskedpaths", "readonlypaths"] {
        if get(k).is_some_and(|v| !v.is_null()) {
            return Some(k.into());
        }
    }
    let default = [
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    ];
    for c in list("capadd") {
        let c = c.as_str().unwrap_or("").to_ascii_uppercase();
        if !default.contains(&c.trim_start_matches("CAP_")) {
            return Some(format!("capadd {c}"));
        }
    }
    for o in list("securityopt") {
        let o = o.as_str().unwrap_or("");
        if !(o.starts_with("no-new-privileges")
            || o == "apparmor=docker-default"
            || o == "apparmor:docker-default")
        {
            return Some(format!("securityopt {o}"));
        }
    }
    for b in list("binds") {
        if b.as_str().unwrap_or("").starts_with('/') {
            return Some("binds".into());
        }
    }
    for m in list("mounts") {
        let m = m.as_object().cloned().unwrap_or_default();
        let t = ci(&m, "type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        if t != "volume" && t != "tmpfs" {
            return Some(format!("mount type {t}"));
        }
        let opts = ci(&m, "volumeoptions")
            .and_then(Value::as_object)
            .and_then(|o| ci(o, "driverconfig"))
            .and_then(Value::as_object)
            .and_then(|d| ci(d, "options"))
            .and_then(Value::as_object);
        if opts.is_some_and(|o| o.get("type").and_then(Value::as_str) != Some("tmpfs")) {
            return Some("volume options".into());
        }
    }
    None
}

/// Folds as Go does for ASCII field names.
fn fold(k: &str) -> String {
    k.chars()
        .map(|c| match c {
            '\u{17F}' => 's',
            '\u{212A}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// The one member whose key is `k` in any case; two of them fail the target.
fn ci<'a>(o: &'a Map<String, Value>, k: &str) -> Option<&'a Value> {
    let mut found = o.iter().filter(|(x, _)| fold(x) == k);
    let first = found.next().map(|(_, v)| v);
    assert!(found.next().is_none(), "{k} twice in {o:?}");
    first
}

fn check_forwarded(v: &Value) {
    let top = v.as_object().expect("an object is forwarded");
    // Struct levels hold no key twice in any case (`ci` checks the ones read below).
    let mut keys: Vec<String> = top.keys().map(|k| fold(k)).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), top.len(), "a top-level key twice: {v}");
    // Host settings live only in HostConfig (at the top dockerd would use them too).
    for k in [
        "privileged",
        "binds",
        "mounts",
        "networkmode",
        "pidmode",
        "capadd",
        "devices",
    ] {
        assert!(ci(top, k).is_none(), "{k} at the top: {v}");
    }
    if let Some(hc) = ci(top, "hostconfig").and_then(Value::as_object) {
        if let Some(why) = escapes(hc) {
            panic!("forwarded an escape ({why}): {v}");
        }
    }
    if let Some(eps) = ci(top, "networkingconfig")
        .and_then(Value::as_object)
        .and_then(|n| ci(n, "endpointsconfig"))
        .and_then(Value::as_object)
    {
        assert!(eps.keys().all(|k| !k.eq_ignore_ascii_case("host")), "{v}");
    }
}

fn write(j: &J, out: &mut String) {
    match j {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Num(n) => out.push_str(&n.to_string()),
        J::Str(s) => out.push_str(&Value::String(s.clone()).to_string()),
        J::Arr(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(x, out);
            }
            out.push(']');
        }
        J::Obj(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write(x, out);
            }
            out.push('}');
        }
    }
}

fn count_objects(j: &J) -> usize {
    match j {
        J::Obj(o) => 1 + o.iter().map(|(_, x)| count_objects(x)).sum::<usize>(),
        J::Arr(a) => a.iter().map(count_objects).sum(),
        _ => 0,
    }
}

/// The `n`th object of `j`, depth first (the root is 0).
fn nth_object<'a>(j: &'a mut J, n: &mut usize) -> Option<&'a mut Vec<(String, J)>> {
    match j {
        J::Obj(o) => {
            if *n == 0 {
                return Some(o);
            }
            *n -= 1;
            o.iter_mut().find_map(|(_, x)| nth_object(x, n))
        }
        J::Arr(a) => a.iter_mut().find_map(|x| nth_object(x, n)),
        _ => None,
    }
}

fn recase(k: &str, how: u8) -> String {
    k.chars()
        .enumerate()
        .map(|(i, c)| match how % 4 {
            0 => c.to_ascii_lowercase(),
            1 => c.to_ascii_uppercase(),
            2 if (i + how as usize) % 2 == 0 => c.to_ascii_uppercase(),
            2 => c.to_ascii_lowercase(),
            _ if c == 's' => '\u{17F}',
            _ if c == 'k' => '\u{212A}',
            _ => c,
        })
        .collect()
}

/// One mutation of `body`, chosen by `op` and placed by `at`.
fn mutate(body: &mut J, op: u8, at: u8, arg: u8) {
    let mut i = at as usize % count_objects(body).max(1);
    let Some(members) = nth_object(body, &mut i) else {
        return;
    };
    let n = members.len();
    match op % 8 {
        0 if n > 0 => {
            let i = arg as usize % n;
            members[i].0 = recase(&members[i].0, arg);
        }
        1 if n > 0 => {
            let i = arg as usize % n;
            let dup = members[i].clone();
            members.push(dup);
        }
        2 => {
            let v = if arg % 2 == 0 {
                J::Null
            } else {
                J::Obj(Vec::new())
            };
            members.push((recase("HostConfig", arg / 2), v));
        }
        3 if n > 0 => {
            let i = arg as usize % n;
            members[i].1 = J::Null;
        }
        4 => {
            let v = match arg % 4 {
                0 => J::Bool(false),
                1 => J::Str(String::new()),
                2 => J::Arr(Vec::new()),
                _ => J::Bool(true),
            };
            members.push((format!("Unknown{}", arg % 3), v));
        }
        5 if n > 1 => {
            let i = arg as usize % n;
            members.swap(i, (i + 1) % n);
        }
        6 if n > 0 => {
            let i = arg as usize % n;
            let inner = std::mem::replace(&mut members[i].1, J::Null);
            members[i].1 = if arg % 2 == 0 {
                J::Arr(vec![inner])
            } else {
                J::Obj(vec![("x".into(), inner)])
            };
        }
        _ => {
            // Move the HostConfig's members to the top.
            if let Some(J::Obj(hc)) = members
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("hostconfig"))
                .map(|(_, v)| v.clone())
            {
                members.extend(hc);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let body: Vec<u8> = if mode < 0xC0 && !rest.is_empty() {
        let Ok(mut j) = parse(BASES[rest[0] as usize % BASES.len()].as_bytes()) else {
            return;
        };
        for ch in rest[1..].chunks(3).take(16) {
            if let [op, at, arg] = *ch {
                mutate(&mut j, op, at, arg);
            }
        }
        let mut s = String::new();
        write(&j, &mut s);
        s.into_bytes()
    } else {
        rest.to_vec()
    };
    let policy = Policy {
        deny_privileged: true,
        deny_host_network: true,
        deny_host_mounts: true,
        container_labels: [("team".to_string(), "a".to_string())].into(),
        ..Policy::default()
    };
    let route = protocol::passthrough::classify("POST", "/v1.41/containers/create").unwrap();
    let headers = [("Content-Type".to_string(), "application/json".to_string())];
    let Ok(out) = admit(
        &Scope::new(&policy, &Benign),
        &route,
        Vec::new(),
        &headers,
        Some(&body),
    ) else {
        return;
    };
    let Body::Json(v) = out.body else {
        panic!("a create is forwarded as our own JSON")
    };
    check_forwarded(&v);
    assert_eq!(v["Labels"]["team"], "a", "{v}");
    // What we forward reads back to itself.
    let again = admit(
        &Scope::new(&policy, &Benign),
        &route,
        Vec::new(),
        &headers,
        Some(v.to_string().as_bytes()),
    )
    .expect("our own body is admitted again");
    assert_eq!(again.body, Body::Json(v));
});
