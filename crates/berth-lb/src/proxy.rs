//! The data path: accept client connections (HTTP/1.1 and h2c), route each request
//! through the listener's current table, and forward it over a pooled HTTP/1.1
//! keep-alive connection to the chosen target, streaming bodies both ways.
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION,
    SERVER, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::balancer::{pick_weighted, CompiledAction, GroupTable, ListenerTable};
use crate::matching::{canonical_ip, strip_port, RequestView};
use crate::pool::{connect, ConnectError, ReqBody, TargetConn};
use crate::target::{InFlight, TargetState};

/// Attempts to reach a target for one request (connection refused/timed out before
/// anything was sent, so retrying is safe).
const MAX_CONNECT_ATTEMPTS: usize = 3;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// Pooled target connections idle this long are not used again (node-wide); client
    /// connections follow their listener's idle timeout ([`ListenerShared::client_idle`]).
    pub idle: Duration,
    pub request: Duration,
    pub connect: Duration,
}

/// What every connection of one listener shares; the table is replaced whole by
/// `apply` and read-cloned once per request (the read lock is held only for the
/// `Arc` clone).
pub(crate) struct ListenerShared {
    pub port: u16,
    pub xf_port: HeaderValue,
    pub table: RwLock<Arc<ListenerTable>>,
    pub timeouts: Timeouts,
    /// The idle timeout of the listener's client connections (its load balancer's
    /// `idle_timeout.timeout_seconds`). A change reaches open connections too.
    client_idle: watch::Sender<Duration>,
}

impl ListenerShared {
    pub(crate) fn new(
        port: u16,
        table: ListenerTable,
        timeouts: Timeouts,
        client_idle: Duration,
    ) -> ListenerShared {
        ListenerShared {
            port,
            xf_port: HeaderValue::from(port),
            table: RwLock::new(Arc::new(table)),
            timeouts,
            client_idle: watch::Sender::new(client_idle),
        }
    }
    pub(crate) fn swap(&self, table: ListenerTable) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }
    /// Sets the client idle timeout; open connections are told only if it changed.
    pub(crate) fn set_client_idle(&self, idle: Duration) {
        self.client_idle.send_if_modified(|cur| {
            let changed = *cur != idle;
            *cur = idle;
            changed
        });
    }
    pub(crate) fn client_idle(&self) -> watch::Receiver<Duration> {
        self.client_idle.subscribe()
    }
    fn current(&self) -> Arc<ListenerTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

// ---------------------------------------------------------------------------
// Target connection pool

/// A pooled connection (`true`: it served requests before), or a new one. A pooled
/// one that is not ready after a moment goes back to the pool (it is not broken,
/// only slow to be marked ready) and a new connection is opened.
async fn obtain(t: &TargetState, to: &Timeouts) -> Result<(TargetConn, bool), ConnectError> {
    if let Some(mut c) = t.pool.checkout(to.idle) {
        if c.conn.sender.is_ready() {
            return Ok((c.conn, true));
        }
        match tokio::time::timeout(Duration::from_millis(20), c.conn.sender.ready()).await {
            Ok(Ok(())) => return Ok((c.conn, true)),
            Ok(Err(_)) => {}
            Err(_) => t.pool.restore(c),
        }
    }
    connect(t.addr, to.connect).await.map(|s| (s, false))
}

// ---------------------------------------------------------------------------
// Bodies

/// The body of every response the load balancer sends.
pub enum LbBody {
    /// Generated here (errors, fixed responses, redirects).
    Full(Option<Bytes>),
    /// Streamed from a target.
    Proxied(ProxiedBody),
}

impl LbBody {
    fn full(b: impl Into<Bytes>) -> LbBody {
        LbBody::Full(Some(b.into()))
    }
}

/// A target's response body. Holds the request's in-flight count until the body
/// ends or is dropped, and gives the connection back to the pool when (and only
/// when) the body was read to its end.
pub struct ProxiedBody {
    inner: Incoming,
    done: Option<Done>,
}

struct Done {
    _in_flight: InFlight,
    conn: TargetConn,
}

