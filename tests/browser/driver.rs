//! A small W3C WebDriver client for Debian's `chromedriver` driving headless `chromium`:
//! plain JSON over HTTP to a driver on a free local port, nothing else.

use crate::netns::Netns;
use base64::Engine;
use docker_ctl_tests::{api_call, wait_for};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// chromedriver's port inside the browser's own network namespace.
const DRIVER_PORT: u16 = 9515;

/// One browser: its driver process and its session, both ended on drop.
pub struct Browser {
    driver: Child,
    netns: Netns,
    base: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless chromium window of 1280×800. Panics with what is
    /// missing when Debian's chromium or chromium-driver is not installed.
    pub fn start() -> Browser {
        for p in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(p).exists(),
                "{p} is missing: install Debian's chromium and chromium-driver (scripts/services.sh does)"
            );
        }
        // chromedriver (and the chromium it starts) in a network namespace of its own, so
        // dockerd's interface changes never abort the page's requests (see `netns`).
        let driver = Command::new("unshare")
            .args(["--net", "--", "sh", "-c"])
            .arg(format!(
                "ip link set lo up && exec {CHROMEDRIVER} --port={DRIVER_PORT}"
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver in a network namespace of its own (unshare)");
        let netns = Netns::of(driver.id());
        let driver_url = format!("http://127.0.0.1:{}", netns.relay_in(DRIVER_PORT));
        let status = format!("{driver_url}/status");
        wait_for("chromedriver", Duration::from_secs(30), || {
            // Connection refused until the driver listens.
            let mut r = ureq::get(&status).call().ok()?;
            let v: Value = serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
            (v["value"]["ready"] == json!(true)).then_some(())
        });
        let profile = tempfile::tempdir().expect("tempdir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,800", "--no-first-run", "--disable-extensions",
                         format!("--user-data-dir={}", profile.path().display())],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let (st, v) = api_call(&driver_url, None, "POST", "/session", Some(caps));
        assert_eq!(st, 200, "new WebDriver session: {v}");
        let id = v["value"]["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        Browser {
            driver,
            netns,
            base: format!("{driver_url}/session/{id}"),
            _profile: profile,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (st, v) = api_call(&self.base, None, method, path, body);
        assert_eq!(st, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    /// Opens `url`: an `http://127.0.0.1:PORT/...` (or `localhost`) address, whose port is relayed from the
    /// browser's namespace to the host's loopback.
    pub fn goto(&self, url: &str) {
        self.netns.relay_out(port_of(url));
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub fn js(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// Runs an async script: it calls `arguments[arguments.length - 1]` with its result.
    pub fn js_async(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// The first element matching `css`, if any.
    pub fn try_find(&self, css: &str) -> Option<String> {
        let (st, v) = api_call(
            &self.base,
            None,
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        (st == 200).then(|| v["value"][ELEMENT].as_str().map(str::to_string))?
    }

    /// Waits (up to `timeout`) for an element matching `css`.
    pub fn find(&self, css: &str, timeout: Duration) -> String {
        self.wait(&format!("element {css}"), timeout, || self.try_find(css))
    }

    /// Polls `cond` like `wait_for`; a timeout panics with what the page showed and logged, so a
    /// failure in CI says whether the page never loaded, errored, or showed something else.
    pub fn wait<T>(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = cond() {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n--- page ---\n{}",
                    self.page_state()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The page's address, load state, visible text and the browser's console log.
    fn page_state(&self) -> String {
        let page = api_call(
            &self.base,
            None,
            "POST",
            "/execute/sync",
            Some(
                json!({"script": "return [location.href, document.readyState, \
                (document.body ? document.body.innerText : '(no body)').slice(0, 2000)].join('\\n')",
                "args": []}),
            ),
        );
        let log = api_call(
            &self.base,
            None,
            "POST",
            "/se/log",
            Some(json!({"type": "browser"})),
        );
        let page = page.1["value"]
            .as_str()
            .map_or_else(|| page.1.to_string(), str::to_string);
        format!("{page}\n--- console ---\n{}", log.1["value"])
    }

    pub fn type_into(&self, el: &str, text: &str) {
        self.call(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        );
    }

    pub fn clear(&self, el: &str) {
        self.call("POST", &format!("/element/{el}/clear"), Some(json!({})));
    }

    /// The text of the first element matching `css` (empty when there is none).
    pub fn text_of(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            json!([css]),
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Waits until the text of `css` satisfies `ok`; returns it and how long it took.
    pub fn wait_text(
        &self,
        css: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> (String, Duration) {
        let t0 = Instant::now();
        let t = self.wait(&format!("text of {css}"), timeout, || {
            let t = self.text_of(css);
            ok(&t).then_some(t)
        });
        (t, t0.elapsed())
    }

    /// Clicks the first `button` under `scope` whose text is `label`.
    pub fn click_button(&self, scope: &str, label: &str, timeout: Duration) {
        let script = "const b = [...document.querySelectorAll(arguments[0] + ' button')]\
            .find(b => b.textContent.trim() === arguments[1]); if (!b) return false; b.click(); return true;";
        self.wait(&format!("button {label:?} in {scope}"), timeout, || {
            self.js(script, json!([scope, label]))
                .as_bool()
                .filter(|b| *b)
        });
    }

    /// Saves a screenshot as `target/browser-screenshots/NAME.png` (the test's artifact).
    pub fn screenshot(&self, name: &str) {
        let b64 = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("screenshot base64");
        let dir = docker_ctl_tests::repo_root().join("target/browser-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Signs in through the page's form as `name`.
    pub fn sign_in(&self, base: &str, name: &str, password: &str) {
        self.goto(&format!("{base}/"));
        let n = self.find("#signin-name", Duration::from_secs(20));
        self.type_into(&n, name);
        let p = self.find("#signin-password", Duration::from_secs(5));
        self.type_into(&p, password);
        self.type_into(&p, "\u{E007}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = api_call(&self.base, None, "DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The port of an `http://127.0.0.1:PORT/...` or `http://localhost:PORT/...` address.
fn port_of(url: &str) -> u16 {
    url.strip_prefix("http://127.0.0.1:")
        .or_else(|| url.strip_prefix("http://localhost:"))
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            panic!("the browser opens loopback http addresses with a port only: {url}")
        })
}
