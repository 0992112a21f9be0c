//! Prometheus metrics in the text exposition format, without a metrics library.
//!
//! Owns: the counters, gauges and histograms the seed asks for (agents connected, command
//! latency by operation and outcome, reconnections, commands by outcome, WebSocket messages
//! and bytes in and out, agent RTT) and rendering them for `GET /metrics`.
//! Must not: use unbounded label values (labels are operation names and outcome codes).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
const RTT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, buckets: &[f64], v: f64) {
        if self.counts.len() != buckets.len() {
            self.counts = vec![0; buckets.len()];
        }
        for (i, b) in buckets.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str, buckets: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in buckets.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let wrap = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{wrap} {}", self.sum);
        let _ = writeln!(out, "{name}_count{wrap} {}", self.count);
    }
}

/// Direction of WebSocket traffic, from the server's point of view.
#[derive(Debug, Clone, Copy)]
pub enum Dir {
    In,
    Out,
}

#[derive(Debug, Default)]
pub struct Metrics {
    agents_connected: AtomicI64,
    reconnections: AtomicU64,
    auth_failures: AtomicU64,
    auth_failures_unrecorded: AtomicU64,
    handshakes_deferred: AtomicU64,
    ws_messages_in: AtomicU64,
    ws_messages_out: AtomicU64,
    ws_bytes_in: AtomicU64,
    ws_bytes_out: AtomicU64,
    docker_events: AtomicU64,
    /// (operation, outcome) -> latency histogram; its count is the commands-by-outcome counter.
    commands: Mutex<BTreeMap<(String, String), Histogram>>,
    rtt: Mutex<Histogram>,
    /// (action, outcome) -> Docker API passthrough requests.
    passthrough: Mutex<BTreeMap<(String, String), u64>>,
    passthrough_bytes_up: AtomicU64,
    passthrough_bytes_down: AtomicU64,
    passthrough_open: AtomicI64,
}

/// Keeps the open-passthrough gauge up while alive.
#[derive(Debug)]
pub struct OpenPassthrough(std::sync::Arc<Metrics>);

