//! Browser tests of the web UI: Debian's chromium, driven through chromedriver, against a
//! real `docker-ctl-server`, a real `docker-ctl-agent` and the real dockerd. One test per
//! flow; each saves a screenshot in `target/browser-screenshots/`.

mod driver;

use docker_ctl_tests::{
    bin, docker_cli, docker_get, require_docker, unique, Agent, Db, DockerCleanup, Server,
};
use driver::Browser;
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const PAGE: Duration = Duration::from_secs(20);
const ONLINE: Duration = Duration::from_secs(30);
const IMAGE: &str = "docker-ctl-test/busybox:latest";

/// A server with one agent host online, and a way to add users.
struct Site {
    server: Server,
    host_id: String,
    _agent: Agent,
}

impl Site {
    fn start() -> Site {
        require_docker();
        let server = Server::start(Db::Sqlite);
        let (host_id, agent_id, token) = server.enrol(&unique("ui-host"));
        let agent = Agent::start(&server.ws(), &agent_id, &token);
        server.wait_status(&host_id, "online", ONLINE);
        Site {
            server,
            host_id,
            _agent: agent,
        }
    }

    /// `docker-ctl-server user create --password-stdin`, beside the running server.
    fn user(&self, name: &str, role: &str, password: &str) {
        let mut args = vec![
            "user".to_string(),
            "create".into(),
            "--name".into(),
            name.into(),
            "--role".into(),
            role.into(),
            "--password-stdin".into(),
            "--data-dir".into(),
            self.server.data_dir.path().display().to_string(),
        ];
        if let Db::Postgres(url) = &self.server.db {
            args.extend(["--database-url".to_string(), url.clone()]);
        }
        let mut child = Command::new(bin("docker-ctl-server"))
            .args(&args)
            .env_remove("DATABASE_URL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn user create");
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{password}").expect("write the password");
        drop(stdin);
        let out = child.wait_with_output().expect("user create");
        assert!(
            out.status.success(),
            "user create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn base(&self) -> String {
        self.server.http()
    }

    /// A running busybox container with the test's label, removed when `cleanup` drops.
    fn container(&self, cleanup: &mut DockerCleanup, cmd: &str) -> String {
        let name = unique("ui-c");
        cleanup.container(&name);
        let (ok, out) = docker_cli(&[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            "docker-ctl-test=browser",
            IMAGE,
            "sh",
            "-c",
            cmd,
        ]);
        assert!(ok, "docker run: {out}");
        name
    }

    fn host_page(&self) -> String {
        format!("{}/hosts/{}", self.base(), self.host_id)
    }
}

fn state_on_dockerd(name: &str) -> String {
    docker_get(&format!("/containers/{name}/json"))["State"]["Status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn signed_in(site: &Site, role: &str) -> Browser {
    let name = unique(role);
    site.user(&name, role, "a long enough password");
    let b = Browser::start();
    b.sign_in(&site.base(), &name, "a long enough password");
    b.find("#fleet", PAGE);
    b
}

#[test]
fn sign_in_and_refuse_a_wrong_password() {
    let site = Site::start();
    let name = unique("alice");
    site.user(&name, "operator", "correct horse battery");
    let b = Browser::start();
    b.sign_in(&site.base(), &name, "not the password");
    let (err, _) = b.wait_text("#signin-error", PAGE, |t| !t.is_empty());
    assert!(err.contains("wrong user name or password"), "{err}");
    let pw_fields = b.js(
        "return document.querySelectorAll('input[type=password]').length",
        json!([]),
    );
    assert_eq!(
        pw_fields,
        json!(1),
        "the sign-in form has one password field"
    );
    b.screenshot("sign-in-refused");
    assert!(
        b.try_find("#fleet").is_none(),
        "a wrong password must not sign in"
    );
    let p = b.find("#signin-password", PAGE);
    b.clear(&p);
    b.type_into(&p, "correct horse battery\u{E007}");
    b.find("#fleet", PAGE);
    let (who, _) = b.wait_text("#whoami", PAGE, |t| t.contains(&name));
    assert!(who.contains("operator"), "{who}");
    b.screenshot("sign-in-fleet");
}

#[test]
fn the_fleet_shows_the_host_and_its_live_status() {
    let mut site = Site::start();
    let b = signed_in(&site, "viewer");
    let row = format!("tr[data-host='{}'] .status", site.host_id);
    b.wait_text(&row, PAGE, |t| t == "online");
    b.screenshot("fleet-online");
    site._agent.kill();
    // No reload: the live feed turns the row offline.
    b.wait_text(&row, ONLINE, |t| t == "offline");
    b.screenshot("fleet-offline");
}

#[test]
fn stop_and_start_a_container_without_a_reload() {
    let site = Site::start();
    let mut cleanup = DockerCleanup::default();
    let name = site.container(&mut cleanup, "sleep 600");
    let b = signed_in(&site, "operator");
    b.goto(&site.host_page());
    let state = format!("tr[data-name='{name}'] .state");
    b.wait_text(&state, PAGE, |t| t == "running");
    let marker = b.js("window.__noReload = 1; return 1", json!([]));
    assert_eq!(marker, json!(1));
    b.click_button(&format!("tr[data-name='{name}']"), "Stop", PAGE);
    b.wait_text(&state, PAGE, |t| t == "exited");
    assert_eq!(state_on_dockerd(&name), "exited");
    b.screenshot("container-stopped");
    b.click_button(&format!("tr[data-name='{name}']"), "Start", PAGE);
    b.wait_text(&state, PAGE, |t| t == "running");
    assert_eq!(state_on_dockerd(&name), "running");
    assert_eq!(
        b.js("return window.__noReload", json!([])),
        json!(1),
        "the page was reloaded"
    );
    b.screenshot("container-started");
}

#[test]
fn a_line_the_container_writes_appears_in_the_followed_logs_within_2s() {
    let site = Site::start();
    let mut cleanup = DockerCleanup::default();
    let name = site.container(&mut cleanup, "echo first line; sleep 600");
    let b = signed_in(&site, "viewer");
    b.goto(&format!("{}/containers/{name}", site.host_page()));
    b.wait_text("#logs", PAGE, |t| t.contains("first line"));
    let marker = unique("log-line");
    let (ok, out) = docker_cli(&[
        "exec",
        &name,
        "sh",
        "-c",
        &format!("echo {marker} > /proc/1/fd/1"),
    ]);
    assert!(ok, "docker exec: {out}");
    let (_, took) = b.wait_text("#logs", Duration::from_secs(10), |t| t.contains(&marker));
    b.screenshot("logs-followed");
    assert!(took <= Duration::from_secs(2), "the line took {took:?}");
}

#[test]
fn the_exec_terminal_runs_echo_and_shows_its_output() {
    let site = Site::start();
    let mut cleanup = DockerCleanup::default();
    let name = site.container(&mut cleanup, "sleep 600");
    let b = signed_in(&site, "operator");
    b.goto(&format!("{}/containers/{name}", site.host_page()));
    assert_eq!(
        b.js("return [...document.scripts].some(s => s.src.includes('xterm')) || performance.getEntriesByType('resource').some(r => r.name.includes('xterm'))", json!([])),
        json!(false),
        "the terminal code loads only on the exec page"
    );
    b.click_button(".tabs", "Exec", PAGE);
    let input = b.find(".xterm-helper-textarea", PAGE);
    // Wait for the shell's prompt before typing.
    b.wait_text(".xterm-rows", PAGE, |t| t.contains('#') || t.contains('$'));
    b.type_into(&input, "echo $((6*7))-from-exec\n");
    b.wait_text(".xterm-rows", PAGE, |t| t.contains("42-from-exec"));
    b.screenshot("exec-terminal");
}

#[test]
fn a_viewer_sees_no_mutating_controls_and_the_api_refuses_the_viewer() {
    let site = Site::start();
    let mut cleanup = DockerCleanup::default();
    let name = site.container(&mut cleanup, "sleep 600");
    let b = signed_in(&site, "viewer");
    b.goto(&site.host_page());
    b.wait_text(&format!("tr[data-name='{name}'] .state"), PAGE, |t| {
        t == "running"
    });
    let buttons = b.js(
        "return [...document.querySelectorAll('main button')].map(b => b.textContent.trim())",
        json!([]),
    );
    for label in ["Stop", "Start", "Restart", "Remove", "Create container"] {
        assert!(
            !buttons.as_array().expect("list").contains(&json!(label)),
            "viewer sees {label}: {buttons}"
        );
    }
    b.screenshot("viewer-host");
    // The page's own session, with its CSRF token, asking anyway.
    let status = b.js_async(
        "const done = arguments[arguments.length - 1];
         fetch('/api/v1/session').then(r => r.json()).then(me =>
           fetch(arguments[0], {method: 'POST', headers: {'X-CSRF-Token': me.csrf_token}}))
         .then(r => done(r.status), e => done(String(e)));",
        json!([format!(
            "/api/v1/hosts/{}/docker/containers/{name}/stop",
            site.host_id
        )]),
    );
    assert_eq!(status, json!(403), "the API must refuse a viewer");
    assert_eq!(
        state_on_dockerd(&name),
        "running",
        "the container must still run"
    );
}

/// Serves one HTML page on a local port of another origin (`localhost` instead of the
/// server's `127.0.0.1`) until the returned guard drops.
fn attacker_page(html: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::io::Read;
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    let port = l.local_addr().expect("addr").port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !s.load(std::sync::atomic::Ordering::SeqCst) && std::time::Instant::now() < deadline {
            match l.accept() {
                Ok((mut c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let mut buf = [0u8; 4096];
                    let _ = c.read(&mut buf);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                        html.len()
                    );
                    let _ = c.write_all(resp.as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    (format!("http://localhost:{port}/"), stop)
}

#[test]
fn a_csrf_attempt_from_another_origin_fails() {
    let site = Site::start();
    let mut cleanup = DockerCleanup::default();
    let name = site.container(&mut cleanup, "sleep 600");
    let b = signed_in(&site, "operator");
    let target = format!(
        "{}/api/v1/hosts/{}/docker/containers/{name}/stop",
        site.base(),
        site.host_id
    );
    // A cross-site form post (what a CSRF attack sends) and a credentialed fetch.
    let html = format!(
        "<html><body><p id=r>pending</p><form id=f method=POST action='{target}' enctype='text/plain'>\
         <input name=x value=y></form><script>\
         fetch('{target}', {{method:'POST', credentials:'include', mode:'no-cors'}})\
         .finally(() => {{ document.getElementById('r').textContent = 'sent'; document.getElementById('f').submit(); }});\
         </script></body></html>"
    );
    let (url, stop) = attacker_page(html);
    b.goto(&url);
    // The form navigates to the server's answer.
    let (answer, _) = b.wait_text("body", PAGE, |t| {
        t.contains("message") || t.contains("error")
    });
    b.screenshot("csrf-refused");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        answer.contains("not signed in")
            || answer.contains("missing bearer")
            || answer.contains("cross-site")
            || answer.contains("CSRF"),
        "{answer}"
    );
    assert_eq!(
        state_on_dockerd(&name),
        "running",
        "the container must still run"
    );
    // And the server refuses the session cookie itself when the origin is foreign.
    let audit = site
        .server
        .api("GET", "/api/v1/audit?action=docker.container_stop", None)
        .1;
    assert_eq!(
        audit["entries"].as_array().map(Vec::len),
        Some(0),
        "{audit}"
    );
}
