//! The Docker mapping, checked on responses recorded from a real dockerd (API 1.41) by the
//! official CLI. See tests/fixtures/docker-cli-traffic/README.md.

mod common;

use common::{recorded, response_to};
use protocol::mapping::{self, DockerRequest, Method, Plan, Step, Transport};
use protocol::{DockerResponse, ErrorBody, ErrorCode, Operation};
use serde_json::{json, Value};

/// Drives a plan, answering each request with the next canned response, and records the
/// requests it made.
fn drive(
    op: Operation,
    answers: Vec<DockerResponse>,
) -> (Vec<DockerRequest>, Result<Value, ErrorBody>) {
    let mut plan = Plan::new(op);
    let mut answers = answers.into_iter();
    let mut made = Vec::new();
    let mut answer = None;
    loop {
        match plan.next(answer.take()) {
            Step::Done(r) => return (made, r),
            Step::Call(req) => {
                made.push(req);
                answer = Some(
                    answers
                        .next()
                        .expect("the plan asked for more requests than recorded"),
                );
            }
        }
    }
}

fn op(name: &str, params: Value) -> Operation {
    Operation::parse(name, &params).unwrap()
}

#[test]
fn container_list_keeps_the_seed_shape_and_dockers_fields() {
    let resp = response_to("ps-a", 1, "GET /v1.41/containers/json");
    let raw: Value = serde_json::from_slice(&resp.body).unwrap();
    let (reqs, result) = drive(
        op(
            "container.list",
            json!({"all": true, "filters": {"label": "bench=1"}}),
        ),
        vec![resp],
    );
    assert_eq!(
        reqs[0].uri(Some("1.41")),
        "/v1.41/containers/json?all=1&filters=%7B%22label%22%3A%5B%22bench%3D1%22%5D%7D"
    );
    let list = result.unwrap();
    let items = list.as_array().unwrap();
    let raw_items = raw.as_array().unwrap();
    assert!(!items.is_empty());
    assert_eq!(items.len(), raw_items.len());
    for (ours, theirs) in items.iter().zip(raw_items) {
        assert_eq!(ours["id"], theirs["Id"]);
        assert_eq!(
            ours["name"].as_str().unwrap(),
            theirs["Names"][0].as_str().unwrap().trim_start_matches('/')
        );
        assert_eq!(ours["image"], theirs["Image"]);
        assert_eq!(ours["status"], theirs["State"], "status is Docker's state");
        assert_eq!(
            ours["Status"], theirs["Status"],
            "Docker's own fields are kept"
        );
        assert_eq!(ours["Labels"], theirs["Labels"]);
    }
    assert_eq!(items[0]["status"], "running");
}

#[test]
fn image_list_maps_tags_and_sizes() {
    let resp = response_to("images", 1, "GET /v1.41/images/json");
    let (_, result) = drive(op("image.list", json!({})), vec![resp]);
    let list = result.unwrap();
    let items = list.as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["tags"], json!(["test/busybox:latest"]));
    assert_eq!(items[0]["size"], 1982312);
    assert!(items[1]["id"].as_str().unwrap().starts_with("sha256:"));
}

#[test]
fn version_passes_through() {
    let resp = response_to("version", 1, "GET /v1.41/version");
    let (reqs, result) = drive(op("system.version", json!({})), vec![resp]);
    assert_eq!(reqs[0].method, Method::Get);
    assert_eq!(result.unwrap()["ApiVersion"], "1.41");
}

#[test]
fn ping_reports_the_api_version_header() {
    let resp = response_to("version", 1, "HEAD /_ping");
    let (reqs, result) = drive(op("system.ping", json!({})), vec![resp]);
    assert_eq!(reqs[0].uri(None), "/_ping");
    let v = result.unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["api_version"], "1.41");
}

#[test]
fn a_404_keeps_dockers_message() {
    let resp = response_to(
        "inspect-missing",
        1,
        "GET /v1.41/containers/no-such-container-xyz/json",
    );
    let (_, result) = drive(
        op("container.inspect", json!({"id": "no-such-container-xyz"})),
        vec![resp],
    );
    let err = result.unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert_eq!(err.message, "No such container: no-such-container-xyz");
}

