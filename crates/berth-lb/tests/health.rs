//! Health checking on paused tokio time against real local TCP servers: the
//! transitions happen at the intervals ALB would make them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_lb::checker::{probe, CheckSpec};
use berth_lb::health::{CodeMatcher, Outcome};
use berth_lb::{Lb, LbOptions, RoutingConfig, TargetConfig, TargetGroupConfig, TargetKey};
use berth_model::elb::{Matcher, TargetGroup, TargetGroupRecord, TargetHealth};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

type ProbeSeen = (String, String, String, String);

const TG: &str = "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/web/1";

/// A target whose health endpoint answers with `code`; counts probes and records
/// the last request's headers.
struct Target {
    addr: SocketAddr,
    code: Arc<AtomicU16>,
    probes: Arc<AtomicUsize>,
    /// (uri, host, user-agent, connection) of the last probe.
    last: Arc<std::sync::Mutex<Option<ProbeSeen>>>,
}

async fn target() -> Target {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let code = Arc::new(AtomicU16::new(200));
    let probes = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(std::sync::Mutex::new(None));
    let (c, p, la) = (code.clone(), probes.clone(), last.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (c, p, la) = (c.clone(), p.clone(), la.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    p.fetch_add(1, Ordering::SeqCst);
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .map(|v| v.to_str().unwrap_or("").to_string())
                            .unwrap_or_default()
                    };
                    *la.lock().unwrap() = Some((
                        req.uri().to_string(),
                        h("host"),
                        h("user-agent"),
                        h("connection"),
                    ));
                    let code = c.load(Ordering::SeqCst);
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(code)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Target {
        addr,
        code,
        probes,
        last,
    }
}

fn tg(interval: u32, healthy: u32, unhealthy: u32, path: &str) -> TargetGroup {
    TargetGroup {
        target_group_arn: TG.into(),
        health_check_enabled: true,
        health_check_port: "traffic-port".into(),
        health_check_path: path.into(),
        health_check_interval_seconds: interval,
        health_check_timeout_seconds: 5,
        healthy_threshold_count: healthy,
        unhealthy_threshold_count: unhealthy,
        matcher: Matcher {
            http_code: Some("200".into()),
            grpc_code: None,
        },
        ..Default::default()
    }
}

fn cfg(group: TargetGroup, targets: &[(SocketAddr, bool)]) -> RoutingConfig {
    RoutingConfig {
        listeners: vec![],
        target_groups: HashMap::from([(
            TG.to_string(),
            TargetGroupConfig {
                record: TargetGroupRecord {
                    target_group: group,
                    attributes: vec![],
                },
                targets: targets
                    .iter()
                    .map(|(a, d)| TargetConfig {
                        id: "i-1".into(),
                        port: a.port(),
                        addr: *a,
                        draining: *d,
                        registration: 0,
                    })
                    .collect(),
            },
        )]),
    }
}

fn opts() -> LbOptions {
    LbOptions {
        bind: "127.0.0.1".parse().unwrap(),
        health_checks: true,
        ..Default::default()
    }
}

/// Waits for the target's health to satisfy `f`; returns it and the (virtual) time.
async fn wait_health(
    rx: &mut watch::Receiver<HashMap<TargetKey, TargetHealth>>,
    key: &TargetKey,
    f: impl Fn(&TargetHealth) -> bool,
) -> (TargetHealth, Instant) {
    let h = tokio::time::timeout(
        Duration::from_secs(3600),
        rx.wait_for(|m| m.get(key).is_some_and(&f)),
    )
    .await
    .expect("transition within the deadline")
    .expect("lb alive")
    .get(key)
    .cloned()
    .unwrap();
    (h, Instant::now())
}

#[tokio::test(start_paused = true)]
async fn checker_drives_transitions_by_interval() {
    let t = target().await;
    let lb = Lb::new(opts());
    let mut rx = lb.health();
    let t0 = Instant::now();
    lb.apply(cfg(tg(30, 3, 2, "/health"), &[(t.addr, false)]))
        .await;
    let key: TargetKey = (TG.into(), "i-1".into(), t.addr.port());

    // The first probe runs at once, so 3 successes take 2 intervals, not 3.
    let (h, at) = wait_health(&mut rx, &key, |h| h.state == "healthy").await;
    assert_eq!(h, TargetHealth::healthy());
    let secs = (at - t0).as_secs_f64();
    assert!((59.0..61.0).contains(&secs), "healthy after {secs}s");
    assert_eq!(t.probes.load(Ordering::SeqCst), 3);
    let (uri, host, ua, conn) = t.last.lock().unwrap().clone().unwrap();
    assert_eq!(uri, "/health");
    assert_eq!(host, t.addr.to_string());
    assert_eq!(ua, "ELB-HealthChecker/2.0");
    assert_eq!(conn, "close");

    // Starts failing: unhealthy after 2 failed probes (t = 90, 120).
    t.code.store(503, Ordering::SeqCst);
    let (h, at) = wait_health(&mut rx, &key, |h| h.state == "unhealthy").await;
    assert_eq!(h.reason.as_deref(), Some("Target.ResponseCodeMismatch"));
    assert_eq!(
        h.description.as_deref(),
        Some("Health checks failed with these codes: [503]")
    );
    let secs = (at - t0).as_secs_f64();
    assert!((119.0..121.0).contains(&secs), "unhealthy after {secs}s");

    // A new apply with the same settings keeps the state (no restart).
    lb.apply(cfg(tg(30, 3, 2, "/health"), &[(t.addr, false)]))
        .await;
    assert_eq!(rx.borrow()[&key].state, "unhealthy");
    // Changed settings restart the checker (an immediate probe) but keep the state.
    let before = t.probes.load(Ordering::SeqCst);
    lb.apply(cfg(tg(10, 2, 2, "/ready"), &[(t.addr, false)]))
        .await;
    assert_eq!(rx.borrow()[&key].state, "unhealthy");
    t.code.store(200, Ordering::SeqCst);
    let t1 = Instant::now();
    let (_, at) = wait_health(&mut rx, &key, |h| h.state == "healthy").await;
    let secs = (at - t1).as_secs_f64();
    assert!((9.0..11.0).contains(&secs), "healthy again after {secs}s");
    assert!(t.probes.load(Ordering::SeqCst) - before >= 2);
    assert_eq!(t.last.lock().unwrap().clone().unwrap().0, "/ready");

    // Deregistered: draining, no more probes.
    lb.apply(cfg(tg(10, 2, 2, "/ready"), &[(t.addr, true)]))
        .await;
    assert_eq!(rx.borrow()[&key], TargetHealth::draining());
    let probes = t.probes.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(t.probes.load(Ordering::SeqCst), probes);

    // Removed: gone from the map.
    lb.apply(cfg(tg(10, 2, 2, "/ready"), &[])).await;
    assert!(!rx.borrow().contains_key(&key));
    lb.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn refused_target_goes_unhealthy_from_initial() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let lb = Lb::new(opts());
    let mut rx = lb.health();
    lb.apply(cfg(tg(5, 3, 2, "/"), &[(dead, false)])).await;
    let key: TargetKey = (TG.into(), "i-1".into(), dead.port());
    let (h, _) = wait_health(&mut rx, &key, |h| {
        h.reason.as_deref() == Some("Elb.InitialHealthChecking")
    })
    .await;
    assert_eq!(h.state, "initial");
    let (h, _) = wait_health(&mut rx, &key, |h| h.state == "unhealthy").await;
    assert_eq!(h.reason.as_deref(), Some("Target.FailedHealthChecks"));
    assert_eq!(h.description.as_deref(), Some("Health checks failed"));

    // Health checks disabled: unavailable, and routed as healthy.
    let mut off = tg(5, 3, 2, "/");
    off.health_check_enabled = false;
    lb.apply(cfg(off, &[(dead, false)])).await;
    assert_eq!(rx.borrow()[&key].state, "unavailable");
    assert_eq!(
        rx.borrow()[&key].reason.as_deref(),
        Some("Target.HealthCheckDisabled")
    );
}

#[tokio::test(start_paused = true)]
async fn probe_times_out_on_a_silent_target() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let spec = CheckSpec {
        addr,
        path: "/".into(),
        interval: Duration::from_secs(30),
        timeout: Duration::from_secs(5),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
        matcher: CodeMatcher::parse(None),
    };
    let t0 = Instant::now();
    assert_eq!(probe(&spec).await, Outcome::Timeout);
    assert_eq!((Instant::now() - t0).as_secs(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_target_registered_again_under_the_same_key_starts_over() {
    let t = target().await;
    let lb = Lb::new(opts());
    let mut rx = lb.health();
    let key: TargetKey = (TG.into(), "i-1".into(), t.addr.port());
    let with_registration = |registration: u64| {
        let mut c = cfg(tg(10, 3, 2, "/health"), &[(t.addr, false)]);
        for g in c.target_groups.values_mut() {
            for x in &mut g.targets {
                x.registration = registration;
            }
        }
        c
    };
    lb.apply(with_registration(1)).await;
    wait_health(&mut rx, &key, |h| h.state == "healthy").await;
    // The same key and address, another registration (a new task on a reused port):
    // not the old target's verdict, a fresh check.
    lb.apply(with_registration(2)).await;
    assert_eq!(
        rx.borrow()[&key].state,
        "initial",
        "{:?}",
        rx.borrow()[&key]
    );
    let t1 = Instant::now();
    let (_, at) = wait_health(&mut rx, &key, |h| h.state == "healthy").await;
    let secs = (at - t1).as_secs_f64();
    assert!((19.0..21.0).contains(&secs), "healthy again after {secs}s");
}
