//! Host ports for bridge-mode tasks: dynamic ports from a range (ECS's 49153–65535 by
//! default) and the static `hostPort`s a task definition asks for.
//!
//! The allocator mirrors the ECS agent's `safePortTracker`: a cursor that always moves on
//! past the last port it handed out and wraps at the end of the range, so a port that was
//! just released (and whose old connections may still linger in a client's pool or a load
//! balancer's target list) is not handed out again until the whole range has cycled. On top
//! of that, the last few released ports sit in a quarantine that is skipped while any other
//! port is free — this matters after a wrap or with a small range.
//!
//! The decisions are plain functions of the allocator's state plus one probe ("is this port
//! free on the host right now?"); the probe binds `0.0.0.0:<port>` in the agent's current
//! network namespace and is replaceable in tests.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::ops::RangeInclusive;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::network::Protocol;

/// ECS's default dynamic host port range.
pub const DEFAULT_RANGE: RangeInclusive<u16> = 49153..=65535;
/// How many recently released ports are kept out of circulation while others are free.
pub const DEFAULT_QUARANTINE: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Every port of the dynamic range is held, reserved or in use on the host.
    #[error("no free {} host port left in the dynamic range {start}-{end}", protocol_name(*.protocol))]
    Exhausted {
        protocol: Protocol,
        start: u16,
        end: u16,
    },
    /// A static host port is held by another task or bound by some process on the host.
    #[error("port {port}/{} is already in use on this host", protocol_name(*.protocol))]
    InUse { port: u16, protocol: Protocol },
    /// A static host port is in the agent's reserved list.
    #[error("port {port}/{} is reserved on this host", protocol_name(*.protocol))]
    Reserved { port: u16, protocol: Protocol },
    #[error("host port 0 is not a port; ask for a dynamic port instead")]
    Zero,
}

/// `tcp` / `udp`, as in messages and iptables rules.
pub fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// What must survive an agent restart. The range and reserved list are configuration and
/// come from the new process's config, not from here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PortState {
    /// The last dynamic port handed out; the next search starts after it.
    pub cursor: Option<u16>,
    pub held: Vec<(u16, Protocol)>,
    /// Oldest first.
    pub quarantine: Vec<(u16, Protocol)>,
}

/// Returns true when `port`/`protocol` can be bound on the host right now.
pub type Probe = Arc<dyn Fn(u16, Protocol) -> bool + Send + Sync>;

pub struct PortAllocator {
    start: u16,
    end: u16,
    reserved: BTreeSet<u16>,
    quarantine_len: usize,
    cursor: Option<u16>,
    held: BTreeSet<(u16, Protocol)>,
    quarantine: VecDeque<(u16, Protocol)>,
    probe: Probe,
}

impl fmt::Debug for PortAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortAllocator")
            .field("range", &(self.start..=self.end))
            .field("reserved", &self.reserved)
            .field("cursor", &self.cursor)
            .field("held", &self.held)
            .field("quarantine", &self.quarantine)
            .finish()
    }
}

impl Default for PortAllocator {
    fn default() -> Self {
        PortAllocator::new(DEFAULT_RANGE, &[])
    }
}

/// Binds `0.0.0.0:<port>` (and drops it at once) to see whether the port is free in the
/// current network namespace.
pub fn port_free_on_host(port: u16, protocol: Protocol) -> bool {
    let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
    match protocol {
        Protocol::Tcp => TcpListener::bind(addr).is_ok(),
        Protocol::Udp => UdpSocket::bind(addr).is_ok(),
    }
}

impl PortAllocator {
    /// `range` is the dynamic range (inclusive); `reserved` ports are never handed out
    /// dynamically nor accepted as static ports, for either protocol. An empty or inverted
    /// range is normalised to the single port `range.start()` (config validation is the
    /// place to reject it with a message).
    pub fn new(range: RangeInclusive<u16>, reserved: &[u16]) -> Self {
        let start = (*range.start()).max(1);
        let end = (*range.end()).max(start);
        PortAllocator {
            start,
            end,
            reserved: reserved.iter().copied().collect(),
            quarantine_len: DEFAULT_QUARANTINE,
            cursor: None,
            held: BTreeSet::new(),
            quarantine: VecDeque::new(),
            probe: Arc::new(port_free_on_host),
        }
    }

    /// How many recently released ports to keep out of circulation (0 disables).
    pub fn with_quarantine(mut self, len: usize) -> Self {
        self.quarantine_len = len;
        while self.quarantine.len() > len {
            self.quarantine.pop_front();
        }
        self
    }

