//! A loopback TCP proxy that injects network faults between a client and a server: delay,
//! stall (hold every byte, deliver when healed — a partition TCP survives), cut (close every
//! connection and refuse new ones), and lose-replies (deliver requests, drop the answers and
//! cut: the client cannot know whether its request ran). No root or firewall needed.
//!
//! Threads and blocking sockets, so it works under any (or no) async runtime.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// What the proxy does to traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Forward every chunk after this delay.
    Delay(Duration),
    /// Hold every byte (both directions) until the fault changes.
    Stall,
    /// Close every connection; accept new ones only to close them.
    Cut,
    /// Forward requests; drop the first reply bytes of each connection and close it.
    LoseReplies,
}

struct Shared {
    target: SocketAddr,
    fault: Mutex<Fault>,
    changed: Condvar,
    connections: Mutex<Vec<TcpStream>>,
    stopping: AtomicBool,
}

/// A running proxy; stops (and closes its connections) on drop.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .finish()
    }
}

impl Proxy {
    /// Starts a proxy on a free port of 127.0.0.1 forwarding to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            target,
            fault: Mutex::new(Fault::Pass),
            changed: Condvar::new(),
            connections: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        thread::spawn(move || accept_loop(listener, accepting));
        Proxy { addr, shared }
    }

    /// The proxy's address: give this to the client.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        *lock(&self.shared.fault)
    }

    /// Switches to `fault`. [`Fault::Cut`] closes every open connection at once.
    pub fn set(&self, fault: Fault) {
        *lock(&self.shared.fault) = fault;
        self.shared.changed.notify_all();
        if fault == Fault::Cut {
            self.close_all();
        }
    }

    /// Closes every open connection (both directions); new ones are served per the fault.
    pub fn close_all(&self) {
        for stream in lock(&self.shared.connections).drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.set(Fault::Cut);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if *lock(&shared.fault) == Fault::Cut {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(shared.target) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        {
            let mut connections = lock(&shared.connections);
            for stream in [&client, &server] {
                if let Ok(clone) = stream.try_clone() {
                    connections.push(clone);
                }
            }
        }
        let up = shared.clone();
        thread::spawn(move || pump(client, server, &up, false));
        let down = shared.clone();
        thread::spawn(move || pump(server2, client2, &down, true));
    }
}

/// Copies `from` to `to` under the current fault; `reply` marks the server-to-client side.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, reply: bool) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Wait out a stall; act on the fault in force once it ends.
        let fault = {
            let mut fault = lock(&shared.fault);
            while *fault == Fault::Stall {
                fault = shared
                    .changed
                    .wait(fault)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            *fault
        };
        match fault {
            Fault::Pass | Fault::Stall => {}
            Fault::Delay(delay) => thread::sleep(delay),
            Fault::Cut => break,
            Fault::LoseReplies if reply => break,
            Fault::LoseReplies => {}
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
