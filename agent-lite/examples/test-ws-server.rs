//! A minimal control server for measuring and trying the agent by hand (used by
//! scripts/agent-budget.sh): accepts agents on a port-0 loopback listener, authenticates
//! them, and prints one line per event. The first line printed is the server URL.
//!
//!   cargo run -p agent-lite --example test-ws-server -- [heartbeat_seconds]

#[path = "../tests/common/ws_server.rs"]
mod ws_server;

use protocol::Message;
use std::io::Write;
use std::time::Duration;
use ws_server::{Frame, TestServer};

fn main() {
    let heartbeat: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let server = TestServer::start();
    println!("{}", server.url());
    let _ = std::io::stdout().flush();
    loop {
        let Some(mut conn) = server.try_next_conn(Duration::from_secs(3600)) else {
            continue;
        };
        let auth = conn.accept_auth(heartbeat);
        println!("authenticated {} {:?}", auth.agent_id, auth.capabilities);
        let _ = std::io::stdout().flush();
        loop {
            match conn.next_frame(Duration::from_secs(1)) {
                Some(Frame::Msg(env)) => {
                    if let Message::Heartbeat(hb) = &env.message {
                        println!(
                            "heartbeat rss={} sent={} received={}",
                            hb.agent_rss_bytes.unwrap_or(0),
                            hb.bytes_sent.unwrap_or(0),
                            hb.bytes_received.unwrap_or(0)
                        );
                    } else {
                        println!("{}", env.message.message_type().as_str());
                    }
                    let _ = std::io::stdout().flush();
                }
                Some(Frame::Close(_)) | Some(Frame::Gone) => {
                    println!("closed");
                    break;
                }
                None => {}
            }
        }
    }
}