#[test]
fn every_recorded_404_is_not_found() {
    let all = recorded("inspect-missing", 1);
    let not_found: Vec<_> = all.iter().filter(|(_, r)| r.status == 404).collect();
    assert!(
        not_found.len() >= 4,
        "containers, images, networks, volumes"
    );
    for (line, r) in not_found {
        let e = mapping::error_from_response(r);
        assert_eq!(e.code, ErrorCode::NotFound, "{line}");
        assert!(
            e.message.contains("no-such-container-xyz"),
            "{line}: {}",
            e.message
        );
    }
}

#[test]
fn container_inspect_adds_summary_fields() {
    let resp = response_to("inspect", 1, "GET /v1.41/containers/cap-a/json");
    let (_, result) = drive(op("container.inspect", json!({"id": "cap-a"})), vec![resp]);
    let v = result.unwrap();
    assert_eq!(v["name"], "cap-a");
    assert_eq!(v["status"], "running");
    assert_eq!(v["image"], "busybox:local");
    assert_eq!(v["Config"]["Labels"]["app"], "web");
}

#[test]
fn logs_inspect_for_tty_then_demultiplex_stdout_and_stderr() {
    let inspect = response_to("logs-tail", 1, "GET /v1.41/containers/cap-a/json");
    let logs = response_to("logs-tail", 1, "GET /v1.41/containers/bd60d8ba94db");
    let (reqs, result) = drive(
        op("container.logs", json!({"id": "cap-a", "tail": 3})),
        vec![inspect, logs],
    );
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[1].uri(Some("1.41")),
        "/v1.41/containers/cap-a/logs?stdout=1&stderr=1&tail=3"
    );
    let v = result.unwrap();
    let out = v["stdout"].as_str().unwrap();
    let err = v["stderr"].as_str().unwrap();
    let expected_out = String::from_utf8(common::read_fixture(
        "docker-cli-traffic/logs-tail/stdout.txt",
    ))
    .unwrap();
    let expected_err = String::from_utf8(common::read_fixture(
        "docker-cli-traffic/logs-tail/stderr.txt",
    ))
    .unwrap();
    assert_eq!(out, expected_out, "stdout matches what the CLI printed");
    assert_eq!(err, expected_err, "stderr matches what the CLI printed");
    assert!(
        out.lines().all(|l| l.starts_with("line-")) && err.lines().all(|l| l.starts_with("err-"))
    );
    assert_eq!(
        out.lines().count() + err.lines().count(),
        3,
        "tail counts lines of both streams"
    );
    assert_eq!(v["tty"], false);
    assert_eq!(v["truncated"], false);
}

#[test]
fn exec_creates_starts_and_reads_the_exit_code() {
    let create = response_to("exec", 1, "POST /v1.41/containers/cap-a/exec");
    let start = recorded("exec", 2).remove(0).1;
    let inspect = response_to("exec", 1, "GET /v1.41/exec/");
    let (reqs, result) = drive(
        op(
            "container.exec",
            json!({"id": "cap-a", "cmd": ["sh", "-c", "echo out; echo err >&2; exit 3"]}),
        ),
        vec![create, start, inspect],
    );
    assert_eq!(reqs.len(), 3);
    assert_eq!(
        reqs[0].body.as_ref().unwrap()["Cmd"],
        json!(["sh", "-c", "echo out; echo err >&2; exit 3"])
    );
    assert!(reqs[1].path.ends_with("/start"));
    let v = result.unwrap();
    assert_eq!(v["stdout"], "out\n");
    assert_eq!(v["stderr"], "err\n");
    assert_eq!(v["exit_code"], 3);
}

