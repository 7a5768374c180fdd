//! A load balancer in front of a trivial hyper backend, for `wrk`:
//! `cargo run --release -p berth-lb --example lb_bench -- <lb port> <backend port>`,
//! then `wrk -c50 -d10s http://127.0.0.1:<lb port>/` and compare with the backend
//! directly. Prints the backend's connection count on Ctrl-C.
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use berth_lb::{Lb, LbOptions, ListenerConfig, RoutingConfig, TargetConfig, TargetGroupConfig};
use berth_model::elb::{Action, Rule};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() {
    let args: Vec<u16> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (lb_port, be_port) = (
        args.first().copied().unwrap_or(8080),
        args.get(1).copied().unwrap_or(8081),
    );
    let l = tokio::net::TcpListener::bind(("127.0.0.1", be_port))
        .await
        .expect("backend port");
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::Relaxed);
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"hello world\n",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let tg = "tg".to_string();
    let addr = ([127, 0, 0, 1], be_port).into();
    let cfg = RoutingConfig {
        listeners: vec![ListenerConfig {
            listener_arn: "l".into(),
            port: lb_port,
            rules: vec![Rule {
                rule_arn: "d".into(),
                priority: "default".into(),
                actions: vec![Action {
                    action_type: "forward".into(),
                    target_group_arn: Some(tg.clone()),
                    ..Default::default()
                }],
                is_default: true,
                conditions: vec![],
            }],
            idle_timeout: None,
        }],
        target_groups: HashMap::from([(
            tg,
            TargetGroupConfig {
                record: Default::default(),
                targets: vec![TargetConfig {
                    id: "t".into(),
                    port: be_port,
                    addr,
                    draining: false,
                    registration: 0,
                }],
            },
        )]),
    };
    let lb = Lb::new(LbOptions {
        bind: "127.0.0.1".parse().unwrap(),
        health_checks: false,
        ..Default::default()
    });
    let errs = lb.apply(cfg).await;
    assert!(errs.is_empty(), "{errs:?}");
    println!("lb on {lb_port}, backend on {be_port}");
    let _ = tokio::signal::ctrl_c().await;
    println!("backend connections: {}", conns.load(Ordering::Relaxed));
}
