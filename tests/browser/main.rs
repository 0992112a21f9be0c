//! Browser tests of the web UI: Debian's chromium, driven through chromedriver, against a
//! real `docker-ctl-server`, a real `docker-ctl-agent` and the real dockerd. One test per
//! flow; each saves a screenshot in `target/browser-screenshots/`.

mod driver;
mod netns;
mod updates;

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
        create_user(&self.server, name, role, password);
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

/// `docker-ctl-server user create --password-stdin`, beside the running `server`.
fn create_user(server: &Server, name: &str, role: &str, password: &str) {
    let mut args = vec![
        "user".to_string(),
        "create".into(),
        "--name".into(),
        name.into(),
        "--role".into(),
        role.into(),
        "--password-stdin".into(),
        "--data-dir".into(),
        server.data_dir.path().display().to_string(),
    ];
    if let Db::Postgres(url) = &server.db {
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

/// Answers every `confirm()` of the page with yes.
fn confirm_all(b: &Browser) {
    b.js("window.confirm = () => true; return 1", json!([]));
}

fn pending_host(server: &Server, name: &str) -> String {
    docker_ctl_tests::wait_for(&format!("{name} pending"), ONLINE, || {
        let (st, v) = server.api("GET", "/api/v1/hosts?status=pending&limit=100", None);
        assert_eq!(st, 200, "{v}");
        v["hosts"]
            .as_array()?
            .iter()
            .find(|h| h["name"] == name)
            .map(|h| h["id"].as_str().expect("id").to_string())
    })
}

#[test]
fn enrol_a_host_with_a_token_approve_one_reject_another_and_revoke() {
    let site = Site::start();
    let server = &site.server;
    let b = signed_in(&site, "admin");
    b.goto(&format!("{}/enrol", site.base()));
    let run = unique("site");
    let tname = unique("ui-token");
    let name = b.find("#enrol-name", PAGE);
    b.type_into(&name, &tname);
    let labels = b.find("#enrol-labels", PAGE);
    b.type_into(&labels, &format!("site={run}, role=edge"));
    b.js(
        "document.querySelector('#enrol-approval').click(); return 1",
        json!([]),
    );
    b.click_button(
        "form[aria-label='Create enrolment token']",
        "Create enrolment token",
        PAGE,
    );
    let (token, _) = b.wait_text("#new-secret", PAGE, |t| t.starts_with("dctl_e_"));
    // One install line per CPU, each with this token and this server's address.
    for cpu in ["x86_64", "aarch64", "armv7"] {
        let line = b.text_of(&format!("#new-enrolment-token [data-cpu='{cpu}'] pre"));
        assert!(line.contains(&token), "{cpu}: {line}");
        assert!(
            line.contains("--enrol-token-file enrol.token"),
            "{cpu}: {line}"
        );
        assert!(
            line.contains(&format!("--server '{}'", server.ws())),
            "{cpu}: {line}"
        );
    }
    let row = format!("#enrolment-tokens tr[data-token='{tname}']");
    let (text, _) = b.wait_text(&row, PAGE, |t| t.contains("active"));
    assert!(
        text.contains(&format!("site={run}")) && text.contains("required"),
        "{text}"
    );
    assert!(
        !text.contains(&token),
        "the list must not show the token: {text}"
    );
    b.screenshot("enrol-token-created");

    // A real agent enrols with it and waits for approval.
    let good = unique("ui-enrolled");
    let _good_agent = Agent::start_enrolling(&server.ws(), &token, &good);
    let good_id = pending_host(server, &good);
    let docker_version = format!("/api/v1/hosts/{good_id}/docker/version");
    assert_eq!(
        server.api("GET", &docker_version, None).0,
        409,
        "a pending host gets no request"
    );
    let bad = unique("ui-refused");
    let _bad_agent = Agent::start_enrolling(&server.ws(), &token, &bad);
    let bad_id = pending_host(server, &bad);

    b.click_button("#enrol", "Refresh", PAGE);
    let good_row = format!("#pending-hosts tr[data-host='{good_id}']");
    let bad_row = format!("#pending-hosts tr[data-host='{bad_id}']");
    b.wait_text(&good_row, PAGE, |t| t.contains(&good));
    b.wait_text(&bad_row, PAGE, |t| t.contains(&bad));
    b.screenshot("enrol-pending");
    confirm_all(&b);
    b.click_button(&good_row, "Approve", PAGE);
    b.wait_text(&good_row, PAGE, str::is_empty);
    server.wait_status(&good_id, "online", ONLINE);
    let (st, v) = server.api("GET", &docker_version, None);
    assert_eq!(st, 200, "the approved host answers: {v}");
    let (_, h) = server.api("GET", &format!("/api/v1/hosts/{good_id}"), None);
    assert_eq!(h["labels"]["site"], json!(run), "{h}");
    assert_eq!(h["labels"]["role"], json!("edge"), "{h}");

    b.click_button(&bad_row, "Reject", PAGE);
    b.find("#pending-none", PAGE);
    let (st, _) = server.api("GET", &format!("/api/v1/hosts/{bad_id}"), None);
    assert_eq!(st, 404, "a rejected host is deleted");

    b.click_button(&row, "Revoke", PAGE);
    b.wait_text(&row, PAGE, |t| t.contains("revoked"));
    b.screenshot("enrol-revoked");
    let mut late = Agent::start_enrolling(&server.ws(), &token, &unique("ui-late"));
    assert_eq!(late.wait_exit(ONLINE), Some(78), "{}", late.output.text());
    assert!(late.output.contains("revoked"), "{}", late.output.text());
}

#[test]
fn a_bulk_operation_over_a_selector_shows_each_hosts_progress_live() {
    let site = Site::start();
    let server = &site.server;
    let name2 = unique("ui-host");
    let (host2, agent_id, token) = server.enrol(&name2);
    let _agent2 = Agent::start(&server.ws(), &agent_id, &token);
    server.wait_status(&host2, "online", ONLINE);
    let run = unique("bulk");
    let mut cleanup = DockerCleanup::default();
    let mut names = Vec::new();
    for id in [&site.host_id, &host2] {
        let (st, h) = server.api(
            "PATCH",
            &format!("/api/v1/hosts/{id}"),
            Some(json!({ "labels": { "ui-bulk": run } })),
        );
        assert_eq!(st, 200, "{h}");
        let n = h["name"].as_str().expect("name").to_string();
        cleanup.container(&format!("ui-bulk-{n}"));
        names.push(n);
    }
    let b = signed_in(&site, "admin");
    b.goto(&format!("{}/bulk", site.base()));

    // A saved group over the same selector.
    b.click_button(".tabs", "Groups", PAGE);
    let group = unique("ui-group");
    let gn = b.find("#group-name", PAGE);
    b.type_into(&gn, &group);
    let gs = b.find("#group-selector", PAGE);
    b.type_into(&gs, &format!("ui-bulk={run}"));
    b.click_button("form[aria-label='Create group']", "Create group", PAGE);
    b.wait_text(&format!("#groups tr[data-group='{group}']"), PAGE, |t| {
        t.contains(&format!("ui-bulk={run}"))
    });
    let (st, g) = server.api("GET", &format!("/api/v1/groups/{group}"), None);
    assert_eq!(st, 200, "{g}");
    assert_eq!(g["hosts_total"], json!(2), "{g}");
    b.screenshot("bulk-groups");

    b.click_button(".tabs", "Operations", PAGE);
    let sel = b.find("#bulk-selector", PAGE);
    b.type_into(&sel, &format!("ui-bulk={run}"));
    let op = b.find("#bulk-operation", PAGE);
    b.type_into(&op, "container.create");
    let params = b.find("#bulk-params", PAGE);
    b.clear(&params);
    b.type_into(
        &params,
        &json!({
            "name": "ui-bulk-{{host.name}}", "image": IMAGE,
            "labels": { "docker-ctl-test": "browser" }, "cmd": ["sleep", "300"]
        })
        .to_string(),
    );
    b.js("window.__noReload = 1; return 1", json!([]));
    // "Start" shows once the feed is open.
    b.click_button("form[aria-label='Start bulk operation']", "Start", PAGE);
    b.wait_text("#bulk-state", ONLINE, |t| t == "succeeded");
    for id in [&site.host_id, &host2] {
        b.wait_text(
            &format!("#bulk-hosts tr[data-host='{id}'] .state"),
            PAGE,
            |t| t == "succeeded",
        );
    }
    // The progress came from the feed: each host's `bulk_progress` messages, in order.
    let log = b.text_of("#bulk-log");
    for id in [&site.host_id, &host2] {
        let running = log.find(&format!("{id}: running"));
        let done = log.find(&format!("{id}: succeeded"));
        assert!(
            running.is_some() && done.is_some() && running < done,
            "{id}: {log}"
        );
    }
    assert!(log.contains("done: succeeded"), "{log}");
    assert_eq!(b.js("return window.__noReload", json!([])), json!(1));
    b.screenshot("bulk-progress");
    for n in &names {
        let c = docker_get(&format!("/containers/ui-bulk-{n}/json"));
        assert_eq!(c["Config"]["Labels"]["docker-ctl-test"], "browser", "{c}");
    }
}

/// Sets a `<select>` (or input) to `value` the way a person does: the change event fires.
fn choose(b: &Browser, css: &str, value: &str) {
    let ok = b.js(
        "const e = document.querySelector(arguments[0]); if (!e) return false; e.value = arguments[1];
         e.dispatchEvent(new Event('change', {bubbles: true})); return true;",
        json!([css, value]),
    );
    assert_eq!(ok, json!(true), "{css}");
}

/// Replaces the text of the textarea `css` by typing `text`.
fn retype(b: &Browser, css: &str, text: &str) {
    let el = b.find(css, PAGE);
    b.clear(&el);
    b.type_into(&el, text);
}

#[test]
fn a_stack_refused_at_its_line_then_deployed_live_and_deleted() {
    let site = Site::start();
    let server = &site.server;
    let project = unique("uistack");
    let container = format!("{project}-web-1");
    let mut cleanup = DockerCleanup::default();
    cleanup.container(&container);
    cleanup.network(&format!("{project}_default"));
    let b = signed_in(&site, "operator");
    b.goto(&format!("{}/stacks", site.base()));
    b.click_button("#stacks", "New stack", PAGE);
    retype(&b, "#stack-name", &project);
    choose(&b, "#stack-target", "hosts");
    retype(&b, "#stack-hosts-ids", &site.host_id);
    let good = format!(
        "services:\n  web:\n    image: {IMAGE}\n    command: [\"sleep\", \"600\"]\n    labels:\n      docker-ctl-test: browser\n"
    );
    // Line 7: a key outside the supported subset.
    retype(&b, "#stack-compose", &format!("{good}    build: .\n"));
    b.js("window.__noReload = 1; return 1", json!([]));
    b.click_button("#stack-editor", "Deploy", PAGE);
    let (err, _) = b.wait_text("#compose-errors li[data-line='7']", PAGE, |t| {
        t.contains("services.web.build")
    });
    assert!(err.contains("line 7"), "{err}");
    assert!(
        b.text_of("#stack-error")
            .contains("unsupported compose keys"),
        "the server's message is shown"
    );
    // The gutter marks line 7, and only it.
    let marked = b.js(
        "return [...document.querySelectorAll('.editor .gutter .bad')].map(e => e.dataset.line)",
        json!([]),
    );
    assert_eq!(marked, json!(["7"]));
    assert!(b.try_find(".editor .marks .mark[data-line='7']").is_some());
    b.screenshot("stack-invalid-key");
    let (st, v) = server.api("GET", &format!("/api/v1/stacks/{project}"), None);
    assert_eq!(st, 404, "nothing is stored for a refused file: {v}");

    // A YAML syntax error is marked where the parser stopped.
    retype(&b, "#stack-compose", "services:\n  web:\n    image: [x\n");
    b.click_button("#stack-editor", "Deploy", PAGE);
    b.wait_text("#compose-errors", PAGE, |t| t.contains("invalid YAML"));
    let marked = b.js(
        "return [...document.querySelectorAll('.editor .gutter .bad')].map(e => Number(e.dataset.line))",
        json!([]),
    );
    let line = marked[0].as_u64().unwrap_or(0);
    assert!((3..=4).contains(&line), "{marked}");

    // Fixed: it deploys, and the host's progress reaches succeeded live.
    retype(&b, "#stack-compose", &good);
    b.click_button("#stack-editor", "Deploy", PAGE);
    b.wait_text("#bulk-state", ONLINE, |t| t == "succeeded");
    let title = b.text_of("#bulk-detail h2");
    assert!(
        title.starts_with(&format!("Stack {project} · deploy")),
        "the rollout's title names the stack: {title}"
    );
    let row = format!("#bulk-hosts tr[data-host='{}'] .state", site.host_id);
    b.wait_text(&row, PAGE, |t| t == "succeeded");
    let log = b.text_of("#bulk-log");
    let running = log.find(&format!("{}: running", site.host_id));
    let done = log.find(&format!("{}: succeeded", site.host_id));
    assert!(
        running.is_some() && done.is_some() && running < done,
        "{log}"
    );
    assert!(log.contains("done: succeeded"), "{log}");
    assert!(b.try_find("#compose-errors").is_none());
    let c = docker_get(&format!("/containers/{container}/json"));
    assert_eq!(c["State"]["Status"], "running", "{c}");
    assert_eq!(c["Config"]["Labels"]["docker-ctl-test"], "browser", "{c}");
    assert_eq!(
        c["Config"]["Labels"]["com.docker.compose.project"],
        json!(project),
        "{c}"
    );
    // The stack's page: the host deployed version 1 and runs it without drift.
    let host_row = format!("#stack-hosts tr[data-host='{}']", site.host_id);
    b.wait_text(&format!("{host_row} .state"), PAGE, |t| t == "deployed");
    b.wait_text(&format!("{host_row} .drift"), PAGE, |t| t == "in sync");
    assert_eq!(b.js("return window.__noReload", json!([])), json!(1));
    b.screenshot("stack-deployed");

    // Stopped by hand: the stack shows drift; Redeploy repairs it.
    let (ok, out) = docker_cli(&["stop", "-t", "0", &container]);
    assert!(ok, "{out}");
    b.click_button("#stack-detail", "Refresh", PAGE);
    b.wait_text(&format!("{host_row} .drift"), PAGE, |t| t == "drift");
    b.wait_text(&format!("{host_row} .services"), PAGE, |t| {
        t.contains("web: stopped")
    });
    b.click_button("#stack-detail", "Redeploy", PAGE);
    b.wait_text(&row, ONLINE, |t| t == "succeeded");
    b.wait_text(&format!("{host_row} .drift"), PAGE, |t| t == "in sync");
    assert_eq!(state_on_dockerd(&container), "running");

    // Deleted: the container goes from dockerd.
    confirm_all(&b);
    b.click_button("#stack-detail", "Delete", PAGE);
    b.wait_text("#bulk-state", ONLINE, |t| t == "succeeded");
    docker_ctl_tests::wait_for("the stack's container is removed", ONLINE, || {
        let (ok, _) = docker_cli(&["inspect", &container]);
        (!ok).then_some(())
    });
    b.screenshot("stack-deleted");
}

#[test]
fn the_fleet_search_asks_the_server_for_names() {
    let site = Site::start();
    let server = &site.server;
    let run = unique("needle");
    // More hosts than one page holds, so a filter of the page alone could not find them.
    let mut wanted = Vec::new();
    for i in 0..3 {
        // After the fillers in name order, whatever the case.
        let name = format!("zz-Fleet-{}-{i}", run.to_uppercase());
        let (st, h) = server.api(
            "POST",
            "/api/v1/hosts",
            Some(json!({ "name": name, "connection_mode": "agent" })),
        );
        assert_eq!(st, 201, "{h}");
        wanted.push(h["id"].as_str().expect("id").to_string());
    }
    for i in 0..55 {
        let (st, h) = server.api(
            "POST",
            "/api/v1/hosts",
            Some(json!({ "name": format!("aaa-filler-{i:02}"), "connection_mode": "agent" })),
        );
        assert_eq!(st, 201, "{h}");
    }
    let b = signed_in(&site, "viewer");
    b.wait_text("#fleet", PAGE, |t| t.contains("aaa-filler-00"));
    assert!(
        !b.text_of("#fleet").to_lowercase().contains(&run),
        "the first page holds only fillers"
    );
    let q = b.find("#fleet-q", PAGE);
    b.type_into(&q, &run);
    b.wait_text("#fleet", PAGE, |t| !t.contains("aaa-filler"));
    let rows = b.js(
        "return [...document.querySelectorAll('#fleet tbody tr')].map(r => r.dataset.host)",
        json!([]),
    );
    let mut rows: Vec<String> = serde_json::from_value(rows).expect("ids");
    rows.sort();
    wanted.sort();
    assert_eq!(rows, wanted);
    b.screenshot("fleet-search");
    // Combined with the status filter: these hosts never connected.
    choose(&b, ".bar select", "online");
    b.find("#fleet-none", PAGE);
    assert!(!b.text_of("#fleet").to_lowercase().contains(&run));
}

#[test]
fn change_the_password_sign_out_the_old_one_is_refused_and_an_admin_resets_it() {
    let site = Site::start();
    let name = unique("carol");
    site.user(&name, "viewer", "the first password");
    let admin = unique("root");
    site.user(&admin, "admin", "the admin password");
    let b = Browser::start();
    b.sign_in(&site.base(), &name, "the first password");
    b.find("#fleet", PAGE);
    b.goto(&format!("{}/account", site.base()));
    // The old password is required.
    retype(&b, "#pw-old", "not my password");
    retype(&b, "#pw-new", "the second password");
    b.click_button(
        "form[aria-label='Change password']",
        "Change password",
        PAGE,
    );
    b.wait_text("#pw-result", PAGE, |t| t.contains("old password is wrong"));
    retype(&b, "#pw-old", "the first password");
    retype(&b, "#pw-new", "the second password");
    b.click_button(
        "form[aria-label='Change password']",
        "Change password",
        PAGE,
    );
    b.wait_text("#pw-result", PAGE, |t| t.starts_with("Password changed"));
    b.screenshot("account-password-changed");
    b.click_button("header", "Sign out", PAGE);
    b.find("#signin-name", PAGE);

    b.sign_in(&site.base(), &name, "the first password");
    b.wait_text("#signin-error", PAGE, |t| {
        t.contains("wrong user name or password")
    });
    let p = b.find("#signin-password", PAGE);
    b.clear(&p);
    b.type_into(&p, "the second password\u{E007}");
    b.find("#fleet", PAGE);
    b.click_button("header", "Sign out", PAGE);

    // An admin resets it from the Admin page.
    b.sign_in(&site.base(), &admin, "the admin password");
    b.find("#fleet", PAGE);
    b.goto(&format!("{}/admin", site.base()));
    b.js(
        "window.prompt = () => 'the third password'; return 1",
        json!([]),
    );
    b.click_button(
        &format!("#users tr[data-user='{name}']"),
        "Reset password",
        PAGE,
    );
    b.wait_text(".toasts", PAGE, |t| t.contains("password: done"));
    b.click_button("header", "Sign out", PAGE);
    b.sign_in(&site.base(), &name, "the second password");
    b.wait_text("#signin-error", PAGE, |t| {
        t.contains("wrong user name or password")
    });
    let p = b.find("#signin-password", PAGE);
    b.clear(&p);
    b.type_into(&p, "the third password\u{E007}");
    b.find("#fleet", PAGE);
    let (who, _) = b.wait_text("#whoami", PAGE, |t| t.contains(&name));
    assert!(who.contains("viewer"), "{who}");
}

#[test]
fn every_page_renders_in_both_themes() {
    let site = Site::start();
    let mut cleanup = DockerCleanup::default();
    let name = site.container(&mut cleanup, "echo ready; sleep 600");
    let b = signed_in(&site, "admin");
    let pages = [
        ("fleet", "/".to_string(), "#fleet"),
        ("host", format!("/hosts/{}", site.host_id), "#containers"),
        (
            "container",
            format!("/hosts/{}/containers/{name}", site.host_id),
            "#logs",
        ),
        ("bulk", "/bulk".into(), "#bulk-list"),
        ("stacks", "/stacks".into(), "#stacks-none"),
        ("updates", "/updates".into(), "#updates"),
        ("enrol", "/enrol".into(), "#enrolment-tokens"),
        ("audit", "/audit".into(), "#audit"),
        ("admin", "/admin".into(), "#users"),
        (
            "account",
            "/account".into(),
            "form[aria-label='Change password']",
        ),
    ];
    for theme in ["light", "dark"] {
        b.js(
            "localStorage.setItem('theme', arguments[0]); return 1",
            json!([theme]),
        );
        for (page, path, ready) in &pages {
            b.goto(&format!("{}{path}", site.base()));
            b.find(ready, PAGE);
            assert_eq!(
                b.js("return document.documentElement.dataset.theme", json!([])),
                json!(theme)
            );
            // No page shows an error of its own loading.
            let errors = b.js(
                "return [...document.querySelectorAll('main [role=alert]')].map(e => e.textContent)",
                json!([]),
            );
            assert_eq!(errors, json!([]), "{page} in {theme}");
            b.screenshot(&format!("theme-{theme}-{page}"));
        }
    }
}
