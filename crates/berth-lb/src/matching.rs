//! Rule conditions, compiled once per routing table and matched per request on
//! borrowed data (no allocation, no regex).
//!
//! ALB semantics: every condition of a rule must match (AND); the values of one
//! condition are alternatives (OR). `path-pattern` is case-sensitive and sees the
//! path only; `host-header`, `http-header` values and `query-string` are
//! case-insensitive; `http-request-method` is exact; `source-ip` is a list of CIDRs.

use std::net::IpAddr;

use berth_model::elb::RuleCondition;
use hyper::header::{HeaderMap, HeaderName};

/// `*` matches any run of characters (including none), `?` exactly one character.
/// With `ci`, `pattern` must already be ASCII-lowercase and `text` is compared
/// ignoring ASCII case. Iterative with single-star backtracking: O(len(p)·len(t))
/// worst case, linear in the common cases, and no allocation.
pub fn wildcard_match(pattern: &str, text: &str, ci: bool) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Position after the last `*` seen in the pattern, and the text position it
    // is currently assumed to cover up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    pi += 1;
                    star = Some((pi, ti));
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti += utf8_len(t[ti]);
                    continue;
                }
                c => {
                    let tc = if ci {
                        t[ti].to_ascii_lowercase()
                    } else {
                        t[ti]
                    };
                    if c == tc {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
            }
        }
        // Mismatch: let the last star swallow one more character and retry.
        match star {
            Some((sp, st)) => {
                let next = st + utf8_len(t[st]);
                star = Some((sp, next));
                pi = sp;
                ti = next;
            }
            None => return false,
        }
    }
    // `?` may have stepped past the end on a truncated UTF-8 char: still fine.
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

#[inline]
fn utf8_len(b: u8) -> usize {
    if b < 0x80 {
        1
    } else if b >= 0xF0 {
        4
    } else if b >= 0xE0 {
        3
    } else if b >= 0xC0 {
        2
    } else {
        1
    }
}

/// An IPv4 or IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Option<Cidr> {
        let s = s.trim();
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener) as plain IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// The host of a Host header or `:authority`, without its `:port`.
pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return match rest.find(']') {
            Some(i) => &host[..i + 2],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        Some((h, "")) => h,
        _ => host,
    }
}

/// What a request offers to conditions, all borrowed.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Host (or `:authority`) without the port.
    pub host: &'a str,
    pub headers: &'a HeaderMap,
    pub source_ip: IpAddr,
}

/// One compiled condition.
#[derive(Debug, Clone)]
pub enum Condition {
    Path(Vec<String>),
    /// Lowercased patterns.
    Host(Vec<String>),
    Header {
        name: HeaderName,
        values: Vec<String>,
    },
    /// (lowercased key pattern, lowercased value pattern)
    Query(Vec<(Option<String>, String)>),
    Method(Vec<String>),
    SourceIp(Vec<Cidr>),
    /// A condition this proxy cannot evaluate (unknown field, bad header name):
    /// the rule never matches, rather than matching too much.
    Never,
}

fn values_of(c: &RuleCondition, cfg: Option<&berth_model::elb::Values>) -> Vec<String> {
    match cfg {
        Some(v) if !v.values.is_empty() => v.values.clone(),
        _ => c.values.clone(),
    }
}

