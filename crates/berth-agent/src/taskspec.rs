//! From a task (definition + overrides) and an image's config to the runtime's
//! [`ContainerSpec`]: argv, environment, user, limits, mounts, labels. Pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_model::agent::DesiredTask;
use berth_model::{ContainerDefinition, ContainerOverride};

use crate::runtime::{
    ContainerSpec, ImageInfo, Mount, NetNs, Ulimit, LABEL_CLUSTER, LABEL_CONTAINER_NAME,
    LABEL_TASK_ARN,
};

/// containerd id of a task's container.
pub fn container_id(task_id: &str, name: &str) -> String {
    format!("berth-{task_id}-{name}")
}

/// The override for `name`, if any.
pub fn override_for<'a>(task: &'a DesiredTask, name: &str) -> Option<&'a ContainerOverride> {
    task.overrides
        .container_overrides
        .as_ref()?
        .iter()
        .find(|o| o.name.as_deref() == Some(name))
}

/// argv as docker computes it: an `entryPoint` in the definition replaces the image's
/// ENTRYPOINT and drops the image's CMD; `command` (or its override) replaces CMD.
pub fn argv(
    def: &ContainerDefinition,
    ov: Option<&ContainerOverride>,
    img: &ImageInfo,
) -> Vec<String> {
    let command = ov
        .and_then(|o| o.command.clone())
        .or_else(|| def.command.clone());
    let (entry, cmd) = match &def.entry_point {
        Some(ep) => (ep.clone(), command.unwrap_or_default()),
        None => (
            img.entrypoint.clone(),
            command.unwrap_or_else(|| img.cmd.clone()),
        ),
    };
    entry.into_iter().chain(cmd).collect()
}

/// Where the task's files live on the host: `<data dir>/tasks/<task id>`.
pub fn task_dir(data_dir: &Path, task_id: &str) -> PathBuf {
    data_dir.join("tasks").join(task_id)
}

pub fn log_path(data_dir: &Path, task_id: &str, container: &str) -> PathBuf {
    data_dir
        .join("logs")
        .join(task_id)
        .join(format!("{container}.log"))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

/// Everything task-level the spec needs besides the definition.
pub struct SpecContext<'a> {
    pub task: &'a DesiredTask,
    pub task_id: &'a str,
    pub data_dir: &'a Path,
    pub netns: NetNs,
    /// Generated `/etc/hosts` and `/etc/resolv.conf` for the task's own namespace.
    pub etc_files: Option<(PathBuf, PathBuf)>,
}

