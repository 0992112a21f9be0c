//! The HTTP reader on real Docker Engine API bytes recorded from the docker CLI
//! (/work/shared/fixtures/docker-cli-traffic), whole and delivered 1 to 3 bytes at a time.

use agent_lite::daemon::http::{Framing, HttpError, ResponseReader};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

const FIXTURES: &str = "/work/shared/fixtures/docker-cli-traffic";

struct Trickle {
    data: Vec<u8>,
    pos: usize,
    step: usize,
}

impl Read for Trickle {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.step = self.step % 3 + 1;
        let n = self.step.min(out.len()).min(self.data.len() - self.pos);
        out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The methods of the requests on one recorded connection, as far as they can be parsed.
fn request_methods(raw: &[u8]) -> Vec<String> {
    let mut methods = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = req.parse(&raw[pos..]) else {
            break;
        };
        methods.push(req.method.unwrap_or_default().to_string());
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_string())
        };
        if header("upgrade").is_some() {
            break; // hijacked: raw bytes follow
        }
        pos += n;
        if let Some(cl) = header("content-length") {
            pos += cl.parse::<usize>().unwrap_or(0);
        } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let Ok(httparse::Status::Complete((m, size))) =
                    httparse::parse_chunk_size(&raw[pos.min(raw.len())..])
                else {
                    return methods;
                };
                pos += m + size as usize + 2;
                if size == 0 {
                    break;
                }
            }
        }
    }
    methods
}

struct Parsed {
    statuses: Vec<u16>,
    bodies: Vec<Vec<u8>>,
    /// How reading ended: `None` at a clean end of stream after the last response.
    end_error: Option<HttpError>,
}

fn parse_connection(reader: Box<dyn Read>, methods: &[String]) -> Parsed {
    let mut r = ResponseReader::new(reader);
    let mut out = Parsed {
        statuses: Vec::new(),
        bodies: Vec::new(),
        end_error: None,
    };
    let mut i = 0;
    loop {
        match r.at_eof() {
            Ok(true) => return out,
            Ok(false) => {}
            Err(e) => {
                out.end_error = Some(e);
                return out;
            }
        }
        let is_head = methods.get(i).is_some_and(|m| m == "HEAD");
        i += 1;
        let head = match r.read_head() {
            Ok(h) => h,
            Err(e) => {
                out.end_error = Some(e);
                return out;
            }
        };
        let framing = Framing::of(is_head, &head).expect("framing");
        let mut body = Vec::new();
        out.statuses.push(head.status);
        let res = r.read_body(framing, usize::MAX, &mut |d| body.extend_from_slice(d));
        out.bodies.push(body);
        if let Err(e) = res {
            out.end_error = Some(e);
            return out;
        }
    }
}

fn connections() -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    let dirs = std::fs::read_dir(FIXTURES)
        .unwrap_or_else(|e| panic!("fixtures missing at {FIXTURES}: {e}"));
    for d in dirs.flatten() {
        let Ok(files) = std::fs::read_dir(d.path()) else {
            continue;
        };
        for f in files.flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if let Some(n) = name.strip_suffix("-response.bin") {
                out.push((f.path(), d.path().join(format!("{n}-request.bin"))));
            }
        }
    }
    out.sort();
    out
}

fn truncated_or_streaming(resp: &Path) -> bool {
    let dir = resp.parent().unwrap();
    let truncated = std::fs::read_to_string(dir.join("TRUNCATED.txt")).unwrap_or_default();
    let command = std::fs::read_to_string(dir.join("command.txt")).unwrap_or_default();
    truncated.contains(resp.file_name().unwrap().to_str().unwrap())
        || command.contains("timeout 2 docker")
}

