//! The load balancer with real sockets on 127.0.0.1: hyper backends spawned here,
//! clients over HTTP/1.1, h2c and raw TCP.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_lb::{Lb, LbOptions, ListenerConfig, RoutingConfig, TargetConfig, TargetGroupConfig};
use berth_model::elb::{
    Action, Attribute, FixedResponseActionConfig, Matcher, RedirectActionConfig, Rule,
    RuleCondition, TargetGroup, TargetGroupRecord,
};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

type Body = BoxBody<Bytes, Infallible>;

fn text(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

struct Backend {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

/// A hyper HTTP/1.1 backend (with upgrades) counting connections and requests.
async fn backend<F, Fut>(handler: F) -> Backend
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r) = (conns.clone(), requests.clone());
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            c.fetch_add(1, Ordering::SeqCst);
            let h = handler.clone();
            let r = r.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    r.fetch_add(1, Ordering::SeqCst);
                    let h = h.clone();
                    async move { Ok::<_, Infallible>(h(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Backend {
        addr,
        conns,
        requests,
    }
}

async fn ok_backend(name: &'static str) -> Backend {
    backend(move |_req| async move { Response::new(text(name)) }).await
}

/// A port nothing listens on.
async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

const TG: &str = "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/web/1";
const LISTENER: &str = "arn:aws:elasticloadbalancing:us-east-1:1:listener/app/lb/1/l1";

fn forward(tg: &str) -> Action {
    Action {
        action_type: "forward".into(),
        target_group_arn: Some(tg.into()),
        ..Default::default()
    }
}

fn default_rule(a: Action) -> Rule {
    Rule {
        rule_arn: "default".into(),
        priority: "default".into(),
        actions: vec![a],
        is_default: true,
        conditions: vec![],
    }
}

fn group(
    targets: &[(SocketAddr, bool)],
    tg: TargetGroup,
    attrs: Vec<Attribute>,
) -> TargetGroupConfig {
    TargetGroupConfig {
        record: TargetGroupRecord {
            target_group: tg,
            attributes: attrs,
        },
        targets: targets
            .iter()
            .map(|(a, draining)| TargetConfig {
                id: a.to_string(),
                port: a.port(),
                addr: *a,
                draining: *draining,
                registration: 0,
            })
            .collect(),
    }
}

fn config(targets: &[(SocketAddr, bool)], port: u16) -> RoutingConfig {
    config_with(
        targets,
        port,
        TargetGroup::default(),
        vec![default_rule(forward(TG))],
    )
}

fn config_with(
    targets: &[(SocketAddr, bool)],
    port: u16,
    tg: TargetGroup,
    rules: Vec<Rule>,
) -> RoutingConfig {
    RoutingConfig {
        listeners: vec![ListenerConfig {
            listener_arn: LISTENER.into(),
            port,
            rules,
            idle_timeout: None,
        }],
        target_groups: HashMap::from([(TG.to_string(), group(targets, tg, vec![]))]),
    }
}

fn opts() -> LbOptions {
    LbOptions {
        bind: "127.0.0.1".parse().unwrap(),
        health_checks: false,
        idle_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
    }
}

async fn start(o: LbOptions, cfg: RoutingConfig) -> (Arc<Lb>, SocketAddr) {
    let lb = Lb::new(o);
    let errs = lb.apply(cfg).await;
    assert!(errs.is_empty(), "{errs:?}");
    let addr = lb.listening()[LISTENER];
    (lb, addr)
}

/// One HTTP/1.1 client connection.
struct Client {
    send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { send }
    }
    async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, hyper::HeaderMap, String) {
        let mut b = Request::get(path).header("host", "app.example.com");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send.ready().await.unwrap();
        let resp = timeout(
            Duration::from_secs(10),
            self.send.send_request(b.body(Empty::new()).unwrap()),
        )
        .await
        .expect("response in time")
        .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, hyper::HeaderMap, String) {
    Client::connect(addr).await.get(path, &[]).await
}

/// Waits (with a deadline) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn forwards_and_pools_keep_alive_connections() {
    let b = ok_backend("hello").await;
    let (lb, addr) = start(opts(), config(&[(b.addr, false)], 0)).await;
    for _ in 0..20 {
        // A new client connection each time: pooling is on the target side.
        let (s, h, body) = get(addr, "/").await;
        assert_eq!(s, 200);
        assert_eq!(body, "hello");
        assert!(
            h.get("server").is_none(),
            "proxied responses are the target's"
        );
    }
    assert_eq!(b.requests.load(Ordering::SeqCst), 20);
    assert_eq!(
        b.conns.load(Ordering::SeqCst),
        1,
        "one pooled connection to the target"
    );
    let stats = lb.stats();
    let st = stats.values().next().unwrap();
    assert_eq!(st.requests, 20);
    eventually("in-flight back to 0", || {
        lb.stats().values().next().unwrap().in_flight == 0
    })
    .await;
    lb.shutdown().await;
}

#[tokio::test]
async fn no_targets_is_503() {
    let (_lb, addr) = start(opts(), config(&[], 0)).await;
    let (s, h, body) = get(addr, "/").await;
    assert_eq!(s, 503);
    assert_eq!(h["server"], "berth");
    assert!(
        body.contains("<h1>503 Service Temporarily Unavailable</h1>"),
        "{body}"
    );
}

#[tokio::test]
async fn refused_target_is_502_and_other_target_is_retried() {
    let dead = dead_addr().await;
    let (lb, addr) = start(opts(), config(&[(dead, false)], 0)).await;
    let (s, h, body) = get(addr, "/").await;
    assert_eq!(s, 502);
    assert_eq!(h["server"], "berth");
    assert!(body.contains("<h1>502 Bad Gateway</h1>"), "{body}");

    let live = ok_backend("live").await;
    lb.apply(config(&[(dead, false), (live.addr, false)], 0))
        .await;
    let mut c = Client::connect(addr).await;
    for _ in 0..10 {
        let (s, _, body) = c.get("/", &[]).await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "live"));
    }
}