pub fn container_spec(
    cx: &SpecContext<'_>,
    def: &ContainerDefinition,
    img: &ImageInfo,
) -> Result<ContainerSpec, SpecError> {
    let name = def.name.clone().unwrap_or_default();
    let ov = override_for(cx.task, &name);
    let args = argv(def, ov, img);
    if args.is_empty() {
        return Err(SpecError(format!(
            "CannotCreateContainerError: container {name} has no command: neither the task definition nor the image {} gives one",
            img.name
        )));
    }
    // Environment: image, definition, override, then berth's own (last wins for a name).
    let mut env: Vec<(String, String)> = Vec::new();
    fn set(env: &mut Vec<(String, String)>, k: &str, v: &str) {
        if let Some(e) = env.iter_mut().find(|(n, _)| n == k) {
            e.1 = v.to_string();
        } else {
            env.push((k.to_string(), v.to_string()));
        }
    }
    for kv in &img.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        set(&mut env, k, v);
    }
    for kv in def.environment.iter().flatten() {
        if let Some(k) = &kv.name {
            set(&mut env, k, kv.value.as_deref().unwrap_or(""));
        }
    }
    for kv in ov
        .and_then(|o| o.environment.as_ref())
        .into_iter()
        .flatten()
    {
        if let Some(k) = &kv.name {
            set(&mut env, k, kv.value.as_deref().unwrap_or(""));
        }
    }
    set(&mut env, "BERTH_TASK_ARN", &cx.task.task_arn);
    set(&mut env, "BERTH_TASK_ID", cx.task_id);
    set(&mut env, "BERTH_CONTAINER_NAME", &name);
    set(&mut env, "BERTH_CLUSTER", &cx.task.cluster);
    if !env.iter().any(|(k, _)| k == "PATH") {
        set(
            &mut env,
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    let env = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();

    let mut labels: BTreeMap<String, String> = img.labels.clone();
    labels.extend(def.docker_labels.clone().unwrap_or_default());
    labels.insert(LABEL_TASK_ARN.into(), cx.task.task_arn.clone());
    labels.insert(LABEL_CONTAINER_NAME.into(), name.clone());
    labels.insert(LABEL_CLUSTER.into(), cx.task.cluster.clone());

    let cpu = ov.and_then(|o| o.cpu).or(def.cpu).unwrap_or(0).max(0) as u64;
    let memory = ov.and_then(|o| o.memory).or(def.memory).filter(|m| *m > 0);
    let reservation = ov
        .and_then(|o| o.memory_reservation)
        .or(def.memory_reservation)
        .filter(|m| *m > 0);

    let mut mounts = Vec::new();
    let volumes = cx.task.task_definition.volumes.clone().unwrap_or_default();
    for mp in def.mount_points.iter().flatten() {
        let src = mp.source_volume.clone().unwrap_or_default();
        let dest = mp.container_path.clone().unwrap_or_default();
        let vol = volumes
            .iter()
            .find(|v| v.name.as_deref() == Some(src.as_str()))
            .ok_or_else(|| {
                SpecError(format!(
                    "mount point of container {name} names volume {src:?}, which the task definition does not define"
                ))
            })?;
        let source = match vol.host.as_ref().and_then(|h| h.source_path.clone()) {
            Some(p) => PathBuf::from(p),
            // A volume without a host path is scratch space shared by the task's containers.
            None => task_dir(cx.data_dir, cx.task_id).join("volumes").join(&src),
        };
        mounts.push(Mount {
            source,
            destination: dest,
            read_only: mp.read_only.unwrap_or(false),
        });
    }
    if let Some((hosts, resolv)) = &cx.etc_files {
        mounts.push(Mount {
            source: hosts.clone(),
            destination: "/etc/hosts".into(),
            read_only: false,
        });
        mounts.push(Mount {
            source: resolv.clone(),
            destination: "/etc/resolv.conf".into(),
            read_only: false,
        });
    }

    let ulimits = def
        .ulimits
        .iter()
        .flatten()
        .map(|u| Ulimit {
            name: u.name.clone(),
            soft: u.soft_limit.max(0) as u64,
            hard: u.hard_limit.max(0) as u64,
        })
        .collect();

    Ok(ContainerSpec {
        id: container_id(cx.task_id, &name),
        image: img.name.clone(),
        args,
        env,
        cwd: def
            .working_directory
            .clone()
            .or_else(|| img.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        user: def
            .user
            .clone()
            .or_else(|| img.user.clone())
            .filter(|u| !u.is_empty()),
        hostname: def.hostname.clone(),
        labels,
        cpu_shares: cpu,
        memory_limit_mib: memory.map(|m| m as u64),
        memory_reservation_mib: reservation.map(|m| m as u64),
        ulimits,
        readonly_rootfs: def.readonly_root_filesystem.unwrap_or(false),
        privileged: def.privileged.unwrap_or(false),
        mounts,
        netns: cx.netns.clone(),
        log_path: log_path(cx.data_dir, cx.task_id, &name),
    })
}

/// `/etc/hosts` for a task in its own namespace: localhost, every container name and `links`
/// alias (they share the namespace, so all resolve to the loopback), and `extraHosts`.
pub fn hosts_file(task: &DesiredTask, ipv4: Option<&str>) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let mut names: Vec<String> = Vec::new();
    for c in &task.task_definition.container_definitions {
        if let Some(n) = &c.name {
            names.push(n.clone());
        }
        for l in c.links.iter().flatten() {
            // `name:alias` or `name`.
            let alias = l.split_once(':').map(|(_, a)| a).unwrap_or(l);
            names.push(alias.to_string());
        }
    }
    names.sort();
    names.dedup();
    if !names.is_empty() {
        out.push_str(&format!("127.0.0.1\t{}\n", names.join(" ")));
    }
    if let Some(ip) = ipv4 {
        out.push_str(&format!("{ip}\t{}\n", task_id_short(&task.task_arn)));
    }
    for c in &task.task_definition.container_definitions {
        for h in c.extra_hosts.iter().flatten() {
            out.push_str(&format!("{}\t{}\n", h.ip_address, h.hostname));
        }
    }
    out
}

fn task_id_short(arn: &str) -> String {
    let id = crate::state::task_id_of(arn);
    id.chars().take(12).collect()
}

/// `/etc/resolv.conf`: the definition's `dnsServers`/`dnsSearchDomains` if any container sets
/// them, else the host's (minus loopback resolvers, which the task's namespace can't reach).
pub fn resolv_conf(task: &DesiredTask, host_resolv: &str) -> String {
    let servers: Vec<String> = task
        .task_definition
        .container_definitions
        .iter()
        .flat_map(|c| c.dns_servers.clone().unwrap_or_default())
        .collect();
    let search: Vec<String> = task
        .task_definition
        .container_definitions
        .iter()
        .flat_map(|c| c.dns_search_domains.clone().unwrap_or_default())
        .collect();
    if servers.is_empty() && search.is_empty() {
        return host_resolv
            .lines()
            .filter(|l| !(l.starts_with("nameserver 127.") || l.starts_with("nameserver ::1")))
            .map(|l| format!("{l}\n"))
            .collect();
    }
    let mut out = String::new();
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_model::{KeyValuePair, TaskDefinition, TaskOverride};

    fn task(defs: Vec<ContainerDefinition>, ov: TaskOverride) -> DesiredTask {
        DesiredTask {
            task_arn: "arn:aws:ecs:us-east-1:1:task/c/0123456789abcdef0123456789abcdef".into(),
            cluster: "c".into(),
            task_definition: TaskDefinition {
                family: "f".into(),
                revision: 1,
                container_definitions: defs,
                volumes: Some(vec![
                    berth_model::Volume {
                        name: Some("data".into()),
                        host: Some(berth_model::HostVolumeProperties {
                            source_path: Some("/srv/data".into()),
                        }),
                        ..Default::default()
                    },
                    berth_model::Volume {
                        name: Some("scratch".into()),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            },
            overrides: ov,
            desired_status: "RUNNING".into(),
            last_status: "PROVISIONING".into(),
            started_by: None,
            stopped_reason: None,
            reported_seq: 0,
        }
    }

    fn img() -> ImageInfo {
        ImageInfo {
            name: "127.0.0.1:5000/web:1".into(),
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into(), "--port=80".into()],
            env: vec!["PATH=/bin".into(), "MODE=image".into()],
            working_dir: Some("/app".into()),
            user: Some("1000".into()),
            ..Default::default()
        }
    }

    fn def(name: &str) -> ContainerDefinition {
        ContainerDefinition {
            name: Some(name.into()),
            image: Some("127.0.0.1:5000/web:1".into()),
            ..Default::default()
        }
    }

    fn spec_of(t: &DesiredTask, d: &ContainerDefinition) -> ContainerSpec {
        let cx = SpecContext {
            task: t,
            task_id: "0123456789abcdef0123456789abcdef",
            data_dir: Path::new("/var/lib/berth"),
            netns: NetNs::Path("/run/netns/x".into()),
            etc_files: None,
        };
        container_spec(&cx, d, &img()).unwrap()
    }

    #[test]
    fn argv_follows_docker_rules() {
        let i = img();
        let mut d = def("web");
        assert_eq!(argv(&d, None, &i), ["/entry", "serve", "--port=80"]);
        d.command = Some(vec!["other".into()]);
        assert_eq!(argv(&d, None, &i), ["/entry", "other"]);
        d.entry_point = Some(vec!["sh".into(), "-c".into()]);
        d.command = None;
        // An entryPoint drops the image's CMD.
        assert_eq!(argv(&d, None, &i), ["sh", "-c"]);
        let ov = ContainerOverride {
            name: Some("web".into()),
            command: Some(vec!["echo hi".into()]),
            ..Default::default()
        };
        assert_eq!(argv(&d, Some(&ov), &i), ["sh", "-c", "echo hi"]);
    }

    #[test]
    fn environment_layers_and_berth_variables() {
        let mut d = def("web");
        d.environment = Some(vec![
            KeyValuePair {
                name: Some("MODE".into()),
                value: Some("def".into()),
            },
            KeyValuePair {
                name: Some("A".into()),
                value: Some("1".into()),
            },
        ]);
        let ov = TaskOverride {
            container_overrides: Some(vec![ContainerOverride {
                name: Some("web".into()),
                environment: Some(vec![KeyValuePair {
                    name: Some("A".into()),
                    value: Some("2".into()),
                }]),
                memory: Some(256),
                cpu: Some(512),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let t = task(vec![d.clone()], ov);
        let s = spec_of(&t, &d);
        assert!(s.env.contains(&"PATH=/bin".to_string()));
        assert!(s.env.contains(&"MODE=def".to_string()));
        assert!(s.env.contains(&"A=2".to_string()));
        assert!(s
            .env
            .contains(&"BERTH_TASK_ID=0123456789abcdef0123456789abcdef".to_string()));
        assert!(s.env.contains(&"BERTH_CONTAINER_NAME=web".to_string()));
        assert_eq!(s.memory_limit_mib, Some(256));
        assert_eq!(s.cpu_shares, 512);
        assert_eq!(s.cwd, "/app");
        assert_eq!(s.user.as_deref(), Some("1000"));
        assert_eq!(s.id, "berth-0123456789abcdef0123456789abcdef-web");
        assert_eq!(s.labels[LABEL_CONTAINER_NAME], "web");
        assert_eq!(
            s.log_path,
            Path::new("/var/lib/berth/logs/0123456789abcdef0123456789abcdef/web.log")
        );
    }

    #[test]
    fn mounts_resolve_volumes_and_unknown_volume_is_an_error() {
        let mut d = def("web");
        d.mount_points = Some(vec![
            berth_model::MountPoint {
                source_volume: Some("data".into()),
                container_path: Some("/data".into()),
                read_only: Some(true),
            },
            berth_model::MountPoint {
                source_volume: Some("scratch".into()),
                container_path: Some("/scratch".into()),
                read_only: None,
            },
        ]);
        d.readonly_root_filesystem = Some(true);
        d.memory_reservation = Some(64);
        d.ulimits = Some(vec![berth_model::Ulimit {
            name: "nofile".into(),
            soft_limit: 4096,
            hard_limit: 8192,
        }]);
        let t = task(vec![d.clone()], Default::default());
        let s = spec_of(&t, &d);
        assert_eq!(s.mounts[0].source, Path::new("/srv/data"));
        assert!(s.mounts[0].read_only);
        assert!(s.mounts[1].source.ends_with("volumes/scratch"));
        assert!(s.readonly_rootfs);
        assert_eq!(s.memory_reservation_mib, Some(64));
        assert_eq!(s.ulimits[0].soft, 4096);

        let mut bad = def("web");
        bad.mount_points = Some(vec![berth_model::MountPoint {
            source_volume: Some("nope".into()),
            container_path: Some("/x".into()),
            read_only: None,
        }]);
        let t = task(vec![bad.clone()], Default::default());
        let cx = SpecContext {
            task: &t,
            task_id: "id",
            data_dir: Path::new("/d"),
            netns: NetNs::Host,
            etc_files: None,
        };
        let e = container_spec(&cx, &bad, &img()).unwrap_err();
        assert!(e.0.contains("\"nope\""), "{e}");
    }

    #[test]
    fn hosts_file_lists_containers_links_and_extra_hosts() {
        let mut a = def("web");
        a.links = Some(vec!["db:database".into()]);
        a.extra_hosts = Some(vec![berth_model::HostEntry {
            hostname: "gw".into(),
            ip_address: "10.0.0.1".into(),
        }]);
        let t = task(vec![a, def("db")], Default::default());
        let h = hosts_file(&t, Some("172.30.0.4"));
        assert!(h.contains("127.0.0.1\tdatabase db web\n"), "{h}");
        assert!(h.contains("10.0.0.1\tgw\n"));
        assert!(h.contains("172.30.0.4\t0123456789ab\n"));
    }

    #[test]
    fn resolv_conf_drops_loopback_resolvers() {
        let t = task(vec![def("web")], Default::default());
        let r = resolv_conf(
            &t,
            "nameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch lan\n",
        );
        assert_eq!(r, "nameserver 10.0.0.2\nsearch lan\n");
    }
}
