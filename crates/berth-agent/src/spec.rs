//! The OCI runtime spec for one container: a pure function of the resolved
//! [`ContainerSpec`] (and, for user names, the image's `/etc/passwd` and `/etc/group`).
//!
//! The defaults are the ones containerd's `oci.WithDefaultSpec` produces for Linux (namespaces,
//! mounts, masked and read-only paths, capabilities, `RLIMIT_NOFILE` 1024), adjusted the way
//! Docker (and so ECS) runs containers: `noNewPrivileges` false, a read-only cgroup mount,
//! cpu shares 2 when no cpu is reserved. No seccomp profile is applied (containerd's default
//! spec has none either).

use serde_json::{json, Value};

use crate::runtime::{ContainerSpec, NetNs, RuntimeError};

/// `PATH` containerd (`oci.WithDefaultPathEnv`) and Docker give a process whose environment
/// has none.
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's default capability set (`oci.defaultUnixCaps`), which is also Docker's.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability up to Linux 5.9 (`privileged: true`). runc ignores those the kernel lacks.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// containerd's `defaultMaskedPaths` (Docker's too).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

/// containerd's `defaultReadonlyPaths`.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The cgroup (v1 path, relative to each hierarchy's root) berth puts a container in.
pub fn cgroups_path(id: &str) -> String {
    format!("/berth/{id}")
}

/// The contents of the image's `/etc/passwd` and `/etc/group`, when present; only consulted
/// when `user` names a user or group instead of giving numeric ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserDb {
    pub passwd: Option<String>,
    pub group: Option<String>,
}