    /// Replace the host probe (tests; or a probe that runs in another namespace).
    pub fn with_probe(
        mut self,
        probe: impl Fn(u16, Protocol) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.probe = Arc::new(probe);
        self
    }

    pub fn range(&self) -> RangeInclusive<u16> {
        self.start..=self.end
    }

    /// A dynamic host port: the first port after the cursor (wrapping) that is not reserved,
    /// not held, not in quarantine and free on the host. Quarantined ports are only used
    /// when nothing else is left.
    pub fn allocate(&mut self, protocol: Protocol) -> Result<u16, PortError> {
        let n = u32::from(self.end - self.start) + 1;
        // Index of the cursor within the range; the search starts just after it.
        let from = match self.cursor {
            Some(c) if (self.start..=self.end).contains(&c) => u32::from(c - self.start),
            _ => n - 1,
        };
        for allow_quarantined in [false, true] {
            for i in 1..=n {
                let port = self.start + ((from + i) % n) as u16;
                if self.reserved.contains(&port) || self.held.contains(&(port, protocol)) {
                    continue;
                }
                // First pass: everything but the quarantine; second pass: only the
                // quarantine (the rest was already probed and refused).
                if self.quarantine.contains(&(port, protocol)) != allow_quarantined {
                    continue;
                }
                if !(self.probe)(port, protocol) {
                    continue;
                }
                self.cursor = Some(port);
                self.take(port, protocol);
                return Ok(port);
            }
        }
        Err(PortError::Exhausted {
            protocol,
            start: self.start,
            end: self.end,
        })
    }

    /// Claim a host port the task definition names explicitly. Does not move the cursor.
    pub fn reserve_static(&mut self, port: u16, protocol: Protocol) -> Result<(), PortError> {
        if port == 0 {
            return Err(PortError::Zero);
        }
        if self.reserved.contains(&port) {
            return Err(PortError::Reserved { port, protocol });
        }
        if self.held.contains(&(port, protocol)) || !(self.probe)(port, protocol) {
            return Err(PortError::InUse { port, protocol });
        }
        self.take(port, protocol);
        Ok(())
    }

    /// Mark a port as held without probing the host: for ports of tasks adopted after an
    /// agent restart (in host mode the task's own process is what has the port bound).
    pub fn mark_held(&mut self, port: u16, protocol: Protocol) {
        self.take(port, protocol);
    }

    /// Give a port back. Unknown ports are ignored (teardown is idempotent).
    pub fn release(&mut self, port: u16, protocol: Protocol) {
        if !self.held.remove(&(port, protocol)) {
            return;
        }
        if self.quarantine_len == 0 {
            return;
        }
        self.quarantine.retain(|q| *q != (port, protocol));
        self.quarantine.push_back((port, protocol));
        while self.quarantine.len() > self.quarantine_len {
            self.quarantine.pop_front();
        }
    }

    pub fn is_held(&self, port: u16, protocol: Protocol) -> bool {
        self.held.contains(&(port, protocol))
    }

    pub fn snapshot(&self) -> PortState {
        PortState {
            cursor: self.cursor,
            held: self.held.iter().copied().collect(),
            quarantine: self.quarantine.iter().copied().collect(),
        }
    }

    /// Replace the allocation state with a saved one (range and reserved ports stay as
    /// configured now).
    pub fn restore(&mut self, state: PortState) {
        self.cursor = state.cursor;
        self.held = state.held.into_iter().collect();
        self.quarantine = state.quarantine.into_iter().collect();
        while self.quarantine.len() > self.quarantine_len {
            self.quarantine.pop_front();
        }
    }