impl Condition {
    pub fn compile(c: &RuleCondition) -> Condition {
        match c.field.as_str() {
            "path-pattern" => Condition::Path(values_of(c, c.path_pattern_config.as_ref())),
            "host-header" => Condition::Host(
                values_of(c, c.host_header_config.as_ref())
                    .into_iter()
                    .map(|v| v.to_ascii_lowercase())
                    .collect(),
            ),
            "http-request-method" => {
                Condition::Method(values_of(c, c.http_request_method_config.as_ref()))
            }
            "source-ip" => {
                let vals = values_of(c, c.source_ip_config.as_ref());
                let cidrs: Vec<Cidr> = vals.iter().filter_map(|v| Cidr::parse(v)).collect();
                if cidrs.is_empty() {
                    Condition::Never
                } else {
                    Condition::SourceIp(cidrs)
                }
            }
            "http-header" => match &c.http_header_config {
                Some(h) => match HeaderName::from_bytes(h.http_header_name.trim().as_bytes()) {
                    Ok(name) => Condition::Header {
                        name,
                        values: h.values.iter().map(|v| v.to_ascii_lowercase()).collect(),
                    },
                    Err(_) => Condition::Never,
                },
                None => Condition::Never,
            },
            "query-string" => match &c.query_string_config {
                Some(q) => Condition::Query(
                    q.values
                        .iter()
                        .map(|kv| {
                            (
                                kv.key.as_ref().map(|k| k.to_ascii_lowercase()),
                                kv.value.to_ascii_lowercase(),
                            )
                        })
                        .collect(),
                ),
                None => Condition::Never,
            },
            _ => Condition::Never,
        }
    }

    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        match self {
            Condition::Path(pats) => pats.iter().any(|p| wildcard_match(p, r.path, false)),
            Condition::Host(pats) => pats.iter().any(|p| wildcard_match(p, r.host, true)),
            Condition::Method(ms) => ms.iter().any(|m| m == r.method),
            Condition::SourceIp(cidrs) => cidrs.iter().any(|c| c.contains(r.source_ip)),
            Condition::Header { name, values } => {
                r.headers.get_all(name).iter().any(|hv| match hv.to_str() {
                    Ok(s) => values.iter().any(|p| wildcard_match(p, s, true)),
                    Err(_) => false,
                })
            }
            Condition::Query(kvs) => {
                let Some(q) = r.query else { return false };
                q.split('&').filter(|s| !s.is_empty()).any(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    kvs.iter().any(|(kp, vp)| {
                        kp.as_deref().is_none_or(|kp| wildcard_match(kp, k, true))
                            && wildcard_match(vp, v, true)
                    })
                })
            }
            Condition::Never => false,
        }
    }
}