#[test]
fn stats_compute_cpu_and_memory_like_docker_stats() {
    let all = recorded("stats-no-stream", 1);
    let (_, resp) = all
        .into_iter()
        .find(|(l, _)| l.contains("/stats"))
        .expect("stats request");
    let (reqs, result) = drive(op("container.stats", json!({"id": "cap-a"})), vec![resp]);
    assert_eq!(reqs[0].query, vec![("stream".to_string(), "0".to_string())]);
    let v = result.unwrap();
    assert!(v["memory_usage_bytes"].as_u64().unwrap() > 0);
    assert!(v["memory_limit_bytes"].as_u64().unwrap() > 0);
    assert!(v["cpu_percent"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["name"], "cap-a");
    assert!(v["raw"].is_object());
}

#[test]
fn volume_and_network_create_and_remove() {
    let created = response_to("volume-create", 1, "POST /v1.41/volumes/create");
    let (reqs, r) = drive(
        op("volume.create", json!({"name": "capvol"})),
        vec![created],
    );
    assert_eq!(reqs[0].body.as_ref().unwrap()["Name"], "capvol");
    let v = r.unwrap();
    assert_eq!(
        (v["name"].as_str(), v["driver"].as_str()),
        (Some("capvol"), Some("local"))
    );

    let removed = response_to("volume-rm", 1, "DELETE /v1.41/volumes/capvol");
    let (_, r) = drive(op("volume.remove", json!({"id": "capvol"})), vec![removed]);
    assert_eq!(r.unwrap()["removed"], true);

    let net = response_to("network-create", 1, "POST /v1.41/networks/create");
    let (_, r) = drive(op("network.create", json!({"name": "capnet"})), vec![net]);
    assert!(r.unwrap()["id"].as_str().unwrap().len() >= 12);

    let gone = response_to("network-rm", 1, "DELETE /v1.41/networks/capnet");
    let (_, r) = drive(op("network.remove", json!({"id": "capnet"})), vec![gone]);
    assert_eq!(r.unwrap()["removed"], true);
}

#[test]
fn container_remove_maps_204() {
    let resp = response_to("rm-f", 1, "DELETE /v1.41/containers/cap-a");
    let (reqs, r) = drive(
        op("container.remove", json!({"id": "cap-a", "force": true})),
        vec![resp],
    );
    assert_eq!(reqs[0].uri(Some("1.41")), "/v1.41/containers/cap-a?force=1");
    assert_eq!(r.unwrap()["removed"], true);
}

#[test]
fn status_codes_map_to_error_codes() {
    let cases = [
        (400, ErrorCode::InvalidParams),
        (403, ErrorCode::Forbidden),
        (404, ErrorCode::NotFound),
        (409, ErrorCode::Conflict),
        (500, ErrorCode::DockerError),
        (503, ErrorCode::DockerError),
    ];
    for (status, code) in cases {
        let r = DockerResponse {
            status,
            headers: vec![],
            body: br#"{"message":"boom"}"#.to_vec(),
        };
        let e = mapping::error_from_response(&r);
        assert_eq!((e.code, e.message.as_str()), (code, "boom"), "{status}");
    }
    let r = DockerResponse {
        status: 500,
        headers: vec![],
        body: b"plain text failure\n".to_vec(),
    };
    assert_eq!(
        mapping::error_from_response(&r).message,
        "plain text failure"
    );
}

#[test]
fn not_modified_is_success_without_change() {
    let r = DockerResponse {
        status: 304,
        headers: vec![],
        body: vec![],
    };
    let (_, res) = drive(op("container.start", json!({"id": "web-1"})), vec![r]);
    assert_eq!(res.unwrap(), json!({"id": "web-1", "changed": false}));
}

#[test]
fn pull_reports_progress_and_stream_errors() {
    let body = b"{\"status\":\"Pulling from library/busybox\",\"id\":\"1.36\"}\n{\"status\":\"Downloading\",\"progressDetail\":{\"current\":10,\"total\":100},\"id\":\"abc\"}\n{\"status\":\"Status: Downloaded newer image for busybox:1.36\"}\n";
    struct Canned(Vec<u8>, u16);
    impl Transport for Canned {
        fn call(
            &mut self,
            req: &DockerRequest,
            on_line: &mut dyn FnMut(&[u8]),
        ) -> Result<DockerResponse, ErrorBody> {
            assert!(req.progress);
            for line in self.0.split(|&c| c == b'\n') {
                on_line(line);
            }
            Ok(DockerResponse {
                status: self.1,
                headers: vec![],
                body: self.0.clone(),
            })
        }
    }
    let mut updates = Vec::new();
    let r = mapping::run_blocking(
        op("image.pull", json!({"image": "busybox", "tag": "1.36"})),
        &mut Canned(body.to_vec(), 200),
        &mut |p| updates.push(p),
    );
    assert_eq!(r.unwrap()["image"], "busybox:1.36");
    assert_eq!(updates.len(), 3);
    assert_eq!(updates[1]["current"], 10);
    assert_eq!(updates[1]["layer"], "abc");

    let failing = b"{\"status\":\"Pulling\"}\n{\"errorDetail\":{\"message\":\"manifest unknown\"},\"error\":\"manifest unknown\"}\n";
    let r = mapping::run_blocking(
        op("image.pull", json!({"image": "nope"})),
        &mut Canned(failing.to_vec(), 200),
        &mut |_| {},
    );
    assert_eq!(r.unwrap_err().code, ErrorCode::NotFound);
}

#[test]
fn demux_handles_raw_tty_streams_and_truncated_frames() {
    let (o, e) = mapping::demux(b"plain tty output\r\n");
    assert_eq!(
        (o.as_slice(), e.as_slice()),
        (&b"plain tty output\r\n"[..], &b""[..])
    );
    let mut framed = vec![1, 0, 0, 0, 0, 0, 0, 3];
    framed.extend_from_slice(b"abc");
    framed.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 10, b'x']);
    let (o, e) = mapping::demux(&framed);
    assert_eq!((o.as_slice(), e.as_slice()), (&b"abc"[..], &b"x"[..]));
}