#[tokio::test]
async fn hanging_target_is_504() {
    // Accepts connections and reads, never answers.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let o = LbOptions {
        request_timeout: Duration::from_millis(300),
        ..opts()
    };
    let (_lb, addr) = start(o, config(&[(hang, false)], 0)).await;
    let t0 = std::time::Instant::now();
    let (s, _, body) = get(addr, "/").await;
    assert_eq!(s, 504);
    assert!(body.contains("504 Gateway Time-out"));
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn forwarded_headers_and_hop_by_hop() {
    let b = backend(|req: Request<Incoming>| async move {
        let h = req.headers();
        let get = |n: &str| {
            h.get(n)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        Response::new(text(format!(
            "xff={};proto={};port={};host={};ka={};version={:?}",
            get("x-forwarded-for"),
            get("x-forwarded-proto"),
            get("x-forwarded-port"),
            get("host"),
            get("keep-alive"),
            req.version()
        )))
    })
    .await;
    let (_lb, addr) = start(opts(), config(&[(b.addr, false)], 0)).await;
    let port = addr.port();
    let mut c = Client::connect(addr).await;
    let (_, _, body) = c.get("/", &[]).await;
    assert_eq!(
        body,
        format!("xff=127.0.0.1;proto=http;port={port};host=app.example.com;ka=;version=HTTP/1.1")
    );
    let (_, _, body) = c
        .get(
            "/",
            &[
                ("x-forwarded-for", "1.2.3.4"),
                ("connection", "keep-alive"),
                ("keep-alive", "timeout=5"),
            ],
        )
        .await;
    assert!(
        body.starts_with("xff=1.2.3.4, 127.0.0.1;proto=http;"),
        "{body}"
    );
    assert!(body.contains(";ka=;"), "{body}");
}

#[tokio::test]
async fn http2_client_reaches_http1_backend() {
    let b = backend(|req: Request<Incoming>| async move {
        let host = req
            .headers()
            .get("host")
            .map(|v| v.to_str().unwrap().to_string());
        Response::new(text(format!(
            "{:?} {:?} {}",
            req.version(),
            host,
            req.uri()
        )))
    })
    .await;
    let (_lb, addr) = start(opts(), config(&[(b.addr, false)], 0)).await;
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("http://h2.example.com:8080/p?q=1")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "HTTP/1.1 Some(\"h2.example.com:8080\") /p?q=1");
    }
}

