//! A loopback TCP proxy that caps how fast each connection receives, as Pub/Sub caps each
//! StreamingPull stream (a quota of a few MB/s), which no emulator does. It paces the bytes the
//! server sends back on each connection, knowing nothing of gRPC, so streams that share a
//! connection share its cap. It runs on the tokio runtime that started it; dropping it closes
//! every connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

/// How much a connection may send at once, as time at its rate: small enough that the cap holds
/// over any tenth of a second, large enough that the pacing is not all timer wake-ups.
const BURST: Duration = Duration::from_millis(5);

pub struct RateCap {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    _accept: AbortOnDropHandle<()>,
}

impl RateCap {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream`; what `upstream` sends back
    /// reaches the client at no more than `bytes_per_sec` per connection (at least 1).
    pub async fn start(upstream: SocketAddr, bytes_per_sec: u64) -> Result<RateCap> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let bytes_per_sec = bytes_per_sec.max(1);
        let connections = Arc::new(AtomicU64::new(0));
        let serve = move |client| forward(client, upstream, bytes_per_sec);
        let _accept = crate::accept_each(listener, connections.clone(), serve);
        Ok(RateCap { addr, connections, _accept })
    }

    /// `127.0.0.1:PORT`, the format of `PUBSUB_EMULATOR_HOST`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far: how many capped pipes the client had.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Forwards one connection: the client's bytes as they come, the server's at the cap.
async fn forward(client: TcpStream, upstream: SocketAddr, bytes_per_sec: u64) {
    // Upstream down: the client sees its connection closed, as behind a load balancer.
    let Ok(server) = TcpStream::connect(upstream).await else { return };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    };
    let down = async {
        let _ = paced_copy(&mut server_read, &mut client_write, bytes_per_sec).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Copies `from` to `to` at no more than `bytes_per_sec`: a token bucket that holds [`BURST`]
/// worth of bytes, kept as the time at which the bytes sent so far are paid for. Reading only
/// as fast as it writes, it passes the cap back to the server as TCP (and HTTP/2) back-pressure.
async fn paced_copy<R, W>(from: &mut R, to: &mut W, bytes_per_sec: u64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let burst_bytes = (bytes_per_sec as f64 * BURST.as_secs_f64()).max(1024.0) as usize;
    let mut buf = vec![0; burst_bytes];
    let mut paid_until = Instant::now();
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let now = Instant::now();
        paid_until = paid_until.max(now) + Duration::from_secs_f64(n as f64 / bytes_per_sec as f64);
        // Up to a burst may go ahead of its payment; the rest waits until it is paid for.
        if let Some(early) = paid_until.checked_sub(BURST).filter(|&at| at > now) {
            tokio::time::sleep_until(early).await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that sends 1 MB at once arrives through a 2 MB/s cap in about half a second,
    /// on each of two connections at the same time: never faster (a burst is 10 KB), and slower
    /// only on a loaded machine.
    #[tokio::test]
    async fn each_connection_receives_at_the_cap() -> Result<()> {
        const SIZE: usize = 1_000_000;
        let server = TcpListener::bind("127.0.0.1:0").await?;
        let upstream = server.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = server.accept().await {
                tokio::spawn(async move { socket.write_all(&vec![7; SIZE]).await });
            }
        });
        let cap = RateCap::start(upstream, 2_000_000).await?;
        let started = Instant::now();
        let receive = || async {
            let mut client = TcpStream::connect(cap.addr()).await?;
            let mut got = Vec::new();
            client.read_to_end(&mut got).await?;
            anyhow::Ok((got.len(), started.elapsed()))
        };
        let (a, b) = tokio::try_join!(receive(), receive())?;
        for (bytes, took) in [a, b] {
            assert_eq!(bytes, SIZE);
            let rate = bytes as f64 / took.as_secs_f64();
            assert!((1_000_000.0..2_050_000.0).contains(&rate), "{rate:.0} B/s in {took:?}");
        }
        assert_eq!(cap.connections(), 2);
        Ok(())
    }
}