#[test]
fn api_version_negotiation_takes_the_lower() {
    assert_eq!(
        mapping::negotiate_api_version("1.41").as_deref(),
        Some("1.41")
    );
    assert_eq!(
        mapping::negotiate_api_version("1.99").as_deref(),
        Some(mapping::API_VERSION)
    );
    assert_eq!(mapping::negotiate_api_version("1.12"), None);
    assert_eq!(mapping::negotiate_api_version("garbage"), None);
}

#[test]
fn image_references_keep_slashes_and_colons_in_paths() {
    let mut plan = Plan::new(op(
        "image.inspect",
        json!({"id": "docker-ctl-test/busybox:latest"}),
    ));
    let Step::Call(req) = plan.next(None) else {
        panic!()
    };
    assert_eq!(
        req.uri(Some("1.41")),
        "/v1.41/images/docker-ctl-test/busybox:latest/json"
    );
}

#[test]
fn a_pull_with_credentials_sends_them_as_x_registry_auth_and_never_prints_them() {
    use base64::Engine;
    let pull = op(
        "image.pull",
        json!({"image": "registry.example:5000/team/app", "tag": "1",
               "auth": {"username": "ci", "password": "pw-123", "serveraddress": "registry.example:5000"}}),
    );
    assert!(
        !format!("{pull:?}").contains("pw-123"),
        "Debug masks the password"
    );
    let (made, _) = drive(
        pull,
        vec![DockerResponse {
            status: 200,
            headers: vec![],
            body: b"{\"status\":\"Downloaded\"}\n".to_vec(),
        }],
    );
    let header = made[0].registry_auth.as_ref().expect("the header");
    assert!(!format!("{:?}", made[0]).contains(header.expose()));
    let doc: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE
            .decode(header.expose())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        doc,
        json!({"username": "ci", "password": "pw-123", "serveraddress": "registry.example:5000"})
    );
    // Without credentials, no header.
    let (made, _) = drive(
        op("image.pull", json!({"image": "busybox"})),
        vec![DockerResponse {
            status: 200,
            headers: vec![],
            body: b"{\"status\":\"Downloaded\"}\n".to_vec(),
        }],
    );
    assert!(made[0].registry_auth.is_none());
}