    fn take(&mut self, port: u16, protocol: Protocol) {
        self.held.insert((port, protocol));
        self.quarantine.retain(|q| *q != (port, protocol));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    fn fake(range: RangeInclusive<u16>, reserved: &[u16], busy: &[u16]) -> PortAllocator {
        let busy: HashSet<u16> = busy.iter().copied().collect();
        PortAllocator::new(range, reserved).with_probe(move |p, _| !busy.contains(&p))
    }

    #[test]
    fn allocates_in_order_and_skips_reserved_and_busy() {
        let mut a = fake(100..=110, &[101], &[102]);
        assert_eq!(a.allocate(Protocol::Tcp), Ok(100));
        assert_eq!(a.allocate(Protocol::Tcp), Ok(103));
        assert_eq!(a.allocate(Protocol::Tcp), Ok(104));
        // udp is tracked separately, but the cursor is shared.
        assert_eq!(a.allocate(Protocol::Udp), Ok(105));
    }

    #[test]
    fn released_port_not_reused_before_range_cycles() {
        let mut a = fake(100..=104, &[], &[]).with_quarantine(0);
        assert_eq!(a.allocate(Protocol::Tcp), Ok(100));
        assert_eq!(a.allocate(Protocol::Tcp), Ok(101));
        a.release(100, Protocol::Tcp);
        assert_eq!(a.allocate(Protocol::Tcp), Ok(102));
        assert_eq!(a.allocate(Protocol::Tcp), Ok(103));
        assert_eq!(a.allocate(Protocol::Tcp), Ok(104));
        // The range has cycled: 100 is the next free one.
        assert_eq!(a.allocate(Protocol::Tcp), Ok(100));
    }

    #[test]
    fn quarantine_skips_just_released_after_wrap_unless_nothing_else() {
        let mut a = fake(100..=102, &[], &[]);
        assert_eq!(a.allocate(Protocol::Tcp), Ok(100));
        assert_eq!(a.allocate(Protocol::Tcp), Ok(101));
        assert_eq!(a.allocate(Protocol::Tcp), Ok(102));
        a.release(101, Protocol::Tcp);
        a.release(100, Protocol::Tcp);
        // Cursor wraps to 100, but 101 was released earlier (older in quarantine) — both
        // quarantined, so the oldest-by-position free one is used as last resort.
        let p = a.allocate(Protocol::Tcp).unwrap();
        assert!(p == 100 || p == 101);
        let mut b = fake(100..=103, &[], &[]);
        for _ in 0..4 {
            b.allocate(Protocol::Tcp).unwrap();
        }
        b.release(103, Protocol::Tcp); // quarantined
        b.release(100, Protocol::Tcp);
        b.release(100, Protocol::Tcp); // second release is a no-op
        let mut b = b.with_quarantine(1); // keep only the newest: 100
        assert_eq!(b.allocate(Protocol::Tcp), Ok(103));
    }

    #[test]
    fn exhaustion_names_the_range() {
        let mut a = fake(100..=101, &[], &[]);
        a.allocate(Protocol::Tcp).unwrap();
        a.allocate(Protocol::Tcp).unwrap();
        let err = a.allocate(Protocol::Tcp).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no free tcp host port left in the dynamic range 100-101"
        );
        // UDP has its own ports.
        assert!(a.allocate(Protocol::Udp).is_ok());
    }

    #[test]
    fn static_ports() {
        let mut a = fake(100..=110, &[22], &[8081]);
        a.reserve_static(8080, Protocol::Tcp).unwrap();
        assert_eq!(
            a.reserve_static(8080, Protocol::Tcp)
                .unwrap_err()
                .to_string(),
            "port 8080/tcp is already in use on this host"
        );
        assert!(a.reserve_static(8080, Protocol::Udp).is_ok());
        assert_eq!(
            a.reserve_static(8081, Protocol::Tcp),
            Err(PortError::InUse {
                port: 8081,
                protocol: Protocol::Tcp
            })
        );
        assert_eq!(
            a.reserve_static(22, Protocol::Tcp),
            Err(PortError::Reserved {
                port: 22,
                protocol: Protocol::Tcp
            })
        );
        assert_eq!(a.reserve_static(0, Protocol::Tcp), Err(PortError::Zero));
        // A static port inside the dynamic range is not handed out dynamically.
        a.reserve_static(100, Protocol::Tcp).unwrap();
        assert_eq!(a.allocate(Protocol::Tcp), Ok(101));
    }

    #[test]
    fn real_probe_sees_a_bound_port() {
        let l = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut a = PortAllocator::new(port..=port, &[]);
        assert!(!port_free_on_host(port, Protocol::Tcp));
        assert!(matches!(
            a.allocate(Protocol::Tcp),
            Err(PortError::Exhausted { .. })
        ));
        assert_eq!(
            a.reserve_static(port, Protocol::Tcp),
            Err(PortError::InUse {
                port,
                protocol: Protocol::Tcp
            })
        );
        drop(l);
        assert_eq!(a.allocate(Protocol::Tcp), Ok(port));
    }