#[tokio::test]
async fn websocket_upgrade_is_spliced() {
    let b = backend(|mut req: Request<Incoming>| async move {
        if req.headers().get("upgrade").is_none() {
            return Response::builder()
                .status(400)
                .body(text("no upgrade"))
                .unwrap();
        }
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(text(""))
            .unwrap()
    })
    .await;
    let (lb, addr) = start(opts(), config(&[(b.addr, false)], 0)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: ws.example.com\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        timeout(Duration::from_secs(5), s.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in [&b"hello"[..], b"world, again"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }
    // The upgraded connection counts as in flight until it closes.
    assert_eq!(lb.stats().values().next().unwrap().in_flight, 1);
    drop(s);
    eventually("upgraded connection released", || {
        lb.stats().values().next().unwrap().in_flight == 0
    })
    .await;
}

#[tokio::test]
async fn responses_stream_incrementally() {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let b = backend(move |_req| {
        let rx = rx.clone();
        async move {
            let rx = rx.lock().await.take().unwrap();
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            Response::new(StreamBody::new(stream).boxed())
        }
    })
    .await;
    let (lb, addr) = start(opts(), config(&[(b.addr, false)], 0)).await;
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/stream")
        .header("host", "x")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let mut resp = send.send_request(req).await.unwrap();
    tx.send(Bytes::from_static(b"first")).await.unwrap();
    let f = timeout(Duration::from_secs(5), resp.body_mut().frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        f.into_data().unwrap(),
        "first",
        "the first chunk arrives before the second is sent"
    );
    assert_eq!(
        lb.stats().values().next().unwrap().in_flight,
        1,
        "a streaming body is in flight"
    );
    tx.send(Bytes::from_static(b"second")).await.unwrap();
    let f = timeout(Duration::from_secs(5), resp.body_mut().frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(f.into_data().unwrap(), "second");
    drop(tx);
    assert!(timeout(Duration::from_secs(5), resp.body_mut().frame())
        .await
        .unwrap()
        .is_none());
    eventually("in flight released at body end", || {
        lb.stats().values().next().unwrap().in_flight == 0
    })
    .await;
}

#[tokio::test]
async fn bind_failure_is_reported_and_retried() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port();
    let lb = Lb::new(opts());
    let errs = lb.apply(config(&[], port)).await;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].port, port);
    assert_eq!(errs[0].listener_arn, LISTENER);
    assert!(lb.listening().is_empty());
    drop(taken);
    let errs = lb.apply(config(&[], port)).await;
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(lb.listening()[LISTENER].port(), port);
    // Removing the listener stops accepting at once.
    lb.apply(RoutingConfig::default()).await;
    assert!(lb.listening().is_empty());
    eventually("port closed", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    })
    .await;
}

#[tokio::test]
async fn apply_while_requests_run_loses_nothing() {
    let a = ok_backend("a").await;
    let b = ok_backend("b").await;
    let (lb, addr) = start(opts(), config(&[(a.addr, false)], 0)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = vec![];
    for _ in 0..4 {
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let (s, _, _) = c.get("/", &[]).await;
                assert_eq!(s, 200);
                n += 1;
            }
            n
        }));
    }
    for i in 0..30 {
        let targets: Vec<(SocketAddr, bool)> = match i % 3 {
            0 => vec![(a.addr, false), (b.addr, false)],
            1 => vec![(b.addr, false), (a.addr, true)],
            _ => vec![(a.addr, false), (b.addr, true)],
        };
        assert!(lb.apply(config(&targets, 0)).await.is_empty());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    assert!(total > 0);
    assert_eq!(lb.listening()[LISTENER], addr, "the listener stayed bound");
}

