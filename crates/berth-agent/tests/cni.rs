//! The CNI network against the distribution's real plugins, real namespaces and iptables.
//! Needs root and /usr/lib/cni; skips (with the reason printed) otherwise.
//!
//! Uses its own bridge (`berthtest0`) and subnet (`172.29.0.0/16`) so it never disturbs the
//! agent's default network; all tests of this binary share one IPAM dir (they run in
//! parallel on one bridge, so they must draw from one pool).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use berth_agent::cni::{Cni, CniConfig};
use berth_agent::netns;
use berth_agent::network::{Network, NetworkMode, PortForward, Protocol, TaskNetwork};
use berth_agent::ports::PortAllocator;

const PLUGIN_DIR: &str = "/usr/lib/cni";

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    for p in ["bridge", "host-local", "portmap", "loopback"] {
        if !Path::new(PLUGIN_DIR).join(p).is_file() {
            return Some(format!("CNI plugin {PLUGIN_DIR}/{p} absent"));
        }
    }
    if Command::new("iptables").arg("--version").output().is_err() {
        return Some("iptables absent".into());
    }
    None
}

macro_rules! require_root {
    () => {
        if let Some(why) = skip_reason() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

fn data_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
}

fn config() -> CniConfig {
    CniConfig {
        plugin_dir: PLUGIN_DIR.into(),
        bridge: "berthtest0".into(),
        subnet: "172.29.0.0/16".into(),
        ..CniConfig::with_data_dir(data_dir())
    }
}

fn task_id(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Listen on 0.0.0.0:`port` inside `ns` and answer every connection with `reply`.
fn serve_in(ns: &Path, port: u16, reply: &'static str) {
    let listener = netns::run_in_netns(ns, || TcpListener::bind(("0.0.0.0", port)))
        .expect("enter netns")
        .expect("bind inside the task namespace");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = c.write_all(reply.as_bytes());
        }
    });
}