#[test]
fn every_recorded_response_parses() {
    let conns = connections();
    assert!(
        conns.len() >= 20,
        "expected the recorded connections, found {}",
        conns.len()
    );
    for (resp, req) in &conns {
        let raw = std::fs::read(resp).unwrap();
        let methods = request_methods(&std::fs::read(req).unwrap_or_default());
        assert!(!methods.is_empty(), "{}: no request parsed", req.display());
        let whole = parse_connection(Box::new(io::Cursor::new(raw.clone())), &methods);
        let trickled = parse_connection(
            Box::new(Trickle {
                data: raw,
                pos: 0,
                step: 0,
            }),
            &methods,
        );
        assert!(
            !whole.statuses.is_empty(),
            "{}: no response",
            resp.display()
        );
        assert_eq!(whole.statuses, trickled.statuses, "{}", resp.display());
        assert_eq!(whole.bodies, trickled.bodies, "{}", resp.display());
        match &whole.end_error {
            None => {}
            Some(HttpError::Truncated(_)) if truncated_or_streaming(resp) => {}
            Some(e) => panic!("{}: {e}", resp.display()),
        }
        if whole.end_error.is_none() && !whole.statuses.contains(&101) {
            assert_eq!(
                whole.statuses.len(),
                methods.len(),
                "{}: one response per request",
                resp.display()
            );
        }
    }
}

fn parse_fixture(dir: &str, n: &str) -> Parsed {
    let base = Path::new(FIXTURES).join(dir);
    let methods = request_methods(&std::fs::read(base.join(format!("{n}-request.bin"))).unwrap());
    let raw = std::fs::read(base.join(format!("{n}-response.bin"))).unwrap();
    parse_connection(
        Box::new(Trickle {
            data: raw,
            pos: 0,
            step: 0,
        }),
        &methods,
    )
}

#[test]
fn inspect_missing_gives_dockers_404_message() {
    let p = parse_fixture("inspect-missing", "001");
    assert!(p.end_error.is_none());
    assert_eq!(p.statuses[0], 200, "HEAD /_ping");
    assert!(
        p.bodies[0].is_empty(),
        "HEAD has no body even with Content-Length"
    );
    assert_eq!(p.statuses[1], 404);
    let resp = protocol::DockerResponse {
        status: 404,
        headers: vec![],
        body: p.bodies[1].clone(),
    };
    let e = protocol::mapping::error_from_response(&resp);
    assert_eq!(e.code, protocol::ErrorCode::NotFound);
    assert_eq!(e.message, "No such container: no-such-container-xyz");
}

#[test]
fn exec_raw_stream_demuxes() {
    // 001 creates the exec, 002 starts it: a 101 upgrade whose raw stream ends at EOF.
    let p = parse_fixture("exec", "002");
    assert!(p.end_error.is_none(), "{:?}", p.end_error);
    assert_eq!(p.statuses, vec![101]);
    let (out, err) = protocol::mapping::demux(&p.bodies[0]);
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
}

#[test]
fn chunked_logs_and_events_stream_decode() {
    let p = parse_fixture("logs-tail", "001");
    assert!(p.end_error.is_none(), "{:?}", p.end_error);
    let logs = p.bodies.last().unwrap();
    let (out, err) = protocol::mapping::demux(logs);
    assert!(String::from_utf8_lossy(&out).contains("line-"), "{out:?}");
    assert!(String::from_utf8_lossy(&err).contains("err-"), "{err:?}");

    // `docker events --since 1s` saw no event: a chunked stream with just the last chunk.
    let p = parse_fixture("events", "001");
    assert!(p.end_error.is_none(), "{:?}", p.end_error);
    assert_eq!(p.statuses, vec![200, 200]);
    assert!(p.bodies[1].is_empty());

    // `logs -f`: a chunked stream cut by the CLI; every frame before the cut decodes.
    let p = parse_fixture("logs-follow", "001");
    assert!(
        matches!(p.end_error, None | Some(HttpError::Truncated(_))),
        "{:?}",
        p.end_error
    );
    let (out, _) = protocol::mapping::demux(p.bodies.last().unwrap());
    let lines: Vec<&[u8]> = out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert!(!lines.is_empty(), "no log lines decoded");
    assert!(
        lines.iter().all(|l| l.starts_with(b"line-")),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
}