impl Done {
    fn finish(self, complete: bool) {
        if complete {
            self._in_flight.0.pool.checkin(self.conn);
        }
    }
}

impl Drop for ProxiedBody {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            // A body the client never read (HEAD, 204, 304) is complete too.
            d.finish(self.inner.is_end_stream());
        }
    }
}

impl Body for LbBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            LbBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            LbBody::Proxied(p) => {
                let r = std::task::ready!(Pin::new(&mut p.inner).poll_frame(cx));
                let finished = match &r {
                    None => Some(true),
                    Some(Ok(_)) if p.inner.is_end_stream() => Some(true),
                    Some(Err(_)) => Some(false),
                    Some(Ok(_)) => None,
                };
                if let Some(complete) = finished {
                    if let Some(d) = p.done.take() {
                        d.finish(complete);
                    }
                }
                Poll::Ready(r)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            LbBody::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            LbBody::Proxied(p) => p.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            LbBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            LbBody::Proxied(p) => p.inner.size_hint(),
        }
    }
}

// ---------------------------------------------------------------------------
// Generated responses

static SERVER_NAME: HeaderValue = HeaderValue::from_static("berth");

/// ALB's error page for 502/503/504.
pub(crate) fn error_response(status: StatusCode) -> Response<LbBody> {
    let body: &'static str = match status.as_u16() {
        502 => "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n",
        503 => "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n</body>\r\n</html>\r\n",
        504 => "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n<center><h1>504 Gateway Time-out</h1></center>\r\n</body>\r\n</html>\r\n",
        _ => "<html>\r\n<head><title>500 Internal Server Error</title></head>\r\n<body>\r\n<center><h1>500 Internal Server Error</h1></center>\r\n</body>\r\n</html>\r\n",
    };
    generated(
        status,
        HeaderValue::from_static("text/html"),
        Bytes::from_static(body.as_bytes()),
    )
}

