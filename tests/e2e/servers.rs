//! An agent that knows several servers (`server.url` as a list): it tries them in order,
//! prefers the first it can reach, and moves to the next when the one it uses goes away.
//! The "servers" are one real server reached through three addresses: a port nobody listens
//! on, a TCP relay the test can cut, and the server itself.

use docker_ctl_tests::*;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[test]
fn an_agent_with_several_servers_uses_the_first_it_reaches_and_moves_on_when_it_goes() {
    require_docker();
    let server = Server::start(Db::Sqlite);
    let (host_id, agent_id, token) = server.enrol(&unique("servers"));
    let dead = format!("ws://127.0.0.1:{}", free_port());
    let relay = Relay::start(server.ws().trim_start_matches("ws://"));
    let via_relay = format!("ws://127.0.0.1:{}", relay.port);
    // The comma-separated form `--server` and `DOCKER_CTL_SERVER` take (the config file
    // names `${DOCKER_CTL_E2E_SERVER}`; a YAML list is covered by the config's unit tests).
    let list = format!("{dead}, {via_relay},{}", server.ws());
    let agent = Agent::start(&list, &agent_id, &token);

    // The first server cannot be reached: the agent goes on to the second, the relay.
    server.wait_status(&host_id, "online", Duration::from_secs(20));
    wait_for("the agent's tries", Duration::from_secs(5), || {
        agent
            .output
            .contains(&format!("cannot connect to {dead}/ws/agents/"))
            .then_some(())
    });
    assert_eq!(
        relay.accepted.load(Ordering::SeqCst),
        1,
        "{}",
        agent.output.text()
    );
    assert!(
        !agent
            .output
            .contains(&format!("connecting to {}/ws/agents/", server.ws())),
        "the third server is not tried while the second answers:\n{}",
        agent.output.text()
    );
    server.op_ok(&host_id, "container.list", json!({"all": true}));

    // The second goes away: the agent is back through the third within seconds, and
    // commands work there.
    let t0 = Instant::now();
    relay.cut();
    wait_for(
        "the agent on the third server",
        Duration::from_secs(10),
        || {
            let log = agent.output.text();
            (log.contains(&format!("connecting to {}/ws/agents/", server.ws()))
                && log.matches("authenticated (session").count() == 2
                && server.host_status(&host_id) == "online")
                .then_some(())
        },
    );
    let back = t0.elapsed();
    server.op_ok(&host_id, "container.list", json!({"all": true}));
    eprintln!("back on the third server {back:?} after the second went away");
}
