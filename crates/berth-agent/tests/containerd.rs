//! The containerd runtime against the real containerd (socket /run/containerd/containerd.sock,
//! or BERTH_CONTAINERD_SOCKET). Each test works in its own containerd namespace
//! `berth-test-<random>` and removes what it created, also when it fails.
//!
//! Images are built here from the host's static busybox: one gzip layer with /bin/busybox and
//! applet symlinks, written as an OCI image layout tar (imported) or pushed to a
//! `docker-registry` started on loopback (pulled).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_agent::containerd::{Containerd, ContainerdOptions};
use berth_agent::runtime::{
    ContainerSpec, ContainerState, ExecOutcome, NetNs, PullPolicy, Runtime, RuntimeError,
    RuntimeEvent,
};
use sha2::{Digest, Sha256};

const APPLETS: &[&str] = &[
    "sh", "httpd", "sleep", "echo", "cat", "true", "false", "env", "id", "wget", "nc", "dd",
    "head", "tr",
];

fn socket() -> PathBuf {
    std::env::var_os("BERTH_CONTAINERD_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/containerd/containerd.sock"))
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

/// A one-layer busybox image: (layer.tar.gz, config json, manifest json).
struct BuiltImage {
    layer: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

fn build_image() -> BuiltImage {
    let mut tar = tar::Builder::new(Vec::new());
    let dir = |tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        tar.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    for (d, m) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
    ] {
        dir(&mut tar, d, m);
    }
    let busybox = std::fs::read("/usr/bin/busybox").expect("busybox-static is installed");
    let file = |tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        tar.append_data(&mut h, path, data).unwrap();
    };
    file(&mut tar, "bin/busybox", 0o755, &busybox);
    file(
        &mut tar,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    );
    file(
        &mut tar,
        "etc/group",
        0o644,
        b"root:x:0:\nnogroup:x:65534:\n",
    );
    for a in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        tar.append_link(&mut h, format!("bin/{a}"), "busybox")
            .unwrap();
    }
    let layer_tar = tar.into_inner().unwrap();
    let diff_id = digest(&layer_tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer_tar).unwrap();
    let layer = gz.finish().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch(),
        "os": "linux",
        "config": {
            "Cmd": ["sleep", "3600"],
            "Env": ["PATH=/bin"],
            "WorkingDir": "/",
            "StopSignal": "SIGTERM",
            "Labels": {"built-by": "berth-test"}
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(&layer), "size": layer.len()}]
    }))
    .unwrap();
    BuiltImage {
        layer,
        config,
        manifest,
    }
}

/// Write `img` as an OCI image layout tar naming it `name`.
fn write_oci_layout(img: &BuiltImage, name: &str, path: &Path) {
    let mut tar = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |p: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, p, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    for blob in [&img.layer, &img.config, &img.manifest] {
        let d = digest(blob);
        add(
            &format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
            blob,
        );
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&img.manifest),
            "size": img.manifest.len(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": "1"
            }
        }]
    }))
    .unwrap();
    add("index.json", &index);
    tar.finish().unwrap();
}

/// Poll `check` until it returns `Some`, failing after `within`.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One test's namespace, scratch directory and runtime; cleans the namespace up on drop.
struct Env {
    ns: String,
    dir: tempfile::TempDir,
    rt: Containerd,
}