fn generated(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response<LbBody> {
    let mut r = Response::new(LbBody::full(body.clone()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(SERVER, SERVER_NAME.clone());
    h.insert(CONTENT_TYPE, content_type);
    h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    r
}

// ---------------------------------------------------------------------------
// Connections from clients

/// Marks a client connection active on every read or write (cheap: one relaxed
/// store); the idle timer clears it, and a connection left unmarked for the whole
/// idle timeout is closed (ALB: no data sent or received for idle_timeout).
struct Activity(AtomicBool);

struct IdleIo {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl IdleIo {
    #[inline]
    fn touch<T>(&self, p: &Poll<T>) {
        if p.is_ready() {
            self.activity.0.store(true, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let p = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.touch(&p);
        p
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.touch(&p);
        p
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.touch(&p);
        p
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

/// Resolves once the connection saw no traffic for the idle timeout `idle` holds
/// (checked in quarters of it). A new timeout applies at once: a connection already
/// quiet for longer than it is closed.
async fn idle_expired(a: &Activity, idle: &mut watch::Receiver<Duration>) {
    let mut quiet_since = Instant::now();
    // The listener (the sender) can go while an upgraded connection lives on: its
    // timeout then stays as it was.
    let mut follow = true;
    loop {
        let limit = *idle.borrow_and_update();
        let tick = (limit / 4).max(Duration::from_millis(1));
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            r = idle.changed(), if follow => follow = r.is_ok(),
        }
        let now = Instant::now();
        if a.0.swap(false, Ordering::Relaxed) {
            quiet_since = now;
        } else if now.duration_since(quiet_since) >= *idle.borrow() {
            return;
        }
    }
}

struct ConnCtx {
    listener: Arc<ListenerShared>,
    client_ip: IpAddr,
    /// The client IP as an `X-Forwarded-For` value.
    xff: HeaderValue,
    activity: Arc<Activity>,
}

/// Accepts until aborted (dropping the socket stops accepting at once).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    stop: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, port = shared.port, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(serve_conn(
            tcp,
            remote,
            shared.clone(),
            builder.clone(),
            stop.clone(),
        ));
    }
}

async fn serve_conn(
    tcp: TcpStream,
    remote: SocketAddr,
    listener: Arc<ListenerShared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: watch::Receiver<bool>,
) {
    let idle = listener.client_idle();
    let activity = Arc::new(Activity(AtomicBool::new(true)));
    let client_ip = canonical_ip(remote.ip());
    let xff = HeaderValue::from_str(&client_ip.to_string())
        .unwrap_or(HeaderValue::from_static("unknown"));
    let ctx = Arc::new(ConnCtx {
        listener,
        client_ip,
        xff,
        activity: activity.clone(),
    });
    let io = TokioIo::new(IdleIo {
        inner: tcp,
        activity: activity.clone(),
    });
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(ctx, req).await) }
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let closing = *stop.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    // The listener's stop signal and the idle timer are watched by a task of their
    // own, which raises `signal` and wakes this one: this task, woken for every read
    // and write of the connection, then checks one atomic instead of polling a watch
    // channel and a timer each time. (`serve_conn` is a task's whole future, so the
    // waker seen here is the task's and stays valid.)
    let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
    let signal = Arc::new(AtomicU8::new(SIGNAL_NONE));
    let _watchdog = AbortOnDrop(tokio::spawn(watchdog(
        activity,
        idle,
        stop,
        closing,
        signal.clone(),
        waker,
    )));
    let mut seen = SIGNAL_NONE;
    std::future::poll_fn(|cx| loop {
        if conn.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let s = signal.load(Ordering::Acquire);
        if s == seen {
            return Poll::Pending;
        }
        seen = s;
        if s == SIGNAL_CLOSE {
            return Poll::Ready(());
        }
        // Finish what is in flight, then close.
        conn.as_mut().graceful_shutdown();
    })
    .await;
}

const SIGNAL_NONE: u8 = 0;
/// Finish what is in flight, then close.
const SIGNAL_GRACEFUL: u8 = 1;
/// Close now.
const SIGNAL_CLOSE: u8 = 2;

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A client connection's timers: the listener removed (`stop`) → graceful close; no
/// traffic for the idle timeout → graceful close, and once more (while closing) →
/// close.
async fn watchdog(
    activity: Arc<Activity>,
    mut idle: watch::Receiver<Duration>,
    mut stop: watch::Receiver<bool>,
    mut closing: bool,
    signal: Arc<AtomicU8>,
    waker: std::task::Waker,
) {
    let raise = |s: u8| {
        signal.store(s, Ordering::Release);
        waker.wake_by_ref();
    };
    loop {
        tokio::select! {
            r = stop.changed(), if !closing => {
                // The listener was removed (or is gone).
                let _ = r;
                closing = true;
                raise(SIGNAL_GRACEFUL);
            }
            _ = idle_expired(&activity, &mut idle) => {
                if closing {
                    raise(SIGNAL_CLOSE);
                    return;
                }
                closing = true;
                raise(SIGNAL_GRACEFUL);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Requests

async fn handle(ctx: Arc<ConnCtx>, req: Request<Incoming>) -> Response<LbBody> {
    let table = ctx.listener.current();
    let host_full = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let host = strip_port(host_full);
    let view = RequestView {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query(),
        host,
        headers: req.headers(),
        source_ip: ctx.client_ip,
    };
    let Some(rule) = table.route(&view) else {
        return error_response(StatusCode::SERVICE_UNAVAILABLE);
    };
    match &rule.action {
        CompiledAction::Fixed {
            status,
            content_type,
            body,
        } => generated(*status, content_type.clone(), body.clone()),
        CompiledAction::Redirect(t) => {
            let loc = t.location(host, ctx.listener.port, view.path, view.query);
            let mut r = generated(
                t.status,
                HeaderValue::from_static("text/plain"),
                Bytes::new(),
            );
            r.headers_mut().remove(CONTENT_TYPE);
            match HeaderValue::from_str(&loc) {
                Ok(v) => {
                    r.headers_mut().insert(LOCATION, v);
                    r
                }
                Err(_) => error_response(StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
        CompiledAction::Unavailable => error_response(StatusCode::SERVICE_UNAVAILABLE),
        CompiledAction::Forward { groups, total } => {
            let group = match groups.as_slice() {
                [(g, _)] => Some(g),
                _ => pick_weighted(groups, *total, &mut rand::thread_rng()),
            };
            match group {
                Some(g) => forward(&ctx, g, req).await,
                None => error_response(StatusCode::SERVICE_UNAVAILABLE),
            }
        }
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && req.headers().get_all(CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|s| {
                    s.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                })
                .unwrap_or(false)
        })
}

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Removes hop-by-hop headers (those named in `Connection` too). With `upgrade`,
/// `Connection: upgrade` and `Upgrade` pass through.
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    if h.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for n in named {
            if !(upgrade && n == UPGRADE) {
                h.remove(n);
            }
        }
        h.remove(CONNECTION);
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(TE);
    h.remove(TRAILER);
    h.remove(TRANSFER_ENCODING);
    if upgrade {
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(UPGRADE);
    }
}

/// The request as the target gets it: HTTP/1.1, origin-form URI, Host kept (or set
/// from `:authority`), hop-by-hop headers removed, `X-Forwarded-*` added.
fn outgoing(ctx: &ConnCtx, req: Request<Incoming>, upgrade: bool) -> Request<ReqBody> {
    let (mut parts, body) = req.into_parts();
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        if !parts.headers.contains_key(HOST) {
            if let Some(a) = parts.uri.authority() {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    parts.headers.insert(HOST, v);
                }
            }
        }
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
    }
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    strip_hop_by_hop(h, upgrade);
    let mut prior = h.get_all(&X_FORWARDED_FOR).iter().peekable();
    if prior.peek().is_some() {
        let mut v: Vec<u8> = Vec::with_capacity(64);
        for p in prior {
            if !v.is_empty() {
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(p.as_bytes());
        }
        v.extend_from_slice(b", ");
        v.extend_from_slice(ctx.xff.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&v) {
            h.insert(&X_FORWARDED_FOR, v);
        }
    } else {
        h.insert(&X_FORWARDED_FOR, ctx.xff.clone());
    }
    h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    h.insert(&X_FORWARDED_PORT, ctx.listener.xf_port.clone());
    Request::from_parts(parts, ReqBody::Client(body))
}

/// Safe to send twice (RFC 9110 9.2.2).
fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A copy of a request that can be sent again (same head, no body): only for an
/// idempotent request without a body.
fn replayable(req: &Request<ReqBody>) -> Option<Request<ReqBody>> {
    if !is_idempotent(req.method()) || !req.body().is_end_stream() {
        return None;
    }
    let mut r = Request::new(ReqBody::Empty);
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    Some(r)
}

/// A request that failed on a reused connection before any byte of its response
/// came back: the connection was dead (closed, reset) rather than the request bad.
fn dead_connection(e: &hyper::Error, got_response_bytes: bool) -> bool {
    !got_response_bytes && !e.is_parse() && !e.is_user() && !e.is_timeout()
}

async fn forward(
    ctx: &ConnCtx,
    group: &GroupTable,
    mut req: Request<Incoming>,
) -> Response<LbBody> {
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let to = ctx.listener.timeouts;
    let mut pending = Some(outgoing(ctx, req, upgrade));
    let mut tried: Vec<Arc<TargetState>> = Vec::new();
    let mut failure = StatusCode::SERVICE_UNAVAILABLE;
    let mut stale_retries = 0;
    // A request that failed on a dead pooled connection is sent once more, to
    // another target if there is one (else on a new connection to the same one).
    let mut replayed = false;
    let mut next: Option<(Arc<TargetState>, bool)> = None;
    // The count of a request being sent once more stays up until the next attempt has
    // its own: its target never looks idle in between (a draining target must not).
    let mut carried: Option<InFlight> = None;
    loop {
        let (target, fresh) = match next.take() {
            Some(n) => n,
            None => {
                if tried.len() >= MAX_CONNECT_ATTEMPTS {
                    break;
                }
                match group.choose(&tried) {
                    Some(t) => (t.clone(), false),
                    None => break,
                }
            }
        };
        let in_flight = InFlight::start(&target);
        drop(carried.take());
        if !fresh && target.is_draining() {
            // Deregistered since it was chosen: this node may already have told the
            // cluster the target is idle, so it must not get a new request.
            drop(in_flight);
            tried.push(target);
            continue;
        }
        let got = if fresh {
            connect(target.addr, to.connect).await.map(|c| (c, false))
        } else {
            obtain(&target, &to).await
        };
        let (mut conn, pooled) = match got {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(target = ?target.key, error = ?e, "target connection failed");
                failure = match e {
                    ConnectError::Timeout => StatusCode::GATEWAY_TIMEOUT,
                    ConnectError::Failed => StatusCode::BAD_GATEWAY,
                };
                tried.push(target);
                continue;
            }
        };
        let Some(out) = pending.take() else { break };
        // A copy to send again should this (reused) connection turn out dead.
        let replay = if pooled && !replayed {
            replayable(&out)
        } else {
            None
        };
        let read_before = conn.response_bytes();
        let resp = match tokio::time::timeout(to.request, conn.sender.try_send_request(out)).await {
            Err(_) => return error_response(StatusCode::GATEWAY_TIMEOUT),
            Ok(Ok(resp)) => resp,
            Ok(Err(mut e)) => match e.take_message() {
                // Never sent: a pooled connection the target had closed. Safe to retry.
                Some(back) => {
                    pending = Some(back);
                    failure = StatusCode::BAD_GATEWAY;
                    if pooled && stale_retries < 4 {
                        stale_retries += 1;
                    } else {
                        tried.push(target);
                    }
                    continue;
                }
                None => {
                    let got_bytes = conn.response_bytes() != read_before;
                    match replay {
                        Some(again) if dead_connection(e.error(), got_bytes) => {
                            tracing::debug!(target = ?target.key, error = %e.error(), "pooled target connection was dead; sending the request again");
                            replayed = true;
                            carried = Some(in_flight);
                            pending = Some(again);
                            failure = StatusCode::BAD_GATEWAY;
                            tried.push(target.clone());
                            next = Some(match group.choose(&tried) {
                                Some(t) => (t.clone(), false),
                                None => (target, true),
                            });
                            continue;
                        }
                        _ => {
                            tracing::debug!(target = ?target.key, error = %e.error(), "target request failed");
                            return error_response(StatusCode::BAD_GATEWAY);
                        }
                    }
                }
            },
        };
        target.served.fetch_add(1, Ordering::Relaxed);
        return respond(ctx, resp, conn, in_flight, client_upgrade);
    }
    error_response(if tried.is_empty() && pending.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        failure
    })
}

fn respond(
    ctx: &ConnCtx,
    mut resp: Response<Incoming>,
    conn: TargetConn,
    in_flight: InFlight,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<LbBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_up) = client_upgrade {
            let target_up = hyper::upgrade::on(&mut resp);
            let activity = ctx.activity.clone();
            let mut idle = ctx.listener.client_idle();
            tokio::spawn(async move {
                // Counted in flight (and the target connection kept) until either
                // side closes or the pair is idle for the idle timeout.
                let _in_flight = in_flight;
                let _conn = conn;
                let (c, t) = tokio::join!(client_up, target_up);
                if let (Ok(c), Ok(t)) = (c, t) {
                    let mut c = TokioIo::new(c);
                    let mut t = TokioIo::new(t);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut c, &mut t) => {}
                        _ = idle_expired(&activity, &mut idle) => {}
                    }
                }
            });
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            return Response::from_parts(
                parts,
                LbBody::Proxied(ProxiedBody {
                    inner: body,
                    done: None,
                }),
            );
        }
        // A 101 to a request that did not ask to upgrade is malformed.
        return error_response(StatusCode::BAD_GATEWAY);
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let body = ProxiedBody {
        inner: body,
        done: Some(Done {
            _in_flight: in_flight,
            conn,
        }),
    };
    Response::from_parts(parts, LbBody::Proxied(body))
}
