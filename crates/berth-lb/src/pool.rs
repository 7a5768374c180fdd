//! Connections to targets: dialing one (with a socket that counts the response bytes
//! read, so a failed request can tell whether any of its response arrived), the body
//! type sent on them, and the keep-alive pool of idle ones per target.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// At most this many idle connections are kept per target.
pub(crate) const MAX_IDLE_PER_TARGET: usize = 256;
/// A keep-alive connection to a target: the request handle, and how many response
/// bytes it has read so far (to tell whether a failed request got any of its response).
pub(crate) struct TargetConn {
    pub(crate) sender: SendRequest<ReqBody>,
    pub(crate) reads: Arc<AtomicU64>,
}

impl TargetConn {
    pub(crate) fn response_bytes(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

pub(crate) struct IdleConn {
    pub(crate) conn: TargetConn,
    pub(crate) since: Instant,
}

/// Idle keep-alive connections to one target (LIFO: the warmest first).
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<Vec<IdleConn>>,
}

impl Pool {
    /// The warmest ready connection or, when none is ready, the warmest one that is
    /// not ready yet (checked in the moment its response ended, its connection task
    /// may not have marked it ready yet). Connections that are not ready stay pooled;
    /// only closed and expired ones are dropped.
    pub(crate) fn checkout(&self, idle_timeout: Duration) -> Option<IdleConn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut not_ready: Option<usize> = None;
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let c = &idle[i];
            if c.conn.sender.is_closed() || c.since.elapsed() >= idle_timeout {
                idle.remove(i);
                if let Some(n) = not_ready.as_mut() {
                    // Above `i`: shifted down by the removal.
                    *n -= 1;
                }
                continue;
            }
            if c.conn.sender.is_ready() {
                return Some(idle.remove(i));
            }
            not_ready.get_or_insert(i);
        }
        not_ready.map(|n| idle.remove(n))
    }

    pub(crate) fn checkin(&self, conn: TargetConn) {
        self.restore(IdleConn {
            conn,
            since: Instant::now(),
        });
    }

    /// Puts a connection back (unless closed or the pool is full), keeping its `since`.
    pub(crate) fn restore(&self, c: IdleConn) {
        if c.conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_PER_TARGET {
            idle.push(c);
        }
    }

    /// Drops connections idle for longer than `idle_timeout` (closing them).
    pub(crate) fn prune(&self, idle_timeout: Duration) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|c| !c.conn.sender.is_closed() && c.since.elapsed() < idle_timeout);
    }

    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[derive(Debug)]
pub(crate) enum ConnectError {
    Timeout,
    Failed,
}

/// A target socket counting the bytes read from it.
pub(crate) struct TargetIo {
    inner: TcpStream,
    reads: Arc<AtomicU64>,
}

impl AsyncRead for TargetIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let p = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.reads.fetch_add(n as u64, Ordering::Relaxed);
        }
        p
    }
}

impl AsyncWrite for TargetIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TargetConn, ConnectError> {
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout),
        Ok(Err(_)) => return Err(ConnectError::Failed),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    let reads = Arc::new(AtomicU64::new(0));
    let io = TargetIo {
        inner: tcp,
        reads: reads.clone(),
    };
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|_| ConnectError::Failed)?;
    tokio::spawn(async move {
        // Ends when the target closes, on an error, or once every `SendRequest`
        // handle (pooled or in use) is dropped.
        let _ = conn.with_upgrades().await;
    });
    Ok(TargetConn { sender, reads })
}

/// The body of a request sent to a target: the client's, or none (a replayed
/// request whose client body was empty).
pub(crate) enum ReqBody {
    Client(Incoming),
    Empty,
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Client(b) => Pin::new(b).poll_frame(cx),
            ReqBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Client(b) => b.is_end_stream(),
            ReqBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Client(b) => b.size_hint(),
            ReqBody::Empty => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A client connection to `addr` whose connection task is `conn` (not spawned:
    /// until it runs, the sender is neither ready nor closed).
    async fn sender(
        addr: SocketAddr,
    ) -> (
        TargetConn,
        hyper::client::conn::http1::Connection<TokioIo<TcpStream>, ReqBody>,
    ) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        let reads = Arc::new(AtomicU64::new(0));
        (TargetConn { sender, reads }, conn)
    }

    #[tokio::test]
    async fn pool_keeps_connections_that_are_not_ready_yet() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _accept = tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let idle = Duration::from_secs(60);
        let pool = Pool::default();
        let mut conns = vec![];
        for _ in 0..3 {
            let (s, c) = sender(addr).await;
            assert!(!s.sender.is_ready() && !s.sender.is_closed());
            pool.checkin(s);
            conns.push(c);
        }
        // None ready: one is handed out, the other two stay pooled.
        let c = pool.checkout(idle).expect("a pooled connection");
        assert!(!c.conn.sender.is_ready());
        assert_eq!(pool.idle_count(), 2);
        pool.restore(c);
        assert_eq!(pool.idle_count(), 3);

        // A ready one below not-ready ones: it is handed out, the others stay.
        let (mut ready, c) = sender(addr).await;
        tokio::spawn(c);
        ready.sender.ready().await.unwrap();
        {
            let mut v = pool.idle.lock().unwrap();
            v.insert(
                0,
                IdleConn {
                    conn: ready,
                    since: Instant::now(),
                },
            );
        }
        assert_eq!(pool.idle_count(), 4);
        let c = pool.checkout(idle).expect("a pooled connection");
        assert!(c.conn.sender.is_ready());
        assert_eq!(pool.idle_count(), 3);
        drop(c);

        // Closed ones are dropped; the not-ready ones keep their place.
        let (closed, c) = sender(addr).await;
        drop(c);
        assert!(closed.sender.is_closed());
        pool.idle.lock().unwrap().insert(
            1,
            IdleConn {
                conn: closed,
                since: Instant::now(),
            },
        );
        let (closed, c) = sender(addr).await;
        drop(c);
        pool.idle.lock().unwrap().push(IdleConn {
            conn: closed,
            since: Instant::now(),
        });
        assert_eq!(pool.idle_count(), 5);
        let c = pool.checkout(idle).expect("a pooled connection");
        assert!(!c.conn.sender.is_closed());
        assert_eq!(
            pool.idle_count(),
            2,
            "both closed ones dropped, one handed out"
        );
        drop(c);
        let a = pool.checkout(idle).unwrap();
        let b = pool.checkout(idle).unwrap();
        assert!(!a.conn.sender.is_closed() && !b.conn.sender.is_closed());
        assert!(pool.checkout(idle).is_none());

        // Expired ones are dropped too.
        let (s, c) = sender(addr).await;
        conns.push(c);
        pool.checkin(s);
        assert!(pool.checkout(Duration::ZERO).is_none());
        assert_eq!(pool.idle_count(), 0);
    }
}