impl Env {
    async fn new() -> Option<Env> {
        if !socket().exists() {
            eprintln!(
                "SKIPPED: no containerd socket at {} (start containerd to run these tests)",
                socket().display()
            );
            return None;
        }
        let ns = format!("berth-test-{:08x}", rand::random::<u32>());
        let dir = tempfile::tempdir().unwrap();
        // A stand-in for `berth log-driver <path>` (written by another module): the shim gives
        // it the container's stdout on fd 3, stderr on fd 4 and a readiness pipe on fd 5,
        // which it closes first so the background `cat`s do not hold it open. The shim runs
        // it with an empty environment, hence absolute paths.
        let driver = dir.path().join("log-driver.sh");
        std::fs::write(
            &driver,
            "#!/bin/sh\nexec 5>&-\n/bin/cat <&3 >>\"$2\" &\n/bin/cat <&4 >>\"$2\" &\nwait\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&driver, std::fs::Permissions::from_mode(0o755)).unwrap();
        let rt = Containerd::connect(
            &socket(),
            &ns,
            ContainerdOptions {
                log_driver: driver,
                ..Default::default()
            },
        )
        .await
        .expect("connect to containerd");
        Some(Env { ns, dir, rt })
    }

    async fn import_busybox(&self) -> (String, BuiltImage) {
        let img = build_image();
        let name = format!("berth.test/busybox:{}", self.ns);
        let tar = self.dir.path().join("image.tar");
        write_oci_layout(&img, &name, &tar);
        let infos = self.rt.import_archive(&tar).await.expect("import");
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].name, name);
        assert_eq!(infos[0].digest, digest(&img.manifest));
        assert_eq!(infos[0].cmd, ["sleep", "3600"]);
        assert_eq!(infos[0].env, ["PATH=/bin"]);
        assert_eq!(infos[0].stop_signal.as_deref(), Some("SIGTERM"));
        assert_eq!(infos[0].labels["built-by"], "berth-test");
        assert!(!infos[0].pulled);
        (name, img)
    }

    fn spec(&self, id: &str, image: &str, args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            id: id.to_string(),
            image: image.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: None,
            hostname: Some("box".into()),
            labels: BTreeMap::from([
                ("berth.task-arn".to_string(), format!("arn:test:{id}")),
                ("berth.container-name".to_string(), id.to_string()),
            ]),
            cpu_shares: 0,
            memory_limit_mib: None,
            memory_reservation_mib: None,
            ulimits: vec![],
            readonly_rootfs: false,
            privileged: false,
            mounts: vec![],
            netns: NetNs::Host,
            log_path: self.dir.path().join("logs").join(format!("{id}.log")),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let ns = self.ns.clone();
        // Async cleanup from Drop (also after a failed assertion): its own runtime on a thread.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(cleanup_namespace(&ns))
        })
        .join();
    }
}