    #[test]
    fn snapshot_restore_round_trip() {
        let mut a = fake(100..=110, &[], &[]);
        a.allocate(Protocol::Tcp).unwrap();
        let p = a.allocate(Protocol::Tcp).unwrap();
        a.reserve_static(8080, Protocol::Udp).unwrap();
        a.release(p, Protocol::Tcp);
        let json = serde_json::to_string(&a.snapshot()).unwrap();
        let mut b = fake(100..=110, &[], &[]);
        b.restore(serde_json::from_str(&json).unwrap());
        assert_eq!(a.snapshot(), b.snapshot());
        assert!(b.is_held(8080, Protocol::Udp));
        assert_eq!(b.allocate(Protocol::Tcp), Ok(102));
        b.mark_held(103, Protocol::Tcp);
        assert_eq!(b.allocate(Protocol::Tcp), Ok(104));
        // An empty state (first start) parses from `{}`.
        let empty: PortState = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, PortState::default());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(Protocol),
        Release(usize),
        Static(u16, Protocol),
        Busy(u16),
    }

    fn proto() -> impl Strategy<Value = Protocol> {
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => proto().prop_map(Op::Alloc),
            3 => any::<usize>().prop_map(Op::Release),
            1 => (95u16..=125, proto()).prop_map(|(p, pr)| Op::Static(p, pr)),
            1 => (100u16..=120).prop_map(Op::Busy),
        ]
    }

    proptest! {
        #[test]
        fn never_double_allocates_and_respects_reserved_busy_and_release(
            reserved in proptest::collection::vec(100u16..=120, 0..4),
            ops in proptest::collection::vec(op(), 1..200),
            quarantine in 0usize..4,
        ) {
            let busy: Arc<Mutex<HashSet<u16>>> = Arc::default();
            let b2 = busy.clone();
            let mut a = PortAllocator::new(100..=120, &reserved)
                .with_quarantine(quarantine)
                .with_probe(move |p, _| !b2.lock().unwrap().contains(&p));
            let mut held: Vec<(u16, Protocol)> = Vec::new();
            // The model of the quarantine: the last `quarantine` releases not taken again.
            let mut recent: std::collections::VecDeque<(u16, Protocol)> = Default::default();
            for op in ops {
                match op {
                    Op::Alloc(pr) => {
                        let free: Vec<u16> = (100..=120u16)
                            .filter(|p| !reserved.contains(p)
                                && !held.contains(&(*p, pr))
                                && !busy.lock().unwrap().contains(p))
                            .collect();
                        match a.allocate(pr) {
                            Ok(p) => {
                                prop_assert!((100..=120).contains(&p));
                                prop_assert!(!held.contains(&(p, pr)), "double allocation of {p}");
                                prop_assert!(!reserved.contains(&p));
                                prop_assert!(!busy.lock().unwrap().contains(&p));
                                if recent.contains(&(p, pr)) {
                                    prop_assert!(
                                        free.iter().all(|f| recent.contains(&(*f, pr))),
                                        "reused recently released {} while {:?} were free", p, free
                                    );
                                }
                                recent.retain(|r| *r != (p, pr));
                                held.push((p, pr));
                            }
                            Err(PortError::Exhausted { .. }) => prop_assert!(free.is_empty(), "exhausted with free {:?}", free),
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Release(i) => {
                        if !held.is_empty() {
                            let (p, pr) = held.remove(i % held.len());
                            a.release(p, pr);
                            recent.retain(|r| *r != (p, pr));
                            recent.push_back((p, pr));
                            while recent.len() > quarantine { recent.pop_front(); }
                        }
                    }
                    Op::Static(p, pr) => {
                        let r = a.reserve_static(p, pr);
                        let expect_ok = !reserved.contains(&p)
                            && !held.contains(&(p, pr))
                            && !busy.lock().unwrap().contains(&p);
                        prop_assert_eq!(r.is_ok(), expect_ok, "static {} {:?}", p, r);
                        if r.is_ok() {
                            recent.retain(|r| *r != (p, pr));
                            held.push((p, pr));
                        }
                    }
                    Op::Busy(p) => { busy.lock().unwrap().insert(p); }
                }
                let mut model: Vec<_> = held.clone();
                model.sort();
                prop_assert_eq!(a.snapshot().held, model);
            }
        }

        /// With no quarantine, a released port comes back only after every other free port
        /// of the range has been handed out once more (the cursor has to come round).
        #[test]
        fn released_port_waits_for_the_cursor(n_first in 1usize..20, release_idx in any::<usize>()) {
            let mut a = fake(100..=119, &[], &[]).with_quarantine(0);
            let first: Vec<u16> = (0..n_first).map(|_| a.allocate(Protocol::Tcp).unwrap()).collect();
            let r = first[release_idx % first.len()];
            a.release(r, Protocol::Tcp);
            // Ports after the cursor come first.
            for expected in (100 + n_first as u16)..=119 {
                prop_assert_eq!(a.allocate(Protocol::Tcp), Ok(expected));
            }
            prop_assert_eq!(a.allocate(Protocol::Tcp), Ok(r));
        }
    }
}
