//! `docker-ctl-loadgen hop unix:PATH|tcp:ADDR`: a relay process that does no work, for the
//! latency mode's `two_hops` path.
//!
//! It listens on `127.0.0.1:0`, prints `listening ADDR` on stdout, and copies each accepted
//! connection both ways to its own connection to the target, with one blocking thread per
//! direction and `TCP_NODELAY` on its TCP sockets. Two of them in a row have the server's and
//! the agent's place (two more processes on the path, each woken once per direction), so
//! what they add is the floor any two-process tunnel pays on the machine, before any work.
//! It runs until it is killed (the latency mode kills it).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;

/// The largest piece copied per read.
const PIECE: usize = 64 * 1024;
/// Connections open at once: a benchmark uses one or two; this bounds a misuse.
const MAX_CONNECTIONS: usize = 64;

enum Target {
    Unix(String),
    Tcp(String),
}

/// One connected socket of either kind, cloned for the second direction.
enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    fn try_clone(&self) -> std::io::Result<Sock> {
        Ok(match self {
            Sock::Unix(s) => Sock::Unix(s.try_clone()?),
            Sock::Tcp(s) => Sock::Tcp(s.try_clone()?),
        })
    }

    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(buf),
            Sock::Tcp(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Sock::Unix(s) => s.write_all(buf),
            Sock::Tcp(s) => s.write_all(buf),
        }
    }

    fn shutdown_write(&self) {
        let _ = match self {
            Sock::Unix(s) => s.shutdown(Shutdown::Write),
            Sock::Tcp(s) => s.shutdown(Shutdown::Write),
        };
    }
}

fn connect(target: &Target) -> std::io::Result<Sock> {
    Ok(match target {
        Target::Unix(p) => Sock::Unix(UnixStream::connect(p)?),
        Target::Tcp(a) => {
            let s = TcpStream::connect(a)?;
            s.set_nodelay(true)?;
            Sock::Tcp(s)
        }
    })
}

/// Copies `from` to `to` until `from` ends, then ends `to`'s writing side.
fn pump(mut from: Sock, mut to: Sock) {
    let mut buf = vec![0u8; PIECE];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    to.shutdown_write();
}

fn serve(client: TcpStream, target: &Target) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let up = connect(target)?;
    let (c2, u2) = (Sock::Tcp(client.try_clone()?), up.try_clone()?);
    std::thread::spawn(move || pump(u2, c2));
    pump(Sock::Tcp(client), up);
    Ok(())
}

pub(crate) fn run(target: &str) -> ! {
    let target = match target.split_once(':') {
        Some(("unix", p)) => Target::Unix(p.to_string()),
        Some(("tcp", a)) => Target::Tcp(a.to_string()),
        _ => crate::die("hop: the target is unix:PATH or tcp:ADDR"),
    };
    let target = std::sync::Arc::new(target);
    let listener =
        TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| crate::die(&format!("hop: {e}")));
    let addr = listener.local_addr().expect("local addr");
    println!("listening {addr}");
    let _ = std::io::stdout().flush();
    let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for client in listener.incoming().flatten() {
        use std::sync::atomic::Ordering::SeqCst;
        if open.fetch_add(1, SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, SeqCst);
            continue;
        }
        let (target, open) = (target.clone(), open.clone());
        std::thread::spawn(move || {
            if let Err(e) = serve(client, &target) {
                eprintln!("hop: {e}");
            }
            open.fetch_sub(1, SeqCst);
        });
    }
    std::process::exit(0)
}