/// The resolved identity of the container's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Resolve ECS `user` (`uid`, `uid:gid`, `user`, `user:group`, `uid:group`, `user:gid`) the way
/// containerd's `WithUser` does: numbers are taken as they are (a bare uid gets gid 0, or the
/// uid's primary group when the image's passwd lists it); names are looked up in the image's
/// `/etc/passwd` and `/etc/group`, and are an error when absent.
pub fn resolve_user(user: &str, db: &UserDb) -> Result<ResolvedUser, String> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if u.is_empty() {
        return Err(format!("invalid user {user:?}: empty user name"));
    }
    let passwd: Vec<(String, u32, u32)> = db
        .passwd
        .as_deref()
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || l.starts_with('#') {
                return None;
            }
            Some((f[0].to_string(), f[2].parse().ok()?, f[3].parse().ok()?))
        })
        .collect();
    let groups: Vec<(String, u32, Vec<String>)> = db
        .group
        .as_deref()
        .unwrap_or("")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 || l.starts_with('#') {
                return None;
            }
            let members = f
                .get(3)
                .map(|m| {
                    m.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            Some((f[0].to_string(), f[2].parse().ok()?, members))
        })
        .collect();

    let (uid, primary_gid, name) = if let Ok(uid) = u.parse::<u32>() {
        match passwd.iter().find(|p| p.1 == uid) {
            Some(p) => (uid, p.2, Some(p.0.clone())),
            None => (uid, 0, None),
        }
    } else {
        if db.passwd.is_none() {
            return Err(format!(
                "unable to find user {u}: the image has no /etc/passwd (use a numeric uid)"
            ));
        }
        match passwd.iter().find(|p| p.0 == u) {
            Some(p) => (p.1, p.2, Some(p.0.clone())),
            None => {
                return Err(format!(
                    "unable to find user {u}: no matching entries in passwd file"
                ))
            }
        }
    };
    let gid = match g {
        None => primary_gid,
        Some("") => return Err(format!("invalid user {user:?}: empty group")),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                if db.group.is_none() {
                    return Err(format!(
                        "unable to find group {g}: the image has no /etc/group (use a numeric gid)"
                    ));
                }
                match groups.iter().find(|x| x.0 == g) {
                    Some(x) => x.1,
                    None => {
                        return Err(format!(
                            "unable to find group {g}: no matching entries in group file"
                        ))
                    }
                }
            }
        },
    };
    // Supplementary groups: those of /etc/group that list the user by name (containerd's
    // WithAdditionalGIDs), only when the user is known by name.
    let mut additional_gids = Vec::new();
    if let Some(name) = name {
        for (_, gid2, members) in &groups {
            if members.contains(&name) && *gid2 != gid && !additional_gids.contains(gid2) {
                additional_gids.push(*gid2);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// Whether `user` needs the image's user database to resolve (it names a user or group).
pub fn user_needs_lookup(user: &str) -> bool {
    user.split(':').any(|p| p.parse::<u32>().is_err())
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Value {
    json!({"destination": dest, "type": typ, "source": source, "options": options})
}

/// Build the OCI runtime spec (JSON, as containerd stores it) for `spec`. `rootfs_path` is the
/// spec's `root.path` ("rootfs" for containerd, relative to the bundle).
pub fn oci_spec(
    spec: &ContainerSpec,
    rootfs_path: &str,
    users: &UserDb,
) -> Result<Value, RuntimeError> {
    let user = match spec.user.as_deref().filter(|u| !u.is_empty()) {
        None => ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: vec![],
        },
        Some(u) => {
            resolve_user(u, users).map_err(|e| RuntimeError::Start(format!("{}: {e}", spec.id)))?
        }
    };
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH_ENV.to_string());
    }
    if spec.args.is_empty() {
        return Err(RuntimeError::Start(format!(
            "{}: no command: neither the container definition nor the image gives an entrypoint or command",
            spec.id
        )));
    }

    let caps: &[&str] = if spec.privileged {
        ALL_CAPABILITIES
    } else {
        DEFAULT_CAPABILITIES
    };
    let caps = json!({
        "bounding": caps, "effective": caps, "permitted": caps,
    });

    let mut rlimits = vec![json!({"type": "RLIMIT_NOFILE", "hard": 1024u64, "soft": 1024u64})];
    for u in &spec.ulimits {
        let typ = format!("RLIMIT_{}", u.name.to_ascii_uppercase());
        let entry = json!({"type": typ, "hard": u.hard, "soft": u.soft});
        match rlimits.iter_mut().find(|r| r["type"] == typ.as_str()) {
            Some(r) => *r = entry,
            None => rlimits.push(entry),
        }
    }

    let mut user_json = json!({"uid": user.uid, "gid": user.gid});
    if !user.additional_gids.is_empty() {
        user_json["additionalGids"] = json!(user.additional_gids);
    }
    let cwd = if spec.cwd.is_empty() {
        "/"
    } else {
        spec.cwd.as_str()
    };
    let process = json!({
        "terminal": false,
        "user": user_json,
        "args": spec.args,
        "env": env,
        "cwd": cwd,
        "capabilities": caps,
        "rlimits": rlimits,
        "noNewPrivileges": false,
    });

    let sys_ro: &[&str] = if spec.privileged {
        &["nosuid", "noexec", "nodev"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount("/sys", "sysfs", "sysfs", sys_ro),
        mount("/sys/fs/cgroup", "cgroup", "cgroup", sys_ro),
    ];
    for m in &spec.mounts {
        let mut opts = vec!["rbind", "rprivate"];
        if m.read_only {
            opts.push("ro");
        }
        // A later mount over the same destination replaces a default one (as Docker does).
        mounts.retain(|x| x["destination"] != m.destination.as_str());
        mounts.push(mount(
            &m.destination,
            "bind",
            &m.source.to_string_lossy(),
            &opts,
        ));
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    match &spec.netns {
        NetNs::Host => {}
        NetNs::Path(p) => namespaces.push(json!({"type": "network", "path": p.to_string_lossy()})),
    }

    let shares = spec.cpu_shares.max(2);
    let mut memory = serde_json::Map::new();
    if let Some(mib) = spec.memory_limit_mib {
        memory.insert("limit".into(), json!(mib as i64 * 1024 * 1024));
    }
    if let Some(mib) = spec.memory_reservation_mib {
        memory.insert("reservation".into(), json!(mib as i64 * 1024 * 1024));
    }
    let devices = if spec.privileged {
        json!([{"allow": true, "access": "rwm"}])
    } else {
        json!([{"allow": false, "access": "rwm"}])
    };
    let mut resources = json!({
        "devices": devices,
        "cpu": {"shares": shares},
    });
    if !memory.is_empty() {
        resources["memory"] = Value::Object(memory);
    }

    let mut linux = json!({
        "resources": resources,
        "cgroupsPath": cgroups_path(&spec.id),
        "namespaces": namespaces,
    });
    if !spec.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }

    let mut out = json!({
        "ociVersion": "1.0.2-dev",
        "process": process,
        "root": {"path": rootfs_path, "readonly": spec.readonly_rootfs},
        "mounts": mounts,
        "linux": linux,
    });
    if let Some(h) = spec.hostname.as_deref().filter(|h| !h.is_empty()) {
        out["hostname"] = json!(h);
    }
    Ok(out)
}

/// The process spec for an `exec` in a container whose spec is `container_spec`: the
/// container's process (user, env, cwd, capabilities, rlimits) with `args` replaced.
pub fn exec_process(container_spec: &Value, args: &[String]) -> Value {
    let mut p = container_spec.get("process").cloned().unwrap_or_else(
        || json!({"user": {"uid": 0, "gid": 0}, "cwd": "/", "env": [DEFAULT_PATH_ENV]}),
    );
    p["args"] = json!(args);
    p["terminal"] = json!(false);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Mount, Ulimit};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn base() -> ContainerSpec {
        ContainerSpec {
            id: "berth-t1-web".into(),
            image: "docker.io/library/busybox:latest".into(),
            args: vec!["httpd".into(), "-f".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            cwd: "/www".into(),
            user: None,
            hostname: None,
            labels: BTreeMap::from([("berth.cluster".into(), "default".into())]),
            cpu_shares: 0,
            memory_limit_mib: None,
            memory_reservation_mib: None,
            ulimits: vec![],
            readonly_rootfs: false,
            privileged: false,
            mounts: vec![],
            netns: NetNs::Host,
            log_path: "/var/log/berth/t1/web.log".into(),
        }
    }

    fn db() -> UserDb {
        UserDb {
            passwd: Some(
                "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\nnobody:x:65534:65534::/:/bin/false\n"
                    .into(),
            ),
            group: Some("root:x:0:\nwww:x:33:\nstaff:x:50:www,other\nnogroup:x:65534:\n".into()),
        }
    }

    fn build(s: &ContainerSpec) -> Value {
        let v = oci_spec(s, "rootfs", &db()).expect("spec");
        // Whatever we produce must be a valid OCI runtime spec.
        let _: oci_spec::runtime::Spec =
            serde_json::from_value(v.clone()).expect("parses as an OCI runtime spec");
        v
    }

    fn ns_types(v: &Value) -> Vec<String> {
        v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn defaults_match_containerd() {
        let v = build(&base());
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["root"]["readonly"], false);
        assert_eq!(v["process"]["args"], json!(["httpd", "-f"]));
        assert_eq!(v["process"]["env"], json!(["PATH=/bin", "A=1"]));
        assert_eq!(v["process"]["cwd"], "/www");
        assert_eq!(v["process"]["user"], json!({"uid": 0, "gid": 0}));
        assert_eq!(v["process"]["noNewPrivileges"], false);
        assert_eq!(
            v["process"]["rlimits"],
            json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}])
        );
        assert_eq!(
            v["process"]["capabilities"]["bounding"],
            json!(DEFAULT_CAPABILITIES)
        );
        assert_eq!(ns_types(&v), ["pid", "ipc", "uts", "mount"]);
        let dests: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        assert_eq!(v["linux"]["maskedPaths"], json!(MASKED_PATHS));
        assert_eq!(v["linux"]["readonlyPaths"], json!(READONLY_PATHS));
        assert_eq!(v["linux"]["cgroupsPath"], "/berth/berth-t1-web");
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 2);
        assert_eq!(
            v["linux"]["resources"]["devices"],
            json!([{"allow": false, "access": "rwm"}])
        );
        assert!(v["linux"]["resources"].get("memory").is_none());
        assert!(v.get("hostname").is_none());
        // Labels are container labels, not part of the spec.
        assert!(!v.to_string().contains("berth.cluster"));
    }

    #[test]
    fn table() {
        type Check = fn(&Value);
        type Modify = Box<dyn Fn(&mut ContainerSpec)>;
        let cases: Vec<(&str, Modify, Check)> = vec![
            (
                "no PATH gets the default",
                Box::new(|s| s.env = vec!["A=1".into()]),
                |v| assert_eq!(v["process"]["env"], json!([DEFAULT_PATH_ENV, "A=1"])),
            ),
            ("empty cwd is /", Box::new(|s| s.cwd = String::new()), |v| {
                assert_eq!(v["process"]["cwd"], "/")
            }),
            (
                "numeric uid",
                Box::new(|s| s.user = Some("1000".into())),
                |v| assert_eq!(v["process"]["user"], json!({"uid": 1000, "gid": 0})),
            ),
            (
                "numeric uid known to passwd takes its group",
                Box::new(|s| s.user = Some("33".into())),
                |v| assert_eq!(v["process"]["user"]["gid"], 33),
            ),
            (
                "uid:gid",
                Box::new(|s| s.user = Some("1000:2000".into())),
                |v| assert_eq!(v["process"]["user"], json!({"uid": 1000, "gid": 2000})),
            ),
            (
                "user name with supplementary groups",
                Box::new(|s| s.user = Some("www".into())),
                |v| {
                    assert_eq!(
                        v["process"]["user"],
                        json!({"uid": 33, "gid": 33, "additionalGids": [50]})
                    )
                },
            ),
            (
                "user:group names",
                Box::new(|s| s.user = Some("nobody:staff".into())),
                |v| assert_eq!(v["process"]["user"], json!({"uid": 65534, "gid": 50})),
            ),
            (
                "hostname",
                Box::new(|s| s.hostname = Some("web-1".into())),
                |v| assert_eq!(v["hostname"], "web-1"),
            ),
            (
                "cpu units become shares",
                Box::new(|s| s.cpu_shares = 512),
                |v| assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 512),
            ),
            (
                "memory limit and reservation in bytes",
                Box::new(|s| {
                    s.memory_limit_mib = Some(128);
                    s.memory_reservation_mib = Some(64);
                }),
                |v| {
                    assert_eq!(v["linux"]["resources"]["memory"]["limit"], 134_217_728i64);
                    assert_eq!(
                        v["linux"]["resources"]["memory"]["reservation"],
                        67_108_864i64
                    );
                },
            ),
            (
                "ulimits replace and add",
                Box::new(|s| {
                    s.ulimits = vec![
                        Ulimit {
                            name: "nofile".into(),
                            soft: 4096,
                            hard: 8192,
                        },
                        Ulimit {
                            name: "nproc".into(),
                            soft: 100,
                            hard: 200,
                        },
                    ]
                }),
                |v| {
                    assert_eq!(
                        v["process"]["rlimits"],
                        json!([
                            {"type": "RLIMIT_NOFILE", "hard": 8192, "soft": 4096},
                            {"type": "RLIMIT_NPROC", "hard": 200, "soft": 100}
                        ])
                    )
                },
            ),
            (
                "read-only root",
                Box::new(|s| s.readonly_rootfs = true),
                |v| assert_eq!(v["root"]["readonly"], true),
            ),
            ("privileged", Box::new(|s| s.privileged = true), |v| {
                assert_eq!(
                    v["process"]["capabilities"]["bounding"],
                    json!(ALL_CAPABILITIES)
                );
                assert!(v["linux"].get("maskedPaths").is_none());
                assert!(v["linux"].get("readonlyPaths").is_none());
                assert_eq!(
                    v["linux"]["resources"]["devices"],
                    json!([{"allow": true, "access": "rwm"}])
                );
                let sys = v["mounts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["destination"] == "/sys")
                    .unwrap();
                assert!(!sys["options"].as_array().unwrap().contains(&json!("ro")));
            }),
            (
                "bind mounts",
                Box::new(|s| {
                    s.mounts = vec![
                        Mount {
                            source: PathBuf::from("/data/a"),
                            destination: "/a".into(),
                            read_only: false,
                        },
                        Mount {
                            source: PathBuf::from("/etc/berth/hosts"),
                            destination: "/etc/hosts".into(),
                            read_only: true,
                        },
                    ]
                }),
                |v| {
                    let m = v["mounts"].as_array().unwrap();
                    assert_eq!(
                        m[m.len() - 2],
                        json!({"destination": "/a", "type": "bind", "source": "/data/a", "options": ["rbind", "rprivate"]})
                    );
                    assert_eq!(
                        m[m.len() - 1],
                        json!({"destination": "/etc/hosts", "type": "bind", "source": "/etc/berth/hosts", "options": ["rbind", "rprivate", "ro"]})
                    );
                },
            ),
            (
                "network namespace path",
                Box::new(|s| s.netns = NetNs::Path("/var/run/netns/berth-t1".into())),
                |v| {
                    assert_eq!(ns_types(v), ["pid", "ipc", "uts", "mount", "network"]);
                    assert_eq!(
                        v["linux"]["namespaces"][4]["path"],
                        "/var/run/netns/berth-t1"
                    );
                },
            ),
        ];
        for (name, modify, check) in cases {
            let mut s = base();
            modify(&mut s);
            let v = build(&s);
            eprintln!("case: {name}");
            check(&v);
        }
    }

    #[test]
    fn unknown_user_names_are_errors() {
        let mut s = base();
        s.user = Some("ghost".into());
        let e = oci_spec(&s, "rootfs", &db()).unwrap_err();
        assert!(
            matches!(&e, RuntimeError::Start(m) if m.contains("unable to find user ghost")),
            "{e}"
        );
        s.user = Some("www".into());
        let e = oci_spec(&s, "rootfs", &UserDb::default()).unwrap_err();
        assert!(e.to_string().contains("no /etc/passwd"), "{e}");
        s.user = Some("0:wheel".into());
        let e = oci_spec(&s, "rootfs", &db()).unwrap_err();
        assert!(e.to_string().contains("unable to find group wheel"), "{e}");
    }

    #[test]
    fn empty_args_is_an_error() {
        let mut s = base();
        s.args.clear();
        assert!(matches!(
            oci_spec(&s, "rootfs", &db()),
            Err(RuntimeError::Start(_))
        ));
    }

    #[test]
    fn exec_process_keeps_identity() {
        let mut s = base();
        s.user = Some("1000:1000".into());
        let v = build(&s);
        let p = exec_process(&v, &["true".to_string()]);
        assert_eq!(p["args"], json!(["true"]));
        assert_eq!(p["user"], json!({"uid": 1000, "gid": 1000}));
        assert_eq!(p["cwd"], "/www");
        assert_eq!(p["env"], v["process"]["env"]);
    }

    #[test]
    fn needs_lookup() {
        assert!(!user_needs_lookup("0"));
        assert!(!user_needs_lookup("1:2"));
        assert!(user_needs_lookup("www"));
        assert!(user_needs_lookup("1:staff"));
    }
}
