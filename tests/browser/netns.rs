//! Chromium in a network namespace of its own.
//!
//! dockerd adds and removes interfaces (a veth per container) whenever a container starts or
//! stops, and Chromium takes every such change for the network changing: it aborts the requests
//! it has in flight with `net::ERR_NETWORK_CHANGED`, loopback ones included. A page whose module
//! scripts were aborted never renders, so browser tests running beside tests that start
//! containers failed at random. In a namespace of its own, chromium sees only its own loopback.
//! Relays carry the test's WebDriver calls in ([`Netns::relay_in`]) and the page's connections
//! out to the same port on the host's loopback ([`Netns::relay_out`]), so every address and
//! origin stays what the test wrote.
//!
//! A thread switches namespace with `setns(2)`; a socket stays in the namespace it was made in,
//! so a relay makes its socket on one side and connects from the other.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// The namespace of a process (chromedriver, and the chromium it starts), with the relays into
/// and out of it. The relays stop when it is dropped.
pub struct Netns {
    inside: Arc<File>,
    host: Arc<File>,
    relayed: Mutex<HashSet<u16>>,
    stop: Arc<AtomicBool>,
}

impl Netns {
    /// The namespace of `pid`, once the process has left ours (it runs `unshare --net`).
    pub fn of(pid: u32) -> Netns {
        let ours = std::fs::read_link("/proc/self/ns/net").expect("our netns");
        let path = format!("/proc/{pid}/ns/net");
        docker_ctl_tests::wait_for(
            "the browser's network namespace",
            Duration::from_secs(10),
            || (std::fs::read_link(&path).ok()? != ours).then_some(()),
        );
        Netns {
            inside: Arc::new(File::open(&path).expect("open the browser's netns")),
            host: Arc::new(File::open("/proc/self/ns/net").expect("open our netns")),
            relayed: Mutex::new(HashSet::new()),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A port on the host's loopback that leads to `port` on the namespace's loopback.
    pub fn relay_in(&self, port: u16) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a relay");
        let local = listener.local_addr().expect("relay address").port();
        let (inside, host) = (self.inside.clone(), self.host.clone());
        self.accept_loop(listener, move || {
            enter(&inside)?;
            let s = TcpStream::connect(("127.0.0.1", port));
            enter(&host)?;
            s
        });
        local
    }

    /// Lets the namespace reach `port` on the host's loopback at the same address.
    pub fn relay_out(&self, port: u16) {
        if !self.relayed.lock().expect("relays").insert(port) {
            return;
        }
        let (inside, host) = (self.inside.clone(), self.host.clone());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let bound = enter(&inside).and_then(|()| {
                let l = TcpListener::bind(("127.0.0.1", port));
                enter(&host)?;
                l
            });
            let _ = tx.send(bound);
        });
        let listener = rx
            .recv()
            .expect("relay thread")
            .unwrap_or_else(|e| panic!("listen on port {port} in the browser's namespace: {e}"));
        self.accept_loop(listener, move || TcpStream::connect(("127.0.0.1", port)));
    }

    /// Accepts on `listener` until dropped, joining each connection to what `connect` opens.
    fn accept_loop(
        &self,
        listener: TcpListener,
        connect: impl Fn() -> io::Result<TcpStream> + Send + 'static,
    ) {
        listener.set_nonblocking(true).expect("nonblocking relay");
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((a, _)) => {
                        if let Ok(b) = connect() {
                            join(a, b);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Moves the calling thread into the namespace `ns`.
fn enter(ns: &File) -> io::Result<()> {
    use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};
    move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network)).map_err(io::Error::from)
}

/// Copies both ways between `a` and `b` until each side has ended.
fn join(a: TcpStream, b: TcpStream) {
    let _ = a.set_nonblocking(false);
    for s in [&a, &b] {
        let _ = s.set_nodelay(true);
    }
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    std::thread::spawn(move || copy(a, b2));
    std::thread::spawn(move || copy(b, a2));
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