async fn cleanup_namespace(ns: &str) {
    use containerd_client::services::v1::{
        images_client::ImagesClient, namespaces_client::NamespacesClient, DeleteImageRequest,
        DeleteNamespaceRequest, ListImagesRequest,
    };
    use containerd_client::tonic::Request;
    let Ok(rt) = Containerd::connect(&socket(), ns, ContainerdOptions::default()).await else {
        return;
    };
    for c in rt.list().await.unwrap_or_default() {
        if let Err(e) = rt.remove(&c.id).await {
            eprintln!("cleanup: remove {}: {e}", c.id);
        }
    }
    let Ok(ch) = containerd_client::connect(socket()).await else {
        return;
    };
    fn ns_req<T>(ns: &str, m: T) -> Request<T> {
        let mut r = Request::new(m);
        r.metadata_mut()
            .insert("containerd-namespace", ns.parse().unwrap());
        r
    }
    let mut images = ImagesClient::new(ch.clone());
    if let Ok(list) = images
        .list(ns_req(ns, ListImagesRequest { filters: vec![] }))
        .await
    {
        for i in list.into_inner().images {
            let _ = images
                .delete(ns_req(
                    ns,
                    DeleteImageRequest {
                        name: i.name,
                        sync: true,
                        target: None,
                    },
                ))
                .await;
        }
    }
    // With the images and containers gone, GC empties the namespace; delete it when it has.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut nss = NamespacesClient::new(ch);
    loop {
        let r = nss
            .delete(DeleteNamespaceRequest {
                name: ns.to_string(),
            })
            .await;
        if r.is_ok() || tokio::time::Instant::now() > deadline {
            if let Err(e) = r {
                eprintln!("cleanup: namespace {ns} left behind: {}", e.message());
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn next_exit(events: &mut tokio::sync::mpsc::Receiver<RuntimeEvent>, id: &str) -> (i32, u64) {
    let deadline = Duration::from_secs(20);
    tokio::time::timeout(deadline, async {
        loop {
            match events.recv().await {
                Some(RuntimeEvent::Exited {
                    id: got,
                    exit_code,
                    exited_at_ms,
                }) if got == id => return (exit_code, exited_at_ms),
                Some(_) => continue,
                None => panic!("event stream ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no exit event for {id} within {deadline:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_lifecycle_logs_exec_kill_remove() {
    let Some(env) = Env::new().await else { return };
    let (image, _) = env.import_busybox().await;
    let rt = &env.rt;
    let spec = env.spec(
        "c1",
        &image,
        &[
            "sh",
            "-c",
            // As PID 1, sh ignores SIGTERM unless it traps it; exit as a killed process would.
            "trap 'exit 143' TERM; echo hello; echo err >&2; sleep 100 & wait",
        ],
    );
    let mut events = rt.events().await.expect("events");
    assert_eq!(rt.state("c1").await.unwrap(), None);
    rt.create(&spec).await.expect("create");
    rt.create(&spec).await.expect("create is idempotent");
    assert_eq!(rt.state("c1").await.unwrap(), Some(ContainerState::Created));
    let pid = rt.start("c1").await.expect("start");
    assert!(pid > 0);
    assert_eq!(
        rt.state("c1").await.unwrap(),
        Some(ContainerState::Running { pid })
    );

    let log = spec.log_path.clone();
    wait_for(
        "both lines in the log file",
        Duration::from_secs(10),
        || {
            let log = log.clone();
            async move {
                let s = std::fs::read_to_string(&log).unwrap_or_default();
                (s.contains("hello\n") && s.contains("err\n")).then_some(())
            }
        },
    )
    .await;

    let listed = rt.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, "c1");
    assert_eq!(listed[0].labels["berth.container-name"], "c1");
    assert_eq!(listed[0].state, Some(ContainerState::Running { pid }));

    let sec = Duration::from_secs(5);
    assert_eq!(
        rt.exec("c1", vec!["true".into()], sec).await.unwrap(),
        ExecOutcome::Exited(0)
    );
    assert_eq!(
        rt.exec("c1", vec!["false".into()], sec).await.unwrap(),
        ExecOutcome::Exited(1)
    );
    assert_eq!(
        rt.exec("c1", vec!["sh".into(), "-c".into(), "exit 7".into()], sec)
            .await
            .unwrap(),
        ExecOutcome::Exited(7)
    );
    let t0 = std::time::Instant::now();
    assert_eq!(
        rt.exec(
            "c1",
            vec!["sleep".into(), "10".into()],
            Duration::from_secs(1)
        )
        .await
        .unwrap(),
        ExecOutcome::TimedOut
    );
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "timed-out exec took {:?}",
        t0.elapsed()
    );
    let e = rt.exec("c1", vec!["nope".into()], sec).await.unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    // Exec exits are not container exits: the container still runs.
    assert_eq!(
        rt.state("c1").await.unwrap(),
        Some(ContainerState::Running { pid })
    );

    rt.kill("c1", 15).await.expect("kill");
    let (code, at) = next_exit(&mut events, "c1").await;
    assert_eq!(code, 143);
    assert!(at > 0);
    match rt.state("c1").await.unwrap() {
        Some(ContainerState::Stopped {
            exit_code: 143,
            exited_at_ms,
            oom_killed: false,
        }) => {
            assert_eq!(exited_at_ms, at)
        }
        other => panic!("unexpected state {other:?}"),
    }
    rt.kill("c1", 15)
        .await
        .expect("killing an exited container is fine");
    rt.remove("c1").await.expect("remove");
    assert_eq!(rt.state("c1").await.unwrap(), None);
    rt.remove("c1").await.expect("removing twice is fine");
    assert!(rt.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_names_resolve_from_the_image_and_remove_kills() {
    let Some(env) = Env::new().await else { return };
    let (image, _) = env.import_busybox().await;
    let rt = &env.rt;
    let mut spec = env.spec(
        "u1",
        &image,
        &["sh", "-c", "echo uid=$(id -u) gid=$(id -g); sleep 100"],
    );
    spec.user = Some("nobody".into());
    rt.create(&spec).await.expect("create");
    rt.start("u1").await.expect("start");
    let log = spec.log_path.clone();
    wait_for("the id line", Duration::from_secs(10), || {
        let log = log.clone();
        async move {
            let s = std::fs::read_to_string(&log).unwrap_or_default();
            s.contains("uid=65534 gid=65534").then_some(())
        }
    })
    .await;
    // A running container is killed by remove.
    rt.remove("u1").await.expect("remove running");
    assert_eq!(rt.state("u1").await.unwrap(), None);

    spec.id = "u2".into();
    spec.user = Some("ghost".into());
    let e = rt.create(&spec).await.unwrap_err();
    assert!(
        matches!(&e, RuntimeError::Start(m) if m.contains("ghost")),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_oom_kill_is_reported() {
    let Some(env) = Env::new().await else { return };
    let (image, _) = env.import_busybox().await;
    let rt = &env.rt;
    let mut events = rt.events().await.expect("events");
    // dd fills a 64 MiB buffer from /dev/zero: far beyond an 8 MiB limit (no swap involved:
    // an OOM kill either way).
    let mut spec = env.spec(
        "oom",
        &image,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    spec.memory_limit_mib = Some(8);
    rt.create(&spec).await.expect("create");
    rt.start("oom").await.expect("start");
    let (code, _) = next_exit(&mut events, "oom").await;
    assert_eq!(code, 137);
    let state = wait_for("oom_killed in state", Duration::from_secs(10), || async {
        match rt.state("oom").await.unwrap() {
            Some(
                s @ ContainerState::Stopped {
                    oom_killed: true, ..
                },
            ) => Some(s),
            _ => None,
        }
    })
    .await;
    assert!(
        matches!(state, ContainerState::Stopped { exit_code: 137, .. }),
        "{state:?}"
    );
    rt.remove("oom").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_command_fails_to_start_with_runc_message() {
    let Some(env) = Env::new().await else { return };
    let (image, _) = env.import_busybox().await;
    let rt = &env.rt;
    let spec = env.spec("bad", &image, &["nope", "arg"]);
    let err = match rt.create(&spec).await {
        Err(e) => e,
        Ok(()) => rt.start("bad").await.expect_err("start must fail"),
    };
    match &err {
        RuntimeError::Start(m) => {
            eprintln!("missing command: {m}");
            assert!(m.contains("\"nope\""), "{m}");
            assert!(m.contains("executable file not found"), "{m}");
        }
        other => panic!("expected Start, got {other:?}"),
    }
    // Not running, and removable.
    assert!(matches!(
        rt.state("bad").await.unwrap(),
        Some(ContainerState::Stopped { .. })
    ));
    rt.remove("bad").await.unwrap();
    assert_eq!(rt.state("bad").await.unwrap(), None);
}

/// A `docker-registry` on a free loopback port, stopped on drop.
struct TestRegistry {
    child: std::process::Child,
    addr: String,
}

impl TestRegistry {
    async fn start(dir: &Path) -> TestRegistry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let root = dir.join("registry");
        std::fs::create_dir_all(&root).unwrap();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                root.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let a = addr.clone();
        wait_for("the registry to listen", Duration::from_secs(10), || {
            let a = a.clone();
            async move { tokio::net::TcpStream::connect(&a).await.ok().map(|_| ()) }
        })
        .await;
        TestRegistry { child, addr }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_registry_with_policies() {
    if !Path::new("/usr/bin/docker-registry").exists() {
        eprintln!("SKIPPED: /usr/bin/docker-registry is not installed");
        return;
    }
    let Some(env) = Env::new().await else { return };
    let rt = &env.rt;
    let mut registry = TestRegistry::start(env.dir.path()).await;
    let img = build_image();
    let reference = format!("{}/berth/busybox:1", registry.addr);

    // Push with oci-client, exactly our bytes.
    use oci_client::client::{ClientConfig, ClientProtocol};
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let r: oci_client::Reference = reference.parse().unwrap();
    let auth = oci_client::secrets::RegistryAuth::Anonymous;
    let manifest: oci_client::manifest::OciImageManifest =
        serde_json::from_slice(&img.manifest).unwrap();
    client
        .push(
            &r,
            &[oci_client::client::ImageLayer::new(
                img.layer.clone(),
                "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                None,
            )],
            oci_client::client::Config::new(
                img.config.clone(),
                "application/vnd.oci.image.config.v1+json".into(),
                None,
            ),
            &auth,
            Some(manifest),
        )
        .await
        .expect("push");
    let pushed = client
        .fetch_manifest_digest(&r, &auth)
        .await
        .expect("digest");

    let info = rt
        .ensure_image(&reference, None, PullPolicy::Always)
        .await
        .expect("pull");
    assert!(info.pulled);
    assert_eq!(info.name, reference);
    assert_eq!(info.digest, pushed);
    assert_eq!(info.cmd, ["sleep", "3600"]);

    // The pulled image runs.
    let spec = env.spec("p1", &reference, &["sh", "-c", "echo pulled-ok"]);
    let mut events = rt.events().await.unwrap();
    rt.create(&spec).await.expect("create from pulled image");
    rt.start("p1").await.expect("start");
    assert_eq!(next_exit(&mut events, "p1").await.0, 0);
    let log = std::fs::read_to_string(&spec.log_path).unwrap_or_default();
    // The driver may still be flushing right after the exit.
    if !log.contains("pulled-ok") {
        let p = spec.log_path.clone();
        wait_for(
            "the pulled container's output",
            Duration::from_secs(5),
            || {
                let p = p.clone();
                async move {
                    std::fs::read_to_string(&p)
                        .ok()
                        .filter(|s| s.contains("pulled-ok"))
                        .map(|_| ())
                }
            },
        )
        .await;
    }
    rt.remove("p1").await.unwrap();

    // Once / PreferCached: served from cache without contacting the registry.
    for policy in [PullPolicy::Once, PullPolicy::PreferCached] {
        let i = rt.ensure_image(&reference, None, policy).await.unwrap();
        assert!(!i.pulled, "{policy:?}");
        assert_eq!(i.digest, pushed);
    }

    for missing in [
        format!("{}/berth/busybox:nope", registry.addr),
        format!("{}/berth/absent:1", registry.addr),
    ] {
        match rt.ensure_image(&missing, None, PullPolicy::Default).await {
            Err(RuntimeError::ImageNotFound(m)) => assert!(m.contains(&missing), "{m}"),
            other => panic!("{missing}: expected ImageNotFound, got {other:?}"),
        }
    }

    registry.stop();
    let cached = rt
        .ensure_image(&reference, None, PullPolicy::Default)
        .await
        .expect("default falls back to the cached image");
    assert!(!cached.pulled);
    assert_eq!(cached.digest, pushed);
    match rt.ensure_image(&reference, None, PullPolicy::Always).await {
        Err(RuntimeError::Pull(m)) => {
            assert!(
                m.contains(&reference) && m.contains("connection refused"),
                "{m}"
            )
        }
        other => panic!("expected Pull, got {other:?}"),
    }
    let unreachable = format!("{}/berth/other:1", registry.addr);
    assert!(matches!(
        rt.ensure_image(&unreachable, None, PullPolicy::Default)
            .await,
        Err(RuntimeError::Pull(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_save_archive_imports_and_runs() {
    let Some(env) = Env::new().await else { return };
    let rt = &env.rt;
    let img = build_image();
    // `docker save` (classic layout): <id>/layer.tar uncompressed, <hex>.json config,
    // manifest.json naming them with RepoTags.
    let mut gz = flate2::read::GzDecoder::new(&img.layer[..]);
    let mut layer_tar = Vec::new();
    std::io::Read::read_to_end(&mut gz, &mut layer_tar).unwrap();
    let config_name = format!("{}.json", digest(&img.config).trim_start_matches("sha256:"));
    let name = format!("berth.test/saved:{}", env.ns);
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": config_name, "RepoTags": [name], "Layers": ["abc123/layer.tar"]}
    ]))
    .unwrap();
    let path = env.dir.path().join("saved.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for (p, data) in [
        ("abc123/layer.tar", &layer_tar),
        (config_name.as_str(), &img.config),
        ("manifest.json", &manifest),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, p, &data[..]).unwrap();
    }
    tar.finish().unwrap();
    drop(tar);
    let infos = rt.import_archive(&path).await.expect("import docker save");
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].name, name);
    assert_eq!(infos[0].cmd, ["sleep", "3600"]);
    let spec = env.spec("saved", &infos[0].name, &["echo", "from-docker-save"]);
    let mut events = rt.events().await.unwrap();
    rt.create(&spec).await.expect("create");
    rt.start("saved").await.expect("start");
    assert_eq!(next_exit(&mut events, "saved").await.0, 0);
    let p = spec.log_path.clone();
    wait_for("the container's output", Duration::from_secs(5), || {
        let p = p.clone();
        async move {
            std::fs::read_to_string(&p)
                .ok()
                .filter(|s| s.contains("from-docker-save"))
                .map(|_| ())
        }
    })
    .await;
    rt.remove("saved").await.unwrap();
}
