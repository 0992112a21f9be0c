//! Test helpers: load the repository's fixtures and split recorded HTTP traffic into
//! responses, using httparse for the heads.

#![allow(dead_code)]

use protocol::DockerResponse;
use std::path::PathBuf;

pub fn fixtures_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    assert!(dir.is_dir(), "fixtures missing at {}", dir.display());
    dir
}

pub fn read_fixture(rel: &str) -> Vec<u8> {
    let p = fixtures_dir().join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Splits one recorded connection's response bytes into responses. A `101` response ends the
/// HTTP part: everything after it is the upgraded stream, returned as that response's body.
pub fn responses(raw: &[u8], head_requests: &[bool]) -> Vec<DockerResponse> {
    let mut out = Vec::new();
    let mut rest = raw;
    let mut idx = 0;
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(rest).expect("valid response head") {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("truncated response head"),
        };
        let status = resp.code.expect("status");
        let hs: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let get = |k: &str| hs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let body_start = &rest[n..];
        let is_head = head_requests.get(idx).copied().unwrap_or(false);
        let (body, consumed) = if status == 101 {
            (body_start.to_vec(), body_start.len())
        } else if is_head || status == 204 || status == 304 {
            (Vec::new(), 0)
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            dechunk(body_start)
        } else if let Some(len) = get("content-length") {
            let len: usize = len.parse().expect("content-length");
            let len = len.min(body_start.len());
            (body_start[..len].to_vec(), len)
        } else {
            (body_start.to_vec(), body_start.len())
        };
        out.push(DockerResponse {
            status,
            headers: hs,
            body,
        });
        rest = &body_start[consumed..];
        idx += 1;
    }
    out
}

fn dechunk(mut b: &[u8]) -> (Vec<u8>, usize) {
    let total = b.len();
    let mut out = Vec::new();
    loop {
        let Some(line_end) = b.windows(2).position(|w| w == b"\r\n") else {
            return (out, total);
        };
        let size_text = std::str::from_utf8(&b[..line_end]).expect("chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("hex size");
        b = &b[line_end + 2..];
        if size == 0 {
            let consumed = total - b.len() + 2.min(b.len());
            return (out, consumed);
        }
        let take = size.min(b.len());
        out.extend_from_slice(&b[..take]);
        b = &b[take..];
        if b.len() >= 2 {
            b = &b[2..];
        }
    }
}

/// The request lines (`METHOD target`) of a recorded connection, in order.
pub fn request_lines(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    text.lines()
        .filter(|l| {
            ["GET ", "HEAD ", "POST ", "PUT ", "DELETE "]
                .iter()
                .any(|m| l.starts_with(m))
                && l.ends_with("HTTP/1.1\r")
                || l.ends_with(" HTTP/1.1")
        })
        .map(|l| {
            l.trim_end_matches('\r')
                .trim_end_matches(" HTTP/1.1")
                .to_string()
        })
        .collect()
}

/// Loads the responses of connection `conn` of a recorded CLI command, paired with their
/// request lines.
pub fn recorded(cmd: &str, conn: u32) -> Vec<(String, DockerResponse)> {
    let req = read_fixture(&format!("docker-cli-traffic/{cmd}/{conn:03}-request.bin"));
    let resp = read_fixture(&format!("docker-cli-traffic/{cmd}/{conn:03}-response.bin"));
    let lines = request_lines(&req);
    assert!(!lines.is_empty(), "no requests in {cmd}/{conn:03}");
    let heads: Vec<bool> = lines.iter().map(|l| l.starts_with("HEAD ")).collect();
    let rs = responses(&resp, &heads);
    assert_eq!(
        lines.len(),
        rs.len(),
        "{cmd}: requests and responses differ in count"
    );
    lines.into_iter().zip(rs).collect()
}

/// The recorded response to the first request whose line starts with `prefix`.
pub fn response_to(cmd: &str, conn: u32, prefix: &str) -> DockerResponse {
    recorded(cmd, conn)
        .into_iter()
        .find(|(l, _)| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("{cmd}: no request starting with {prefix:?}"))
        .1
}
