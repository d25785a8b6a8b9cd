//! A loopback TCP proxy that breaks connections on demand ([`Proxy::set_mode`]: pass, refuse,
//! reset, hang), to test the worker's retries and timeouts without killing an emulator. It knows
//! nothing of HTTP, so it carries the Pub/Sub emulator's gRPC as well as storage's JSON API. It
//! runs on the tokio runtime that started it; dropping it closes every connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways.
    Pass,
    /// Accept, then close at once (FIN): "connection closed before message completed".
    Refuse,
    /// Accept, then reset (RST via SO_LINGER 0): "connection reset by peer".
    Reset,
    /// Accept and never answer; open connections freeze too, until the mode changes again.
    Hang,
    /// Open connections go silent for good, as a NAT or load balancer that forgot them: the
    /// server's side is closed, the client's is held with neither bytes nor a close; new
    /// connections pass.
    Blackhole,
}

pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accepted: Arc<AtomicU64>,
    _accept: AbortOnDropHandle<()>,
}

impl Proxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream`, starting in [`Mode::Pass`].
    pub async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(Mode::Pass);
        let accepted = Arc::new(AtomicU64::new(0));
        let serve = move |client: TcpStream| {
            let (rx, mode) = (rx.clone(), *rx.borrow());
            async move {
                let _ = client.set_nodelay(true);
                match mode {
                    Mode::Refuse => drop(client),
                    Mode::Reset => drop(client.set_zero_linger()),
                    Mode::Hang => hold_while_hanging(rx).await,
                    Mode::Pass | Mode::Blackhole => forward(client, upstream, mode, rx).await,
                }
            }
        };
        let _accept = crate::accept_each(listener, accepted.clone(), serve);
        Ok(Proxy { addr, mode, accepted, _accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, to use as `STORAGE_EMULATOR_HOST`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// New connections follow `mode` from now on. Refuse and Reset also close the open
    /// connections (FIN, RST) and Hang freezes them, so keep-alive connections cannot bypass
    /// the fault (closing them on Hang would turn a hang into an immediate error).
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Connections accepted so far, in any mode.
    pub fn accepted_connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Returns once the mode is no longer Hang, or the proxy is dropped.
async fn hold_while_hanging(mut rx: watch::Receiver<Mode>) {
    while *rx.borrow_and_update() == Mode::Hang {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Forwards one connection, accepted in mode `accepted`, until both sides are done or another
/// fault mode is set.
async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    accepted: Mode,
    mut rx: watch::Receiver<Mode>,
) {
    rx.borrow_and_update();
    // Upstream down: the client sees its connection closed, as behind a load balancer.
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let _ = server.set_nodelay(true);
    let fault = async {
        loop {
            if rx.changed().await.is_err() {
                return Mode::Refuse; // proxy dropped: just close
            }
            let mode = *rx.borrow_and_update();
            if mode != Mode::Pass && mode != accepted {
                return mode;
            }
        }
    };
    let fault = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => None,
        mode = fault => Some(mode),
    };
    match fault {
        Some(Mode::Reset) => drop(client.set_zero_linger()),
        Some(Mode::Blackhole) => {
            drop(server);
            std::future::pending::<()>().await;
        }
        Some(Mode::Hang) => {
            // Freeze: upstream goes away, the client keeps a socket that never answers.
            drop(server);
            hold_while_hanging(rx).await;
        }
        _ => {}
    }
}