/// Connect and read the whole reply, retrying until `deadline`.
fn fetch(addr: SocketAddr, deadline: Duration) -> Result<String, String> {
    let until = Instant::now() + deadline;
    let mut last = String::new();
    while Instant::now() < until {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let mut buf = String::new();
                match s.read_to_string(&mut buf) {
                    Ok(_) if !buf.is_empty() => return Ok(buf),
                    Ok(_) => last = "empty reply".into(),
                    Err(e) => last = e.to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{addr}: {last}"))
}

fn nat_rules() -> String {
    let out = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .expect("iptables");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether any nat rule matches destination port `port`.
fn has_dnat_for(port: u16) -> bool {
    let p = port.to_string();
    nat_rules().lines().any(|l| {
        let t: Vec<&str> = l.split_whitespace().collect();
        t.windows(2)
            .any(|w| (w[0] == "--dport" || w[0] == "--dports") && w[1].split(',').any(|x| x == p))
    })
}

fn interfaces_in(ns: &Path) -> Vec<String> {
    netns::run_in_netns(ns, || {
        // /proc/thread-self/net is the calling thread's namespace (/proc/self/net is the
        // main thread's).
        std::fs::read_to_string("/proc/thread-self/net/dev").expect("net/dev")
    })
    .expect("enter netns")
    .lines()
    .skip(2)
    .filter_map(|l| l.split(':').next().map(|s| s.trim().to_string()))
    .collect()
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect(args[0]);
    assert!(st.success(), "{args:?} failed");
}

/// A second "machine": a namespace joined to the host by a veth pair.
struct Peer {
    ns: PathBuf,
    host_if: String,
    host_ip: String,
}

impl Peer {
    fn new() -> Peer {
        let n = std::process::id() % 100_000;
        let name = format!("berthtest-peer-{n}");
        let ns = netns::create(Path::new(netns::DEFAULT_NETNS_DIR), &name).expect("peer netns");
        let host_if = format!("btp{n}h");
        let peer_if = format!("btp{n}p");
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let octet = (n % 250) + 1;
        let host_ip = format!("10.251.{octet}.1");
        let peer_ip = format!("10.251.{octet}.2/30");
        sh(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        sh(&["ip", "link", "set", &peer_if, "netns", &name]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_if,
        ]);
        sh(&["ip", "link", "set", &host_if, "up"]);
        sh(&["ip", "-n", &name, "addr", "add", &peer_ip, "dev", &peer_if]);
        sh(&["ip", "-n", &name, "link", "set", &peer_if, "up"]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Peer {
            ns,
            host_if,
            host_ip,
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = netns::remove(&self.ns);
    }
}

#[test]
fn bridge_mode_forwards_a_dynamic_host_port() {
    require_root!();
    let rt = rt();
    let cni = Cni::new(config());
    let id = task_id("bridge");
    let mut ports = PortAllocator::default();
    let host_port = ports.allocate(Protocol::Tcp).expect("dynamic port");
    let fwd = [PortForward {
        host_port,
        container_port: 8080,
        protocol: Protocol::Tcp,
    }];
    let net: TaskNetwork = rt
        .block_on(cni.setup(&id, NetworkMode::Bridge, &fwd))
        .expect("setup");
    let ns = net.netns.clone().expect("netns path");
    assert_eq!(ns, Path::new("/run/netns").join(format!("berth-{id}")));
    assert!(netns::is_netns(&ns));
    // Mounted where containerd (PID 1's mount namespace) sees it, even when this test runs
    // under `ip netns exec`, which gives it a private mount namespace.
    let pid1_mounts = std::fs::read_to_string("/proc/1/mountinfo").unwrap_or_default();
    assert!(
        pid1_mounts.contains(&format!(" {} ", ns.display())),
        "{} is not mounted in PID 1's mount namespace",
        ns.display()
    );
    let ipv4 = net.ipv4.clone().expect("ipv4");
    assert!(ipv4.starts_with("172.29."), "{ipv4}");
    assert!(!ipv4.contains('/'));
    let gateway = net.gateway.clone().expect("gateway");
    assert_eq!(gateway, "172.29.0.1");
    assert_eq!(net.forwards, fwd);

    // Idempotent.
    let again = rt
        .block_on(cni.setup(&id, NetworkMode::Bridge, &fwd))
        .expect("second setup");
    assert_eq!(again, net);

    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );
    let mut names = interfaces_in(&ns);
    names.sort();
    assert_eq!(names, ["eth0", "lo"]);

    serve_in(&ns, 8080, "hello from bridge\n");
    let deadline = Duration::from_secs(10);
    // From the host, through localhost (needs portmap's SNAT and route_localnet).
    let local: SocketAddr = format!("127.0.0.1:{host_port}").parse().unwrap();
    assert_eq!(fetch(local, deadline).unwrap(), "hello from bridge\n");
    // From the host, through the bridge's address.
    let gw: SocketAddr = format!("{gateway}:{host_port}").parse().unwrap();
    assert_eq!(fetch(gw, deadline).unwrap(), "hello from bridge\n");
    // From another machine, through the host's address on the link between them
    // (PREROUTING DNAT, then forwarding into the bridge).
    let peer = Peer::new();
    let remote: SocketAddr = format!("{}:{host_port}", peer.host_ip).parse().unwrap();
    let got = netns::run_in_netns(&peer.ns, || fetch(remote, deadline)).expect("peer netns");
    assert_eq!(got.unwrap(), "hello from bridge\n");
    drop(peer);

    assert!(
        has_dnat_for(host_port),
        "no DNAT rule for {host_port}:\n{}",
        nat_rules()
    );
    // Teardown from a fresh instance, as after an agent restart (uses the cached result).
    let cni2 = Cni::new(config());
    rt.block_on(cni2.teardown(&id, &net)).expect("teardown");
    ports.release(host_port, Protocol::Tcp);
    assert!(!ns.exists(), "{} still exists", ns.display());
    assert!(
        !has_dnat_for(host_port),
        "DNAT rule for {host_port} left:\n{}",
        nat_rules()
    );
    assert!(fetch(local, Duration::from_millis(300)).is_err());
    rt.block_on(cni2.teardown(&id, &net))
        .expect("second teardown");
}

#[test]
fn awsvpc_mode_address_is_reachable_from_the_host() {
    require_root!();
    let rt = rt();
    let cni = Cni::new(config());
    let id = task_id("awsvpc");
    let net = rt
        .block_on(cni.setup(&id, NetworkMode::Awsvpc, &[]))
        .expect("setup");
    let ns = net.netns.clone().expect("netns");
    let ipv4 = net.ipv4.clone().expect("ipv4");
    assert!(net.forwards.is_empty());
    serve_in(&ns, 8080, "hello from awsvpc\n");
    let addr: SocketAddr = format!("{ipv4}:8080").parse().unwrap();
    assert_eq!(
        fetch(addr, Duration::from_secs(10)).unwrap(),
        "hello from awsvpc\n"
    );
    rt.block_on(cni.teardown(&id, &net)).expect("teardown");
    assert!(!ns.exists());
    rt.block_on(cni.teardown(&id, &net))
        .expect("second teardown");
}

#[test]
fn none_mode_has_only_loopback() {
    require_root!();
    let rt = rt();
    let cni = Cni::new(config());
    let id = task_id("none");
    let net = rt
        .block_on(cni.setup(&id, NetworkMode::None, &[]))
        .expect("setup");
    assert_eq!(net.ipv4, None);
    let ns = net.netns.clone().expect("netns");
    assert_eq!(interfaces_in(&ns), ["lo"]);
    // lo is up: a loopback connection inside the namespace works.
    let ok = netns::run_in_netns(&ns, || {
        let l = TcpListener::bind("127.0.0.1:0")?;
        TcpStream::connect(l.local_addr()?).map(|_| ())
    })
    .expect("enter netns");
    assert!(ok.is_ok(), "{ok:?}");
    rt.block_on(cni.teardown(&id, &net)).expect("teardown");
    assert!(!ns.exists());
    rt.block_on(cni.teardown(&id, &net))
        .expect("second teardown");
}

#[test]
fn host_mode_creates_nothing() {
    require_root!();
    let rt = rt();
    let cni = Cni::new(config());
    let id = task_id("host");
    let net = rt
        .block_on(cni.setup(&id, NetworkMode::Host, &[]))
        .expect("setup");
    assert_eq!(net.netns, None);
    assert!(!cni.netns_path(&id).exists());
    rt.block_on(cni.teardown(&id, &net)).expect("teardown");
}

#[test]
fn plugin_errors_are_reported() {
    require_root!();
    let rt = rt();
    // An invalid subnet: host-local refuses it; the error carries the plugin's message and
    // nothing is left behind.
    let cni = Cni::new(CniConfig {
        subnet: "not-a-subnet".into(),
        ..config()
    });
    let id = task_id("bad");
    let err = rt
        .block_on(cni.setup(&id, NetworkMode::Awsvpc, &[]))
        .unwrap_err();
    match &err {
        berth_agent::network::NetworkError::Plugin {
            plugin,
            command,
            message,
        } => {
            assert_eq!(command, "ADD", "{err:?}");
            assert_eq!(plugin, "bridge", "{err:?}");
            assert!(!message.is_empty());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!cni.netns_path(&id).exists());
}

#[test]
fn setup_recovers_from_a_namespace_left_without_a_cached_result() {
    require_root!();
    let rt = rt();
    let cni = Cni::new(config());
    let id = task_id("stale");
    let net = rt
        .block_on(cni.setup(&id, NetworkMode::Awsvpc, &[]))
        .expect("setup");
    // As if the agent died after ADD but before caching the result.
    std::fs::remove_file(config().cache_dir.join(format!("{id}.json"))).unwrap();
    let again = rt
        .block_on(cni.setup(&id, NetworkMode::Awsvpc, &[]))
        .expect("setup over a stale namespace");
    let ns = again.netns.clone().unwrap();
    let mut names = interfaces_in(&ns);
    names.sort();
    assert_eq!(names, ["eth0", "lo"]);
    assert!(again.ipv4.is_some());
    rt.block_on(cni.teardown(&id, &again)).expect("teardown");
    assert!(!ns.exists());
    let _ = net;
}
