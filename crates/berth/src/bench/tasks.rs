//! `berth bench tasks`: RunTask → `lastStatus=RUNNING` latency for a cached image on this
//! machine, against `ctr run -d` of the same image measured in the same run; and the agent's
//! RSS idle and with every task running.
//!
//! One in-process server, one `berth agent` child process (so its RSS is its own) on the
//! local containerd in a throwaway namespace, a busybox image imported from an archive built
//! from the distribution's busybox-static. Everything is removed at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_model::ArnContext;
use clap::Args;
use serde_json::{json, Value};

use crate::bench::harness::{free_ports, ms, percentile, rss_mib};

#[derive(Args, Debug, Clone)]
pub struct TasksBenchArgs {
    /// Tasks to start (sequentially, each measured).
    #[arg(long, default_value_t = 50)]
    pub tasks: usize,
    /// Task network mode: bridge (CNI bridge + portmap, a dynamic host port), host or none.
    #[arg(long, default_value = "bridge")]
    pub network_mode: String,
    /// busybox binary the test image is built from.
    #[arg(long, default_value = "/usr/bin/busybox")]
    pub busybox: PathBuf,
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub containerd_socket: PathBuf,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// An OCI image layout archive with busybox and a few applets, named `name`.
pub fn busybox_archive(busybox: &Path, out: &Path, name: &str) -> anyhow::Result<()> {
    use sha2::{Digest, Sha256};
    let digest = |b: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(b)));
    let data = std::fs::read(busybox).with_context(|| format!("read {}", busybox.display()))?;
    let mut layer = tar::Builder::new(Vec::new());
    let mut add = |path: &str,
                   kind: tar::EntryType,
                   bytes: &[u8],
                   link: Option<&str>,
                   mode: u32|
     -> anyhow::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(bytes.len() as u64);
        h.set_mtime(0);
        if let Some(l) = link {
            h.set_link_name(l)?;
        }
        layer.append_data(&mut h, path, bytes)?;
        Ok(())
    };
    for d in ["bin", "tmp", "etc", "proc", "sys", "dev"] {
        add(d, tar::EntryType::Directory, &[], None, 0o755)?;
    }
    add("bin/busybox", tar::EntryType::Regular, &data, None, 0o755)?;
    for a in ["sh", "sleep", "true", "httpd", "echo"] {
        add(
            &format!("bin/{a}"),
            tar::EntryType::Symlink,
            &[],
            Some("busybox"),
            0o777,
        )?;
    }
    let layer = layer.into_inner()?;
    let config = serde_json::to_vec(&json!({
        "architecture": berth_agent::agent::cpu_architecture().replace("x86_64", "amd64"),
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sleep", "3600"]},
        "rootfs": {"type": "layers", "diff_ids": [digest(&layer)]},
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len()}],
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(&manifest), "size": manifest.len(),
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name}}],
    }))?;
    let mut out_tar = tar::Builder::new(std::fs::File::create(out)?);
    let mut put = |path: &str, bytes: &[u8]| -> anyhow::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        h.set_mtime(0);
        out_tar.append_data(&mut h, path, bytes)?;
        Ok(())
    };
    put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    put("index.json", &index)?;
    for b in [&layer, &config, &manifest] {
        put(&format!("blobs/sha256/{}", &digest(b)[7..]), b)?;
    }
    out_tar.finish()?;
    Ok(())
}

fn summary(v: &mut [Duration]) -> (f64, f64, f64) {
    v.sort();
    (
        ms(percentile(v, 50.0)),
        ms(percentile(v, 99.0)),
        ms(percentile(v, 100.0)),
    )
}

fn ctr(ns: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let out = std::process::Command::new("ctr")
        .arg("-n")
        .arg(ns)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run ctr (from the containerd package)")?;
    Ok(out)
}

async fn dispatch(ctx: &berth_api::Ctx, op: &str, body: Value) -> anyhow::Result<Value> {
    berth_api::ecs::dispatch(ctx, op, &serde_json::to_vec(&body)?)
        .await
        .map_err(|e| anyhow::anyhow!("{op}: {}", e.message))
}