/// The numeric priority of a rule; `default` (and anything unparsable) sorts last.
pub fn priority_key(priority: &str, is_default: bool) -> u64 {
    if is_default {
        return u64::MAX;
    }
    priority.trim().parse::<u64>().unwrap_or(u64::MAX - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_model::elb::{HttpHeaderConfig, QueryStringConfig, QueryStringKeyValue, Values};
    use hyper::header::HeaderValue;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("/api/*", "/api/users", false));
        assert!(wildcard_match("/api/*", "/api/", false));
        assert!(!wildcard_match("/api/*", "/api", false));
        assert!(wildcard_match("*", "", false));
        assert!(wildcard_match("*.jpg", "/a/b/c.jpg", false));
        assert!(!wildcard_match("*.jpg", "/a/b/c.jpeg", false));
        assert!(wildcard_match("/a?c", "/abc", false));
        assert!(!wildcard_match("/a?c", "/ac", false));
        assert!(!wildcard_match("/a?c", "/abbc", false));
        assert!(wildcard_match("/a*b*c", "/axxbyyc", false));
        assert!(wildcard_match("/a*b*c", "/abcbc", false));
        assert!(!wildcard_match("/a*b*c", "/axxbyy", false));
        assert!(wildcard_match("/é?", "/éü", false));
        assert!(wildcard_match("**a", "bbba", false));
        // case
        assert!(!wildcard_match("/API/*", "/api/x", false));
        assert!(wildcard_match("api.example.com", "API.Example.COM", true));
        assert!(wildcard_match("*.example.com", "www.EXAMPLE.com", true));
        assert!(!wildcard_match("*.example.com", "example.com", true));
    }

    #[test]
    fn cidr_and_ports() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope").is_none());
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    fn view<'a>(
        method: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        host: &'a str,
        headers: &'a HeaderMap,
    ) -> RequestView<'a> {
        RequestView {
            method,
            path,
            query,
            host,
            headers,
            source_ip: "192.168.1.7".parse().unwrap(),
        }
    }

    fn cond(field: &str, values: &[&str]) -> RuleCondition {
        RuleCondition {
            field: field.into(),
            values: values.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn conditions() {
        let h = HeaderMap::new();
        let r = view("GET", "/img/a.png", Some("x=1"), "Static.Example.com", &h);
        // path: legacy Values and PathPatternConfig; query is not part of the path
        assert!(Condition::compile(&cond("path-pattern", &["/img/*"])).matches(&r));
        assert!(!Condition::compile(&cond("path-pattern", &["*x=1"])).matches(&r));
        let mut c = cond("path-pattern", &[]);
        c.path_pattern_config = Some(Values {
            values: vec!["/nope".into(), "/img/?.png".into()],
        });
        assert!(Condition::compile(&c).matches(&r));
        assert!(!Condition::compile(&cond("path-pattern", &["/IMG/*"])).matches(&r));
        // host
        let mut c = cond("host-header", &[]);
        c.host_header_config = Some(Values {
            values: vec!["static.example.COM".into()],
        });
        assert!(Condition::compile(&c).matches(&r));
        assert!(Condition::compile(&cond("host-header", &["*.example.com"])).matches(&r));
        assert!(!Condition::compile(&cond("host-header", &["api.example.com"])).matches(&r));
        // method
        assert!(Condition::compile(&cond("http-request-method", &["POST", "GET"])).matches(&r));
        assert!(!Condition::compile(&cond("http-request-method", &["get"])).matches(&r));
        // source ip
        assert!(Condition::compile(&cond("source-ip", &["192.168.0.0/16"])).matches(&r));
        assert!(!Condition::compile(&cond("source-ip", &["10.0.0.0/8"])).matches(&r));
        assert!(!Condition::compile(&cond("source-ip", &["garbage"])).matches(&r));
        // unknown field never matches
        assert!(!Condition::compile(&cond("cookie", &["*"])).matches(&r));
    }

    #[test]
    fn header_and_query() {
        let mut h = HeaderMap::new();
        h.insert(
            "user-agent",
            HeaderValue::from_static("Mozilla/5.0 (iPhone)"),
        );
        h.append("x-env", HeaderValue::from_static("prod"));
        h.append("x-env", HeaderValue::from_static("Canary"));
        let r = view("GET", "/", Some("Version=V2&debug&lang=en"), "a.b", &h);
        let hc = |name: &str, vals: &[&str]| RuleCondition {
            field: "http-header".into(),
            http_header_config: Some(HttpHeaderConfig {
                http_header_name: name.into(),
                values: vals.iter().map(|s| s.to_string()).collect(),
            }),
            ..Default::default()
        };
        assert!(Condition::compile(&hc("User-Agent", &["*iphone*"])).matches(&r));
        assert!(!Condition::compile(&hc("User-Agent", &["*android*"])).matches(&r));
        assert!(Condition::compile(&hc("X-ENV", &["canary"])).matches(&r));
        assert!(!Condition::compile(&hc("x-missing", &["*"])).matches(&r));
        assert!(!Condition::compile(&hc("bad name", &["*"])).matches(&r));
        let qc = |kvs: &[(Option<&str>, &str)]| RuleCondition {
            field: "query-string".into(),
            query_string_config: Some(QueryStringConfig {
                values: kvs
                    .iter()
                    .map(|(k, v)| QueryStringKeyValue {
                        key: k.map(|k| k.to_string()),
                        value: v.to_string(),
                    })
                    .collect(),
            }),
            ..Default::default()
        };
        assert!(Condition::compile(&qc(&[(Some("version"), "v2")])).matches(&r));
        assert!(Condition::compile(&qc(&[(Some("nope"), "x"), (Some("lang"), "e?")])).matches(&r));
        assert!(Condition::compile(&qc(&[(None, "EN")])).matches(&r));
        assert!(!Condition::compile(&qc(&[(Some("version"), "v3")])).matches(&r));
        let r2 = view("GET", "/", None, "a.b", &h);
        assert!(!Condition::compile(&qc(&[(None, "*")])).matches(&r2));
    }

    #[test]
    fn priorities() {
        assert!(priority_key("2", false) < priority_key("10", false));
        assert!(priority_key("50000", false) < priority_key("default", true));
        assert!(priority_key("junk", false) < priority_key("default", true));
    }
}