#[tokio::test]
async fn draining_target_gets_no_new_requests_while_in_flight_finishes() {
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let slow = backend(move |_req| {
        let r = r.clone();
        async move {
            r.notified().await;
            Response::new(text("slow done"))
        }
    })
    .await;
    let fast = ok_backend("fast").await;
    let (lb, addr) = start(opts(), config(&[(slow.addr, false)], 0)).await;
    let pending = tokio::spawn(async move { get(addr, "/").await });
    eventually("request reached the slow target", || {
        slow.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    // Deregistered: draining.
    lb.apply(config(&[(slow.addr, true), (fast.addr, false)], 0))
        .await;
    for _ in 0..10 {
        assert_eq!(get(addr, "/").await.2, "fast");
    }
    assert_eq!(slow.requests.load(Ordering::SeqCst), 1);
    // What the node reports to end the drain early: draining, one request in flight.
    let key = |a: SocketAddr| (TG.to_string(), a.to_string(), a.port());
    let st = lb.stats()[&key(slow.addr)];
    assert!(st.draining && st.in_flight == 1, "{st:?}");
    assert!(!lb.stats()[&key(fast.addr)].draining);
    release.notify_one();
    let (s, _, body) = timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((s, body.as_str()), (StatusCode::OK, "slow done"));
    // The response is complete: idle, and it stays so (no new request can start).
    eventually("the slow target to be idle", || {
        let st = lb.stats()[&key(slow.addr)];
        st.draining && st.in_flight == 0
    })
    .await;
    for _ in 0..10 {
        assert_eq!(get(addr, "/").await.2, "fast");
    }
    assert_eq!(lb.stats()[&key(slow.addr)].in_flight, 0);
    // Only draining targets left: 503.
    lb.apply(config(&[(slow.addr, true)], 0)).await;
    assert_eq!(get(addr, "/").await.0, 503);
}

#[tokio::test]
async fn rules_fixed_response_and_redirect() {
    let b = ok_backend("app").await;
    let cond = |field: &str, v: &str| RuleCondition {
        field: field.into(),
        values: vec![v.into()],
        ..Default::default()
    };
    let rules = vec![
        default_rule(Action {
            action_type: "fixed-response".into(),
            fixed_response_config: Some(FixedResponseActionConfig {
                status_code: "404".into(),
                content_type: Some("application/json".into()),
                message_body: Some("{\"error\":\"not found\"}".into()),
            }),
            ..Default::default()
        }),
        Rule {
            rule_arn: "r1".into(),
            priority: "10".into(),
            conditions: vec![cond("path-pattern", "/app/*")],
            actions: vec![forward(TG)],
            is_default: false,
        },
        Rule {
            rule_arn: "r2".into(),
            priority: "5".into(),
            conditions: vec![cond("path-pattern", "/old/*")],
            actions: vec![Action {
                action_type: "redirect".into(),
                redirect_config: Some(RedirectActionConfig {
                    status_code: "HTTP_301".into(),
                    protocol: Some("HTTPS".into()),
                    port: Some("443".into()),
                    path: Some("/new/#{path}".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            is_default: false,
        },
    ];
    let (_lb, addr) = start(
        opts(),
        config_with(&[(b.addr, false)], 0, TargetGroup::default(), rules),
    )
    .await;
    let mut c = Client::connect(addr).await;
    assert_eq!(c.get("/app/x", &[]).await.2, "app");
    let (s, h, body) = c.get("/nothing", &[]).await;
    assert_eq!(s, 404);
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["server"], "berth");
    assert_eq!(body, "{\"error\":\"not found\"}");
    let (s, h, _) = c.get("/old/page?x=1", &[]).await;
    assert_eq!(s, 301);
    assert_eq!(h["location"], "https://app.example.com/new/old/page?x=1");
}

#[tokio::test]
async fn idle_client_connections_are_closed() {
    let b = ok_backend("x").await;
    let o = LbOptions {
        idle_timeout: Duration::from_millis(200),
        ..opts()
    };
    let (_lb, addr) = start(o, config(&[(b.addr, false)], 0)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then nothing: the LB closes the connection after about the idle timeout.
    let t0 = std::time::Instant::now();
    let n = timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed");
    assert!(t0.elapsed() >= Duration::from_millis(150));
}

/// A raw HTTP/1.1 keep-alive connection that has had one 200 answered.
async fn answered_connection(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s
}

/// Waits (at most `limit`) for the load balancer to close an idle connection; returns
/// how long that took.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let t0 = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = timeout(limit, s.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("still open after {limit:?}"))
        .unwrap_or(0);
    assert_eq!(n, 0, "closed, not answered");
    t0.elapsed()
}

#[tokio::test]
async fn a_listeners_own_idle_timeout_closes_idle_client_connections() {
    let b = ok_backend("x").await;
    // The node's idle timeout is 10 s; the listener's (its load balancer's) is 1 s.
    let mut cfg = config(&[(b.addr, false)], 0);
    cfg.listeners[0].idle_timeout = Some(Duration::from_secs(1));
    let (lb, addr) = start(opts(), cfg).await;
    let mut s = answered_connection(addr).await;
    let took = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    lb.shutdown().await;
}

#[tokio::test]
async fn a_changed_idle_timeout_reaches_the_open_listener_and_its_connections() {
    let b = ok_backend("x").await;
    let cfg = config(&[(b.addr, false)], 0);
    let (lb, addr) = start(opts(), cfg.clone()).await;
    // Idle since before the change (the node's 10 s would keep it open).
    let mut idle = answered_connection(addr).await;
    let mut busy = Client::connect(addr).await;
    assert_eq!(busy.get("/", &[]).await.0, 200);
    let mut shorter = cfg.clone();
    shorter.listeners[0].idle_timeout = Some(Duration::from_secs(1));
    assert!(lb.apply(shorter).await.is_empty());
    // The listener stayed open: same address, and a connection opened before the
    // change is still served (a replaced listener would have closed it).
    assert_eq!(lb.listening()[LISTENER], addr);
    assert_eq!(busy.get("/", &[]).await.0, 200);
    // The connection idle since before the change closes after the new timeout.
    closed_within(&mut idle, Duration::from_secs(5)).await;
    // New connections get it too.
    let mut fresh = answered_connection(addr).await;
    let took = closed_within(&mut fresh, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    lb.shutdown().await;
}

#[tokio::test]
async fn health_checks_route_only_to_healthy_targets() {
    let sick_code = Arc::new(AtomicU16::new(503));
    let sc = sick_code.clone();
    let sick = backend(move |_req| {
        let sc = sc.clone();
        async move {
            Response::builder()
                .status(sc.load(Ordering::SeqCst))
                .body(text("sick"))
                .unwrap()
        }
    })
    .await;
    let well = ok_backend("well").await;
    let tg = TargetGroup {
        health_check_enabled: true,
        health_check_port: "traffic-port".into(),
        health_check_path: "/health".into(),
        health_check_interval_seconds: 1,
        health_check_timeout_seconds: 1,
        healthy_threshold_count: 2,
        unhealthy_threshold_count: 2,
        matcher: Matcher {
            http_code: Some("200-299".into()),
            grpc_code: None,
        },
        ..Default::default()
    };
    let o = LbOptions {
        health_checks: true,
        ..opts()
    };
    let cfg = config_with(
        &[(sick.addr, false), (well.addr, false)],
        0,
        tg,
        vec![default_rule(forward(TG))],
    );
    let (lb, addr) = start(o, cfg).await;
    let mut health = lb.health();
    let key_of = |a: SocketAddr| (TG.to_string(), a.to_string(), a.port());
    // The first probe runs at once; the second one interval later makes `well` healthy.
    timeout(
        Duration::from_secs(10),
        health.wait_for(|m| {
            m.get(&key_of(well.addr))
                .is_some_and(|h| h.state == "healthy")
        }),
    )
    .await
    .unwrap()
    .unwrap();
    let m = timeout(
        Duration::from_secs(10),
        health.wait_for(|m| {
            m.get(&key_of(sick.addr))
                .is_some_and(|h| h.state == "unhealthy")
        }),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    let h = &m[&key_of(sick.addr)];
    assert_eq!(h.reason.as_deref(), Some("Target.ResponseCodeMismatch"));
    assert_eq!(
        h.description.as_deref(),
        Some("Health checks failed with these codes: [503]")
    );
    let before = sick.requests.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(get(addr, "/").await.2, "well");
    }
    // Only health checks reached `sick` (at most a couple in that time).
    assert!(sick.requests.load(Ordering::SeqCst) - before <= 2);
}

/// A raw TCP target that reads a request head and answers with `reply`, then closes.
async fn raw_target(reply: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    a
}

#[tokio::test]
async fn malformed_response_is_502() {
    let t = raw_target(b"this is not HTTP\r\n\r\n").await;
    let (_lb, addr) = start(opts(), config(&[(t, false)], 0)).await;
    let (s, h, body) = get(addr, "/").await;
    assert_eq!(s, 502);
    assert_eq!(h["server"], "berth");
    assert!(body.contains("502 Bad Gateway"));
}

#[tokio::test]
async fn target_closing_mid_body_aborts_the_client_connection() {
    let t = raw_target(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b").await;
    let (lb, addr) = start(opts(), config(&[(t, false)], 0)).await;
    let mut c = Client::connect(addr).await;
    c.send.ready().await.unwrap();
    let resp = c
        .send
        .send_request(
            Request::get("/")
                .header("host", "x")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the status was already on its way");
    let body = timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .unwrap();
    assert!(
        body.is_err(),
        "the client sees a truncated body, not a complete one"
    );
    eventually("in flight released", || {
        lb.stats().values().next().unwrap().in_flight == 0
    })
    .await;
    assert_eq!(
        lb.stats().values().next().unwrap().idle_connections,
        0,
        "broken connection not pooled"
    );
}

/// A port that was free a moment ago (for listeners that must keep their port).
async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

fn listener_on(arn: &str, port: u16) -> ListenerConfig {
    ListenerConfig {
        listener_arn: arn.into(),
        port,
        rules: vec![default_rule(forward(TG))],
        idle_timeout: None,
    }
}

fn config_listeners(
    targets: &[(SocketAddr, bool)],
    listeners: Vec<ListenerConfig>,
) -> RoutingConfig {
    RoutingConfig {
        listeners,
        target_groups: HashMap::from([(
            TG.to_string(),
            group(targets, TargetGroup::default(), vec![]),
        )]),
    }
}

/// A GET that must succeed within a short deadline (no retry loop beyond that).
async fn get_soon(port: u16) -> (StatusCode, String) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let req = Request::get("/")
                    .header("host", "x")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = timeout(Duration::from_secs(5), send.send_request(req))
                    .await
                    .expect("response in time")
                    .unwrap();
                let s = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                return (s, String::from_utf8_lossy(&body).into_owned());
            }
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "port {port} refuses connections: {e}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_replaced_on_the_same_port_keeps_serving() {
    const A: &str = "arn:aws:elasticloadbalancing:us-east-1:1:listener/app/lb/1/a";
    const B: &str = "arn:aws:elasticloadbalancing:us-east-1:1:listener/app/lb/1/b";
    const C: &str = "arn:aws:elasticloadbalancing:us-east-1:1:listener/app/lb/1/c";
    let be = ok_backend("up").await;
    let t = [(be.addr, false)];
    let lb = Lb::new(opts());
    let p = free_port().await;
    let q = free_port().await;
    let errs = lb
        .apply(config_listeners(&t, vec![listener_on(A, p)]))
        .await;
    assert!(errs.is_empty(), "{errs:?}");
    // A keep-alive client of the old listener.
    let mut old_client = Client::connect(([127, 0, 0, 1], p).into()).await;
    assert_eq!(old_client.get("/", &[]).await.0, 200);
    for round in 0..5 {
        // DeleteListener A + CreateListener B on the same port, seen in one apply.
        let errs = lb
            .apply(config_listeners(&t, vec![listener_on(B, p)]))
            .await;
        assert!(errs.is_empty(), "round {round}: {errs:?}");
        let listening = lb.listening();
        assert_eq!(listening.len(), 1);
        assert_eq!(listening[B].port(), p);
        assert_eq!(get_soon(p).await, (StatusCode::OK, "up".to_string()));
        // And back again.
        let errs = lb
            .apply(config_listeners(&t, vec![listener_on(A, p)]))
            .await;
        assert!(errs.is_empty(), "round {round}: {errs:?}");
        assert_eq!(lb.listening()[A].port(), p);
        assert_eq!(get_soon(p).await, (StatusCode::OK, "up".to_string()));
    }
    // The port never closed: the connection opened before the replacements still works.
    assert_eq!(old_client.get("/", &[]).await.0, 200);
    // Two listeners trading ports in one apply.
    let errs = lb
        .apply(config_listeners(
            &t,
            vec![listener_on(A, p), listener_on(C, q)],
        ))
        .await;
    assert!(errs.is_empty(), "{errs:?}");
    let errs = lb
        .apply(config_listeners(
            &t,
            vec![listener_on(A, q), listener_on(C, p)],
        ))
        .await;
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(lb.listening()[A].port(), q);
    assert_eq!(lb.listening()[C].port(), p);
    assert_eq!(get_soon(p).await.0, StatusCode::OK);
    assert_eq!(get_soon(q).await.0, StatusCode::OK);
    // A listener removed and added back on the next apply binds its port again.
    for round in 0..5 {
        assert!(lb.apply(config_listeners(&t, vec![])).await.is_empty());
        let errs = lb
            .apply(config_listeners(&t, vec![listener_on(B, p)]))
            .await;
        assert!(errs.is_empty(), "round {round}: {errs:?}");
        assert_eq!(get_soon(p).await.0, StatusCode::OK);
    }
    lb.shutdown().await;
}

/// End to end guard for the pool (the deterministic check of not-ready connections
/// staying pooled is the unit test `pool_keeps_connections_that_are_not_ready_yet`):
/// concurrent clients reuse about one target connection each, however many requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_connections_are_reused_under_concurrency() {
    const CLIENTS: usize = 8;
    const REQUESTS: usize = 300;
    let be = ok_backend("pooled").await;
    let (lb, addr) = start(opts(), config(&[(be.addr, false)], 0)).await;
    let mut workers = vec![];
    for i in 0..CLIENTS {
        workers.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await;
            for _ in 0..REQUESTS {
                if i % 2 == 1 {
                    // HEAD: the target connection goes back when the empty body is dropped.
                    c.send.ready().await.unwrap();
                    let req = Request::head("/")
                        .header("host", "x")
                        .body(Empty::new())
                        .unwrap();
                    let r = timeout(Duration::from_secs(10), c.send.send_request(req))
                        .await
                        .expect("response in time")
                        .unwrap();
                    assert_eq!(r.status(), 200);
                } else {
                    let (s, _, body) = c.get("/", &[]).await;
                    assert_eq!(s, 200);
                    assert_eq!(body, "pooled");
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(be.requests.load(Ordering::SeqCst), CLIENTS * REQUESTS);
    let conns = be.conns.load(Ordering::SeqCst);
    assert!(
        conns <= 2 * CLIENTS,
        "{conns} target connections for {CLIENTS} concurrent clients"
    );
    lb.shutdown().await;
}

/// A raw keep-alive target that answers the first request of every connection
/// (`200`, body = the connection's number) and resets the connection the moment a
/// second request arrives on it, without a byte of response: a pooled connection
/// that dies just as it is reused. Counts the request heads it got (method first).
struct OneShotTarget {
    addr: SocketAddr,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    conns: Arc<AtomicUsize>,
}

async fn one_shot_target() -> OneShotTarget {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let conns = Arc::new(AtomicUsize::new(0));
    let (h, c) = (heads.clone(), conns.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            let h = h.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for i in 0.. {
                    let mut chunk = [0u8; 1024];
                    let end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    };
                    let head: Vec<u8> = buf.drain(..end).collect();
                    let line = String::from_utf8_lossy(&head);
                    h.lock()
                        .unwrap()
                        .push(line.split(' ').next().unwrap_or("").to_string());
                    if i > 0 {
                        // RST, not FIN: no response byte, and the request is lost.
                        let _ = s.set_zero_linger();
                        return;
                    }
                    let body = n.to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    OneShotTarget { addr, heads, conns }
}

#[tokio::test]
async fn dead_pooled_connection_is_retried_for_idempotent_requests() {
    let t = one_shot_target().await;
    let (lb, addr) = start(opts(), config(&[(t.addr, false)], 0)).await;
    let mut c = Client::connect(addr).await;
    for i in 0..10 {
        let (s, _, body) = c.get("/", &[]).await;
        assert_eq!(s, 200, "request {i}: {body}");
        // Every request after the first met a dead pooled connection and went out
        // again on a new one (the only target).
        assert_eq!(body, (i + 1).to_string(), "request {i}");
    }
    assert_eq!(t.conns.load(Ordering::SeqCst), 10);
    assert_eq!(
        t.heads.lock().unwrap().len(),
        19,
        "9 lost on dead connections"
    );
    eventually("in flight released", || {
        lb.stats().values().all(|s| s.in_flight == 0)
    })
    .await;

    // Other idempotent methods too, and the request goes out whole the second time.
    let (s, _, _) = {
        c.send.ready().await.unwrap();
        let resp = c
            .send
            .send_request(
                Request::delete("/thing")
                    .header("host", "x")
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        (resp.status(), (), ())
    };
    assert_eq!(s, 200);
    let heads = t.heads.lock().unwrap().clone();
    assert_eq!(heads[heads.len() - 2..], ["DELETE", "DELETE"]);
}

#[tokio::test]
async fn dead_pooled_connection_is_not_retried_for_post() {
    let t = one_shot_target().await;
    let (_lb, addr) = start(opts(), config(&[(t.addr, false)], 0)).await;
    let mut c = Client::connect(addr).await;
    let (s, _, _) = c.get("/", &[]).await;
    assert_eq!(s, 200);
    c.send.ready().await.unwrap();
    let resp = c
        .send
        .send_request(
            Request::post("/order")
                .header("host", "x")
                .header("content-length", "0")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 502, "the POST may have reached the target");
    assert_eq!(*t.heads.lock().unwrap(), ["GET", "POST"], "sent once");
    assert_eq!(t.conns.load(Ordering::SeqCst), 1);
}

/// A hyper target whose tasks (listener and connections) can all be killed at once,
/// closing every socket, like a SIGKILLed process.
struct KillableTarget {
    addr: SocketAddr,
    tasks: Arc<std::sync::Mutex<tokio::task::JoinSet<()>>>,
    requests: Arc<AtomicUsize>,
}

impl KillableTarget {
    async fn start(name: &'static str, addr: SocketAddr) -> KillableTarget {
        let l = TcpListener::bind(addr).await.unwrap();
        let addr = l.local_addr().unwrap();
        let tasks = Arc::new(std::sync::Mutex::new(tokio::task::JoinSet::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let (t, r) = (tasks.clone(), requests.clone());
        tasks.lock().unwrap().spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let r = r.clone();
                t.lock().unwrap().spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        async move { Ok::<_, Infallible>(Response::new(text(name))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        KillableTarget {
            addr,
            tasks,
            requests,
        }
    }

    fn kill(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_replaced_target_fails_no_get() {
    let a = KillableTarget::start("a", "127.0.0.1:0".parse().unwrap()).await;
    let b = KillableTarget::start("b", "127.0.0.1:0".parse().unwrap()).await;
    let (lb, addr) = start(opts(), config(&[(a.addr, false), (b.addr, false)], 0)).await;
    let mut clients = vec![];
    for _ in 0..4 {
        clients.push(Client::connect(addr).await);
    }
    // Pools warm on both targets.
    for _ in 0..5 {
        for s in get_on_all(&mut clients).await {
            assert_eq!(s, 200);
        }
    }
    assert!(b.requests.load(Ordering::SeqCst) > 0);
    // b dies with its pooled connections; the next requests still all succeed.
    b.kill();
    for _ in 0..10 {
        for s in get_on_all(&mut clients).await {
            assert_eq!(s, 200);
        }
    }
    // Replaced on the same address: it gets traffic again, still no failure.
    let b2 = KillableTarget::start("b2", b.addr).await;
    for _ in 0..10 {
        for s in get_on_all(&mut clients).await {
            assert_eq!(s, 200);
        }
    }
    assert!(b2.requests.load(Ordering::SeqCst) > 0);
    a.kill();
    for _ in 0..10 {
        for s in get_on_all(&mut clients).await {
            assert_eq!(s, 200);
        }
    }
    drop(lb);
}

/// One GET on every client, concurrently; their statuses.
async fn get_on_all(clients: &mut [Client]) -> Vec<StatusCode> {
    futures::future::join_all(
        clients
            .iter_mut()
            .map(|c| async move { c.get("/", &[]).await.0 }),
    )
    .await
}