pub async fn run(args: TasksBenchArgs) -> anyhow::Result<()> {
    if !args.containerd_socket.exists() {
        bail!(
            "no containerd at {}: start containerd first",
            args.containerd_socket.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let ns = format!("berth-bench-{}", std::process::id());
    let image = "localhost/berth-bench:1";
    let archive = dir.path().join("image.tar");
    busybox_archive(&args.busybox, &archive, image)?;
    let exe = std::env::current_exe()?;
    let st = std::process::Command::new(&exe)
        .args(["image", "import", "--namespace", &ns])
        .arg(&archive)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("berth image import failed");
    }

    // One server in this process.
    let ports = free_ports(2)?;
    let (api_port, raft_port) = (ports[0], ports[1]);
    let token = "bench-join-token-0123456789";
    let cfg = crate::config::ServerConfig {
        data_dir: dir.path().join("server"),
        api_addr: format!("127.0.0.1:{api_port}"),
        raft_addr: format!("127.0.0.1:{raft_port}"),
        access_keys: vec!["AKIDBENCH:benchsecret".into()],
        join_token: Some(token.into()),
        ..Default::default()
    };
    let valid = cfg.validate().map_err(|e| anyhow::anyhow!(e.join("; ")))?;
    let arn = ArnContext::new(valid.cfg.region.clone(), valid.cfg.account_id.clone());
    let running = crate::start_server(valid.clone(), Instant::now()).await?;
    berth_api::ecs::ensure_cluster(running.node.as_ref(), &arn, "bench")
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let ctx = berth_api::Ctx {
        cluster: running.node.clone(),
        cfg: berth_api::ApiConfig {
            ctx: arn.clone(),
            auth: berth_api::AuthMode::None,
            keys: Arc::new(Default::default()),
            body_limit: 1 << 20,
        },
    };
    // The agent as its own process.
    let agent_log = std::fs::File::create(dir.path().join("agent.log"))?;
    let mut agent = tokio::process::Command::new(&exe)
        .args([
            "agent",
            "--server",
            &format!("127.0.0.1:{raft_port}"),
            "--cluster",
            "bench",
            "--join-token",
            token,
            "--namespace",
            &ns,
        ])
        .args([
            "--cni-bridge",
            "berthbench0",
            "--cni-subnet",
            "10.96.0.0/20",
            "--stop-timeout",
            "1s",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("agent"))
        .stdout(agent_log.try_clone()?)
        .stderr(agent_log)
        .kill_on_drop(true)
        .spawn()?;
    let agent_pid = agent.id().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = dispatch(&ctx, "ListContainerInstances", json!({"cluster": "bench"})).await?;
        if v["containerInstanceArns"]
            .as_array()
            .map(|a| !a.is_empty())
            .unwrap_or(false)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the agent did not register within 20 s; see {}",
                dir.path().join("agent.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss_mib(agent_pid).unwrap_or(0.0);

    let td = json!({"family": "bench", "networkMode": args.network_mode, "containerDefinitions": [{
        "name": "app", "image": image, "memory": 16, "stopTimeout": 1,
        "command": ["sleep", "3600"],
        "portMappings": if args.network_mode == "bridge" { json!([{"containerPort": 80}]) } else { json!([]) },
    }]});
    dispatch(&ctx, "RegisterTaskDefinition", td).await?;
    // Warm-up: one task (first use of the image snapshot, the bridge, iptables chains).
    let mut berth_lat = Vec::new();
    let mut arns = Vec::new();
    eprint!("berth: starting {} tasks ", args.tasks + 1);
    for i in 0..=args.tasks {
        let t0 = Instant::now();
        let v = dispatch(
            &ctx,
            "RunTask",
            json!({"cluster": "bench", "taskDefinition": "bench"}),
        )
        .await?;
        let task_arn = v["tasks"][0]["taskArn"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if task_arn.is_empty() {
            bail!("RunTask failed: {v}");
        }
        let id = task_arn.rsplit('/').next().unwrap_or_default().to_string();
        let mut watch = running.node.reader.subscribe();
        loop {
            let rec = running.node.reader.task("bench", &id).ok().flatten();
            match rec.as_ref().and_then(|r| r.task.last_status.as_deref()) {
                Some("RUNNING") => break,
                Some("STOPPED") => bail!(
                    "task {id} stopped: {:?}",
                    rec.and_then(|r| r.task.stopped_reason)
                ),
                _ => {}
            }
            if t0.elapsed() > Duration::from_secs(60) {
                bail!("task {id} not RUNNING after 60 s");
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
        }
        if i > 0 {
            berth_lat.push(t0.elapsed());
        }
        arns.push(task_arn);
        if i % 10 == 0 {
            eprint!(".");
            let _ = std::io::stderr().flush();
        }
    }
    eprintln!();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_busy = rss_mib(agent_pid).unwrap_or(0.0);

    // The peer: ctr run -d of the same image, same command, in the same namespace.
    let mut ctr_lat = Vec::new();
    eprint!("ctr run -d: starting {} containers ", args.tasks + 1);
    for i in 0..=args.tasks {
        let id = format!("bench-ctr-{i}");
        let t0 = Instant::now();
        let out = ctr(&ns, &["run", "-d", image, &id, "sleep", "3600"])?;
        if !out.status.success() {
            bail!("ctr run: {}", String::from_utf8_lossy(&out.stderr));
        }
        if i > 0 {
            ctr_lat.push(t0.elapsed());
        }
        if i % 10 == 0 {
            eprint!(".");
            let _ = std::io::stderr().flush();
        }
    }
    eprintln!();
    for i in 0..=args.tasks {
        let id = format!("bench-ctr-{i}");
        let _ = ctr(&ns, &["task", "kill", "-s", "SIGKILL", &id]);
    }
    for i in 0..=args.tasks {
        let id = format!("bench-ctr-{i}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ctr(&ns, &["task", "rm", &id])?.status.success() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = ctr(&ns, &["container", "rm", &id]);
    }

    // Stop berth's tasks and wait until the agent has cleaned up.
    for a in &arns {
        dispatch(
            &ctx,
            "StopTask",
            json!({"cluster": "bench", "task": a, "reason": "bench done"}),
        )
        .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = dispatch(&ctx, "ListTasks", json!({"cluster": "bench"})).await?;
        let left = v["taskArns"].as_array().map(|a| a.len()).unwrap_or(0);
        let stopped = arns.iter().all(|a| {
            let id = a.rsplit('/').next().unwrap_or_default();
            running
                .node
                .reader
                .task("bench", id)
                .ok()
                .flatten()
                .and_then(|r| r.task.last_status)
                == Some("STOPPED".into())
        });
        if left == 0 && stopped {
            break;
        }
        if Instant::now() > deadline {
            eprintln!("warning: tasks still stopping after 120 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = agent.kill().await;
    let _ = running.stop().await;
    let _ = ctr(&ns, &["image", "rm", image]);
    let _ = ctr("default", &["namespace", "rm", &ns]);

    let (b50, b99, bmax) = summary(&mut berth_lat);
    let (c50, c99, cmax) = summary(&mut ctr_lat);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "berth bench tasks — {} tasks, cached image, network mode {}, {} CPU(s)",
        args.tasks, args.network_mode, cpus
    );
    println!(
        "  {:<34} {:>9} {:>9} {:>9}",
        "", "p50 ms", "p99 ms", "max ms"
    );
    println!(
        "  {:<34} {:>9.1} {:>9.1} {:>9.1}",
        "berth RunTask -> RUNNING", b50, b99, bmax
    );
    println!(
        "  {:<34} {:>9.1} {:>9.1} {:>9.1}",
        "ctr run -d (no CNI)", c50, c99, cmax
    );
    println!(
        "  ratio berth/ctr: p50 {:.2}x, p99 {:.2}x",
        b50 / c50.max(0.001),
        b99 / c99.max(0.001)
    );
    println!(
        "  agent RSS: idle {rss_idle:.1} MiB, with {} tasks running {rss_busy:.1} MiB",
        args.tasks
    );
    if let Some(p) = args.json {
        std::fs::write(
            &p,
            serde_json::to_vec_pretty(&json!({
                "tasks": args.tasks, "networkMode": args.network_mode, "cpus": cpus,
                "berth": {"p50Ms": b50, "p99Ms": b99, "maxMs": bmax},
                "ctr": {"p50Ms": c50, "p99Ms": c99, "maxMs": cmax},
                "agentRssMiB": {"idle": rss_idle, "busy": rss_busy},
            }))?,
        )?;
    }
    Ok(())
}