impl Drop for OpenPassthrough {
    fn drop(&mut self) {
        self.0.passthrough_open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn agent_connected(&self, reconnection: bool) {
        self.agents_connected.fetch_add(1, Ordering::Relaxed);
        if reconnection {
            self.reconnections.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn agent_disconnected(&self) {
        self.agents_connected.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn agents_connected(&self) -> i64 {
        self.agents_connected.load(Ordering::Relaxed)
    }

    pub fn auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// An agent handshake the server could not serve yet (no turn in time, or the database
    /// did not answer): closed with 1013 for the agent to retry after its backoff.
    pub fn handshake_deferred(&self) {
        self.handshakes_deferred.fetch_add(1, Ordering::Relaxed);
    }

    /// A refused agent handshake that was counted but not written to `agent_events` and the
    /// audit log (sampled out, or refused before any work).
    pub fn auth_failure_unrecorded(&self) {
        self.auth_failures_unrecorded
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn docker_event(&self) {
        self.docker_events.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ws(&self, dir: Dir, bytes: usize) {
        let (m, b) = match dir {
            Dir::In => (&self.ws_messages_in, &self.ws_bytes_in),
            Dir::Out => (&self.ws_messages_out, &self.ws_bytes_out),
        };
        m.fetch_add(1, Ordering::Relaxed);
        b.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A finished command. `outcome` is `success` or an error code.
    pub fn command(&self, operation: &str, outcome: &str, took: Duration) {
        let mut m = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((operation.to_string(), outcome.to_string()))
            .or_default()
            .observe(LATENCY_BUCKETS, took.as_secs_f64());
    }

    /// A finished (or refused) Docker API passthrough request. `action` is a route action of
    /// `protocol::passthrough` (or `unknown`); `outcome` is `success`, `client_error`,
    /// `server_error`, `denied`, `refused` or an error code.
    pub fn passthrough(&self, action: &str, outcome: &str) {
        let mut m = self.passthrough.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((action.to_string(), outcome.to_string()))
            .or_default() += 1;
    }

    /// Passthrough body bytes: `up` from the client to the daemon, else down.
    pub fn passthrough_bytes(&self, up: bool, bytes: u64) {
        let c = if up {
            &self.passthrough_bytes_up
        } else {
            &self.passthrough_bytes_down
        };
        c.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts an open passthrough exchange until the guard is dropped.
    pub fn passthrough_opened(self: &std::sync::Arc<Self>) -> OpenPassthrough {
        self.passthrough_open.fetch_add(1, Ordering::Relaxed);
        OpenPassthrough(self.clone())
    }

    pub fn rtt(&self, rtt: Duration) {
        self.rtt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(RTT_BUCKETS, rtt.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_agents(&mut out);
        self.render_commands(&mut out);
        self.render_passthrough(&mut out);
        out
    }

    /// Agents, their handshakes, WebSocket traffic, Docker events and RTT.
    fn render_agents(&self, out: &mut String) {
        gauge(
            out,
            "docker_ctl_agents_connected",
            "Agents with a live authenticated session.",
            self.agents_connected(),
        );
        counter(
            out,
            "docker_ctl_agent_reconnections_total",
            "Agent sessions opened by an agent that had connected before.",
            self.reconnections.load(Ordering::Relaxed),
        );
        counter(
            out,
            "docker_ctl_agent_auth_failures_total",
            "Refused agent authentications.",
            self.auth_failures.load(Ordering::Relaxed),
        );
        counter(
            out,
            "docker_ctl_agent_auth_failures_unrecorded_total",
            "Refused agent authentications counted here only: sampled out of agent_events and the audit log, or refused before any work.",
            self.auth_failures_unrecorded.load(Ordering::Relaxed),
        );
        counter(
            out,
            "docker_ctl_agent_handshakes_deferred_total",
            "Agent handshakes closed with 1013 (try again later): no turn within the wait, or the database did not answer.",
            self.handshakes_deferred.load(Ordering::Relaxed),
        );
        counter(
            out,
            "docker_ctl_docker_events_total",
            "Docker events received from agents.",
            self.docker_events.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP docker_ctl_ws_messages_total Agent WebSocket messages.\n# TYPE docker_ctl_ws_messages_total counter");
        let _ = writeln!(
            out,
            "docker_ctl_ws_messages_total{{direction=\"in\"}} {}",
            self.ws_messages_in.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "docker_ctl_ws_messages_total{{direction=\"out\"}} {}",
            self.ws_messages_out.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP docker_ctl_ws_bytes_total Agent WebSocket payload bytes.\n# TYPE docker_ctl_ws_bytes_total counter");
        let _ = writeln!(
            out,
            "docker_ctl_ws_bytes_total{{direction=\"in\"}} {}",
            self.ws_bytes_in.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "docker_ctl_ws_bytes_total{{direction=\"out\"}} {}",
            self.ws_bytes_out.load(Ordering::Relaxed)
        );
    }

    /// Commands by operation and outcome, their latency, and the agents' RTT.
    fn render_commands(&self, out: &mut String) {
        let cmds = self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let _ = writeln!(out, "# HELP docker_ctl_commands_total Commands by operation and outcome.\n# TYPE docker_ctl_commands_total counter");
        for ((op, outcome), h) in &cmds {
            let _ = writeln!(
                out,
                "docker_ctl_commands_total{{operation=\"{}\",outcome=\"{}\"}} {}",
                esc(op),
                esc(outcome),
                h.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP docker_ctl_command_duration_seconds Command latency by operation and outcome.\n# TYPE docker_ctl_command_duration_seconds histogram"
        );
        for ((op, outcome), h) in &cmds {
            let labels = format!("operation=\"{}\",outcome=\"{}\"", esc(op), esc(outcome));
            h.render(
                out,
                "docker_ctl_command_duration_seconds",
                &labels,
                LATENCY_BUCKETS,
            );
        }
        let _ = writeln!(
            out,
            "# HELP docker_ctl_agent_rtt_seconds Agent round-trip time from WebSocket ping/pong.\n# TYPE docker_ctl_agent_rtt_seconds histogram"
        );
        let rtt = self.rtt.lock().unwrap_or_else(|p| p.into_inner()).clone();
        rtt.render(out, "docker_ctl_agent_rtt_seconds", "", RTT_BUCKETS);
    }

    /// Docker API passthrough requests, bytes and open exchanges.
    fn render_passthrough(&self, out: &mut String) {
        let pt = self
            .passthrough
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let _ = writeln!(out, "# HELP docker_ctl_passthrough_requests_total Docker API passthrough requests by action and outcome.\n# TYPE docker_ctl_passthrough_requests_total counter");
        for ((action, outcome), n) in &pt {
            let _ = writeln!(
                out,
                "docker_ctl_passthrough_requests_total{{action=\"{}\",outcome=\"{}\"}} {n}",
                esc(action),
                esc(outcome)
            );
        }
        let _ = writeln!(out, "# HELP docker_ctl_passthrough_bytes_total Docker API passthrough body bytes (up: client to daemon).\n# TYPE docker_ctl_passthrough_bytes_total counter");
        let _ = writeln!(
            out,
            "docker_ctl_passthrough_bytes_total{{direction=\"up\"}} {}",
            self.passthrough_bytes_up.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "docker_ctl_passthrough_bytes_total{{direction=\"down\"}} {}",
            self.passthrough_bytes_down.load(Ordering::Relaxed)
        );
        gauge(
            out,
            "docker_ctl_passthrough_open",
            "Docker API passthrough exchanges in progress (streams and hijacked connections).",
            self.passthrough_open.load(Ordering::Relaxed),
        );
    }
}

fn gauge(out: &mut String, name: &str, help: &str, v: i64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histograms_and_counters() {
        let m = Metrics::default();
        m.command("container.list", "success", Duration::from_millis(20));
        m.command("container.list", "agent_offline", Duration::from_millis(1));
        m.agent_connected(true);
        m.ws(Dir::In, 10);
        m.rtt(Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("docker_ctl_agents_connected 1"));
        assert!(text.contains("docker_ctl_agent_reconnections_total 1"));
        assert!(text.contains(
            "docker_ctl_commands_total{operation=\"container.list\",outcome=\"success\"} 1"
        ));
        assert!(text.contains(
            "docker_ctl_command_duration_seconds_bucket{operation=\"container.list\",outcome=\"success\",le=\"0.025\"} 1"
        ));
        assert!(text.contains("docker_ctl_ws_bytes_total{direction=\"in\"} 10"));
        assert!(text.contains("docker_ctl_agent_rtt_seconds_count 1"));
    }
}
