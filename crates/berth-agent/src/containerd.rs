//! [`Runtime`] on containerd 1.6 over its gRPC socket.
//!
//! * Every call carries the `containerd-namespace` header of the namespace given to
//!   [`Containerd::connect`] (`berth` in production).
//! * Pulls: containerd 1.6 has no Transfer service, so the registry is read with `oci-client`
//!   ([`crate::image::Registry`]) and the blobs are written to containerd's content store under
//!   a lease, labelled for containerd's GC exactly as `ctr pull` does, then unpacked into
//!   overlayfs snapshots with the Diff service. [`Containerd::import_archive`] does the same
//!   from an OCI layout (or `docker save`) tar.
//! * Logs: the task's stdout and stderr go to the shim's `binary://` logger, i.e. the shim
//!   (not the agent) runs `<log driver> log-driver <log path>` with the container's stdout on
//!   fd 3, stderr on fd 4 and a readiness pipe on fd 5 (containerd `pkg/process/io.go`
//!   `NewBinaryIO`). Output keeps flowing while the agent is down.
//! * OOM kills: containerd reports them as `/tasks/oom` events only; a background
//!   subscription started by `connect` remembers them per container id, and `state()` also
//!   reads the cgroup's own OOM-kill counter (cgroup v1 `memory.oom_control`, v2
//!   `memory.events`), which survives until the task is deleted (so an agent restarted after
//!   the event still reports it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use containerd_client::services::v1::{
    container::Runtime as ContainerRuntime, containers_client::ContainersClient,
    content_client::ContentClient, diff_client::DiffClient, events_client::EventsClient,
    images_client::ImagesClient, leases_client::LeasesClient,
    snapshots::snapshots_client::SnapshotsClient, snapshots::CommitSnapshotRequest,
    snapshots::MountsRequest, snapshots::PrepareSnapshotRequest, snapshots::RemoveSnapshotRequest,
    snapshots::StatSnapshotRequest, tasks_client::TasksClient, version_client::VersionClient,
    ApplyRequest, Container, CreateContainerRequest, CreateImageRequest,
    CreateRequest as CreateLeaseRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteProcessRequest, DeleteRequest as DeleteLeaseRequest, DeleteTaskRequest,
    ExecProcessRequest, GetContainerRequest, GetImageRequest, GetRequest, Image, InfoRequest,
    KillRequest, ListContainersRequest, PublishRequest, ReadContentRequest, StartRequest,
    SubscribeRequest, UpdateImageRequest, UpdateRequest as UpdateContentRequest, WaitRequest,
    WriteContentRequest,
};
use containerd_client::tonic::metadata::AsciiMetadataValue;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};
use containerd_client::types::v1::Status as TaskStatus;
use containerd_client::types::{Descriptor as PbDescriptor, Mount as PbMount};
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::image::{
    self, chain_ids, image_info, index_gc_labels, manifest_gc_labels, normalize_reference,
    parse_config, parse_manifest, select_platform, sha256_digest, Descriptor, ImageConfig,
    Manifest, Parsed, Registry,
};
use crate::runtime::{
    ContainerSpec, ContainerState, ExecOutcome, ExistingContainer, ImageInfo, PullPolicy,
    RegistryAuth, Runtime, RuntimeError, RuntimeEvent,
};
use crate::spec::{self, UserDb};

/// Image label recording when this agent last pulled the image (unix seconds); what
/// [`PullPolicy::Once`] looks for.
pub const LABEL_PULLED_AT: &str = "berth.pulled-at";
/// Image label recording that the image was imported from an archive (unix seconds).
/// [`PullPolicy::Once`] accepts it like `berth.pulled-at`: the image was put here on purpose.
pub const LABEL_IMPORTED_AT: &str = "berth.imported-at";

const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
const CHUNK: usize = 1 << 20;
/// Topic of the marker `events()` publishes to know its subscription is live.
const READY_TOPIC: &str = "/berth/events-ready";
const SIGKILL: u32 = 9;

/// How berth uses containerd.
#[derive(Debug, Clone)]
pub struct ContainerdOptions {
    /// Registries (`host` or `host:port`) spoken to over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// The log driver the shim runs as `<log_driver> log-driver <path>` (the berth binary).
    pub log_driver: PathBuf,
    pub snapshotter: String,
    /// containerd runtime name.
    pub runtime: String,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions {
            insecure_registries: vec![],
            log_driver: std::env::current_exe()
                .unwrap_or_else(|_| PathBuf::from("/usr/local/bin/berth")),
            snapshotter: "overlayfs".into(),
            runtime: "io.containerd.runc.v2".into(),
        }
    }
}

/// The containerd runtime. Cheap to share behind an `Arc`.
pub struct Containerd {
    channel: Channel,
    namespace: String,
    ns_header: AsciiMetadataValue,
    opts: ContainerdOptions,
    ooms: Arc<Mutex<HashSet<String>>>,
    oom_watch: tokio::task::JoinHandle<()>,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.oom_watch.abort();
    }
}

/// An image as stored in containerd, resolved to this platform's manifest.
struct StoredImage {
    target: PbDescriptor,
    labels: HashMap<String, String>,
    manifest: Manifest,
    config: ImageConfig,
}

fn grpc_err(op: &str, what: &str, s: Status) -> RuntimeError {
    match s.code() {
        Code::Unavailable => RuntimeError::Unavailable(format!(
            "{op} {what}: containerd is not reachable: {}",
            s.message()
        )),
        Code::NotFound => RuntimeError::NotFound(what.to_string()),
        _ => RuntimeError::Other(format!("{op} {what}: {}", clean_msg(s.message()))),
    }
}

/// containerd appends the gRPC code (": unknown") to shim errors; drop it.
fn clean_msg(m: &str) -> String {
    m.trim_end_matches(": unknown").to_string()
}

fn is_not_found(s: &Status) -> bool {
    s.code() == Code::NotFound
}

fn ts_ms(t: Option<&prost_types::Timestamp>) -> u64 {
    match t {
        Some(t) if t.seconds > 0 => t.seconds as u64 * 1000 + (t.nanos.max(0) as u64) / 1_000_000,
        _ => 0,
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 UTC time (`containerd.io/gc.expire` wants one).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The shim logging URI sending stdout and stderr to `<driver> log-driver <log_path>`.
pub fn log_uri(driver: &Path, log_path: &Path) -> String {
    format!(
        "binary://{}?log-driver={}",
        percent_encode(&driver.to_string_lossy(), true),
        percent_encode(&log_path.to_string_lossy(), false)
    )
}

fn pb_desc(d: &Descriptor) -> PbDescriptor {
    PbDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        annotations: HashMap::new(),
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

/// Directories making up a snapshot's mounts, topmost first (overlay upper, then lowers;
/// or a bind source), so files of the image can be read without mounting anything.
fn rootfs_dirs(mounts: &[PbMount]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for m in mounts {
        match m.r#type.as_str() {
            "bind" | "rbind" => dirs.push(PathBuf::from(&m.source)),
            "overlay" => {
                for o in &m.options {
                    if let Some(u) = o.strip_prefix("upperdir=") {
                        dirs.insert(0, PathBuf::from(u));
                    }
                }
                for o in &m.options {
                    if let Some(l) = o.strip_prefix("lowerdir=") {
                        dirs.extend(l.split(':').map(PathBuf::from));
                    }
                }
            }
            _ => {}
        }
    }
    dirs
}

fn read_rootfs_file(dirs: &[PathBuf], rel: &str) -> Option<String> {
    dirs.iter()
        .find_map(|d| std::fs::read_to_string(d.join(rel)).ok())
}

/// The kernel's OOM-kill count for a container's cgroup, while the cgroup exists (until the
/// task is deleted).
fn cgroup_oom_killed(id: &str) -> bool {
    let cg = spec::cgroups_path(id);
    let cg = cg.trim_start_matches('/');
    let candidates = [
        (
            format!("/sys/fs/cgroup/memory/{cg}/memory.oom_control"),
            "oom_kill ",
        ),
        (format!("/sys/fs/cgroup/{cg}/memory.events"), "oom_kill "),
    ];
    candidates.iter().any(|(path, key)| {
        std::fs::read_to_string(path).is_ok_and(|s| {
            s.lines().any(|l| {
                l.strip_prefix(key)
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
    })
}

fn event_any(a: &prost_types::Any) -> prost_types::Any {
    let mut a = a.clone();
    if !a.type_url.contains('/') {
        a.type_url = format!("/{}", a.type_url);
    }
    a
}

impl Containerd {
    /// Connect to containerd's socket and start watching OOM events in `namespace`.
    pub async fn connect(
        socket: &Path,
        namespace: &str,
        opts: ContainerdOptions,
    ) -> Result<Self, RuntimeError> {
        if namespace.is_empty()
            || !namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(RuntimeError::Other(format!(
                "invalid containerd namespace {namespace:?}: use letters, digits, '.', '_' and '-'"
            )));
        }
        let ns_header: AsciiMetadataValue = namespace.parse().map_err(|_| {
            RuntimeError::Other(format!("invalid containerd namespace {namespace:?}"))
        })?;
        let channel = containerd_client::connect(socket).await.map_err(|e| {
            RuntimeError::Unavailable(format!(
                "cannot connect to containerd at {}: {e}",
                socket.display()
            ))
        })?;
        VersionClient::new(channel.clone())
            .version(())
            .await
            .map_err(|s| {
                RuntimeError::Unavailable(format!(
                    "containerd at {} does not answer: {}",
                    socket.display(),
                    s.message()
                ))
            })?;
        let ooms = Arc::new(Mutex::new(HashSet::new()));
        let oom_watch = tokio::spawn(watch_ooms(
            channel.clone(),
            namespace.to_string(),
            ooms.clone(),
        ));
        Ok(Containerd {
            channel,
            namespace: namespace.to_string(),
            ns_header,
            opts,
            ooms,
            oom_watch,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut()
            .insert("containerd-namespace", self.ns_header.clone());
        r
    }

    fn req_lease<T>(&self, msg: T, lease: &str) -> Request<T> {
        let mut r = self.req(msg);
        if let Ok(v) = lease.parse() {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }
    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }

    // ---- leases -------------------------------------------------------------------------

    /// A lease protecting what an operation writes from GC until it is referenced; expires on
    /// its own after an hour should the agent die mid-way.
    async fn lease(&self) -> Result<String, RuntimeError> {
        let id = format!("berth-{}", random_suffix());
        let labels = HashMap::from([(
            "containerd.io/gc.expire".to_string(),
            rfc3339(now_secs() + 3600),
        )]);
        LeasesClient::new(self.channel.clone())
            .create(self.req(CreateLeaseRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(|s| grpc_err("create lease", &id, s))?;
        Ok(id)
    }

    async fn drop_lease(&self, id: &str) {
        if let Err(s) = LeasesClient::new(self.channel.clone())
            .delete(self.req(DeleteLeaseRequest {
                id: id.to_string(),
                sync: false,
            }))
            .await
        {
            tracing::warn!(lease = id, error = %s.message(), "could not delete containerd lease");
        }
    }

    // ---- content ------------------------------------------------------------------------

    async fn content_labels(
        &self,
        digest: &str,
    ) -> Result<Option<HashMap<String, String>>, RuntimeError> {
        match self
            .content()
            .info(self.req(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(Some(
                r.into_inner().info.map(|i| i.labels).unwrap_or_default(),
            )),
            Err(s) if is_not_found(&s) => Ok(None),
            Err(s) => Err(grpc_err("content info", digest, s)),
        }
    }

    async fn set_content_labels(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), RuntimeError> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        self.content()
            .update(self.req(UpdateContentRequest {
                info: Some(containerd_client::services::v1::Info {
                    digest: digest.to_string(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(|s| grpc_err("label content", digest, s))?;
        Ok(())
    }

    async fn read_content(&self, digest: &str) -> Result<Vec<u8>, RuntimeError> {
        let mut s = self
            .content()
            .read(self.req(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(|s| grpc_err("read content", digest, s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = s
            .message()
            .await
            .map_err(|s| grpc_err("read content", digest, s))?
        {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    /// Write a blob into the content store (Content.Write, streamed in 1 MiB messages) unless
    /// it is already there. containerd verifies size and digest on commit.
    async fn write_content(
        &self,
        lease: &str,
        digest: &str,
        size: i64,
        mut data: BoxStream<'static, Result<Bytes, String>>,
    ) -> Result<(), RuntimeError> {
        if self.content_labels(digest).await?.is_some() {
            return Ok(());
        }
        let wref = format!("berth-{}-{}", digest.replace(':', "-"), random_suffix());
        let (tx, rx) = mpsc::channel::<WriteContentRequest>(2);
        let msg = |action: i32, offset: i64, data: Vec<u8>| WriteContentRequest {
            action,
            r#ref: wref.clone(),
            total: size,
            expected: digest.to_string(),
            offset,
            data,
            labels: HashMap::new(),
        };
        use containerd_client::services::v1::WriteAction;
        // The first message opens the writer; it must be queued before the call is made,
        // as containerd answers (and sends response headers) only after reading it.
        let _ = tx.send(msg(WriteAction::Stat as i32, 0, vec![])).await;
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let op = format!("write content {digest}");
        let mut resp = match self.content().write(self.req_lease(stream, lease)).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
            Err(s) => return Err(grpc_err("write content", digest, s)),
        };
        let step = |r: Result<Option<_>, Status>| -> Result<(), RuntimeError> {
            match r {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(RuntimeError::Other(format!(
                    "{op}: containerd closed the stream"
                ))),
                Err(s) => Err(grpc_err("write content", digest, s)),
            }
        };
        match resp.message().await {
            Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
            r => step(r)?,
        }
        let mut offset: i64 = 0;
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let next = data.next().await;
            let done = next.is_none();
            if let Some(chunk) = next {
                let chunk =
                    chunk.map_err(|e| RuntimeError::Pull(format!("fetch {digest}: {e}")))?;
                pending.extend_from_slice(&chunk);
            }
            while pending.len() >= CHUNK || (done && !pending.is_empty()) {
                let n = pending.len().min(CHUNK);
                let part: Vec<u8> = pending.drain(..n).collect();
                let len = part.len() as i64;
                if tx
                    .send(msg(WriteAction::Write as i32, offset, part))
                    .await
                    .is_err()
                {
                    return Err(RuntimeError::Other(format!(
                        "write content {digest}: stream closed"
                    )));
                }
                match resp.message().await {
                    // A concurrent pull of the same blob committed it first.
                    Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
                    r => step(r)?,
                }
                offset += len;
            }
            if done {
                break;
            }
        }
        if offset != size {
            return Err(RuntimeError::Pull(format!(
                "blob {digest}: got {offset} bytes, expected {size}"
            )));
        }
        let _ = tx
            .send(msg(WriteAction::Commit as i32, offset, vec![]))
            .await;
        match resp.message().await {
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) if s.code() == Code::FailedPrecondition || s.code() == Code::InvalidArgument => {
                return Err(RuntimeError::Pull(format!(
                    "blob {digest} failed verification: {}",
                    s.message()
                )))
            }
            r => step(r)?,
        }
        drop(tx);
        Ok(())
    }

    async fn write_bytes(
        &self,
        lease: &str,
        digest: &str,
        data: Vec<u8>,
    ) -> Result<(), RuntimeError> {
        let size = data.len() as i64;
        let s = futures::stream::once(async move { Ok(Bytes::from(data)) }).boxed();
        self.write_content(lease, digest, size, s).await
    }

    // ---- images -------------------------------------------------------------------------

    async fn get_image(&self, name: &str) -> Result<Option<Image>, RuntimeError> {
        match self
            .images()
            .get(self.req(GetImageRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().image),
            Err(s) if is_not_found(&s) => Ok(None),
            Err(s) => Err(grpc_err("get image", name, s)),
        }
    }

    /// Read an image's manifest (for this platform) and config from the content store.
    async fn resolve_stored(
        &self,
        target: &PbDescriptor,
    ) -> Result<(Manifest, Option<String>, ImageConfig), RuntimeError> {
        let bytes = self.read_content(&target.digest).await?;
        let (parsed, _) = parse_manifest(&bytes)
            .map_err(|e| RuntimeError::Other(format!("{}: {e}", target.digest)))?;
        let (manifest, child) = match parsed {
            Parsed::Manifest(m) => (m, None),
            Parsed::Index(list) => {
                let d = select_platform(&list).ok_or_else(|| {
                    RuntimeError::Pull(format!(
                        "{}: no manifest for linux/{} in the image index",
                        target.digest,
                        image::host_arch()
                    ))
                })?;
                let mb = self.read_content(&d.digest).await?;
                match parse_manifest(&mb)
                    .map_err(|e| RuntimeError::Other(format!("{}: {e}", d.digest)))?
                {
                    (Parsed::Manifest(m), _) => (m, Some(d.digest.clone())),
                    _ => {
                        return Err(RuntimeError::Other(format!(
                            "{}: nested image indexes are not supported",
                            d.digest
                        )))
                    }
                }
            }
        };
        let cb = self.read_content(&manifest.config.digest).await?;
        let config = parse_config(&cb)
            .map_err(|e| RuntimeError::Other(format!("{}: {e}", manifest.config.digest)))?;
        if config.diff_ids.len() != manifest.layers.len() {
            return Err(RuntimeError::Other(format!(
                "image config {} lists {} layers, its manifest {}",
                manifest.config.digest,
                config.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        Ok((manifest, child, config))
    }

    async fn stored_image(&self, name: &str) -> Result<Option<StoredImage>, RuntimeError> {
        let Some(img) = self.get_image(name).await? else {
            return Ok(None);
        };
        let Some(target) = img.target.clone() else {
            return Ok(None);
        };
        let (manifest, _, config) = self.resolve_stored(&target).await?;
        Ok(Some(StoredImage {
            target,
            labels: img.labels,
            manifest,
            config,
        }))
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool, RuntimeError> {
        match self
            .snapshots()
            .stat(self.req(StatSnapshotRequest {
                snapshotter: self.opts.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if is_not_found(&s) => Ok(false),
            Err(s) => Err(grpc_err("stat snapshot", key, s)),
        }
    }

    /// Unpack the layers into committed snapshots named by chain id (skipping those present):
    /// Prepare on the parent, Diff.Apply the layer, Commit.
    async fn unpack(
        &self,
        lease: &str,
        manifest: &Manifest,
        config: &ImageConfig,
    ) -> Result<String, RuntimeError> {
        let chain = chain_ids(&config.diff_ids);
        for (i, layer) in manifest.layers.iter().enumerate() {
            let id = &chain[i];
            if self.snapshot_exists(id).await? {
                continue;
            }
            let parent = if i == 0 {
                String::new()
            } else {
                chain[i - 1].clone()
            };
            let key = format!("extract-{}-{}", random_suffix(), id);
            let labels = HashMap::from([("containerd.io/snapshot.ref".to_string(), id.clone())]);
            let mounts = self
                .snapshots()
                .prepare(self.req_lease(
                    PrepareSnapshotRequest {
                        snapshotter: self.opts.snapshotter.clone(),
                        key: key.clone(),
                        parent,
                        labels: labels.clone(),
                    },
                    lease,
                ))
                .await
                .map_err(|s| grpc_err("prepare snapshot", &key, s))?
                .into_inner()
                .mounts;
            let applied = DiffClient::new(self.channel.clone())
                .apply(self.req_lease(
                    ApplyRequest {
                        diff: Some(pb_desc(layer)),
                        mounts,
                        payloads: HashMap::new(),
                        sync_fs: false,
                    },
                    lease,
                ))
                .await;
            let result = match applied {
                Err(s) => Err(grpc_err("apply layer", &layer.digest, s)),
                Ok(r) => {
                    let got = r.into_inner().applied.map(|d| d.digest).unwrap_or_default();
                    if got != config.diff_ids[i] {
                        Err(RuntimeError::Other(format!(
                            "layer {} unpacked to {got}, the image config says {}",
                            layer.digest, config.diff_ids[i]
                        )))
                    } else {
                        Ok(())
                    }
                }
            };
            let result = match result {
                Ok(()) => match self
                    .snapshots()
                    .commit(self.req_lease(
                        CommitSnapshotRequest {
                            snapshotter: self.opts.snapshotter.clone(),
                            name: id.clone(),
                            key: key.clone(),
                            labels,
                        },
                        lease,
                    ))
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(s) if s.code() == Code::AlreadyExists => Ok(false),
                    Err(s) => Err(grpc_err("commit snapshot", id, s)),
                },
                Err(e) => Err(e),
            };
            if !matches!(result, Ok(true)) {
                let _ = self.remove_snapshot(&key).await;
            }
            result?;
        }
        Ok(chain.last().cloned().unwrap_or_default())
    }

    async fn remove_snapshot(&self, key: &str) -> Result<(), RuntimeError> {
        match self
            .snapshots()
            .remove(self.req(RemoveSnapshotRequest {
                snapshotter: self.opts.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if is_not_found(&s) => Ok(()),
            Err(s) => Err(grpc_err("remove snapshot", key, s)),
        }
    }

    /// With every blob of `target` in the content store (under `lease`): label them for GC,
    /// unpack, and create or update the image record `name`.
    async fn finish_image(
        &self,
        lease: &str,
        name: &str,
        target: PbDescriptor,
        mut labels: HashMap<String, String>,
        pulled: bool,
    ) -> Result<ImageInfo, RuntimeError> {
        let (manifest, child, config) = self.resolve_stored(&target).await?;
        if let Some(child) = &child {
            self.set_content_labels(&target.digest, index_gc_labels([child.as_str()]))
                .await?;
        }
        let manifest_digest = child.clone().unwrap_or_else(|| target.digest.clone());
        self.set_content_labels(&manifest_digest, manifest_gc_labels(&manifest))
            .await?;
        for (layer, diff_id) in manifest.layers.iter().zip(&config.diff_ids) {
            self.set_content_labels(
                &layer.digest,
                HashMap::from([(LABEL_UNCOMPRESSED.to_string(), diff_id.clone())]),
            )
            .await?;
        }
        let top = self.unpack(lease, &manifest, &config).await?;
        let snap_label = format!("containerd.io/gc.ref.snapshot.{}", self.opts.snapshotter);
        if !top.is_empty() {
            self.set_content_labels(
                &manifest.config.digest,
                HashMap::from([(snap_label.clone(), top.clone())]),
            )
            .await?;
            labels.insert(snap_label, top);
        }
        let existing = self.get_image(name).await?;
        let image = Image {
            name: name.to_string(),
            labels: match &existing {
                Some(e) => {
                    let mut l = e.labels.clone();
                    l.extend(labels);
                    l
                }
                None => labels,
            },
            target: Some(target.clone()),
            created_at: None,
            updated_at: None,
        };
        if existing.is_some() {
            self.images()
                .update(self.req_lease(
                    UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    },
                    lease,
                ))
                .await
                .map_err(|s| grpc_err("update image", name, s))?;
        } else {
            self.images()
                .create(self.req_lease(
                    CreateImageRequest {
                        image: Some(image),
                        source_date_epoch: None,
                    },
                    lease,
                ))
                .await
                .map_err(|s| grpc_err("create image", name, s))?;
        }
        Ok(image_info(name, &target.digest, &config, pulled))
    }

    /// Make sure a stored image's layers are unpacked (they may have been removed).
    async fn ensure_unpacked(&self, img: &StoredImage) -> Result<(), RuntimeError> {
        let chain = chain_ids(&img.config.diff_ids);
        match chain.last() {
            Some(top) if !self.snapshot_exists(top).await? => {
                let lease = self.lease().await?;
                let r = self.unpack(&lease, &img.manifest, &img.config).await;
                self.drop_lease(&lease).await;
                r.map(|_| ())
            }
            _ => Ok(()),
        }
    }

    /// Pull `reference` from its registry into containerd and unpack it.
    async fn pull(
        &self,
        display: &str,
        name: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<ImageInfo, RuntimeError> {
        let reference = normalize_reference(name)?;
        let reg = Registry::new(reference, display, auth, &self.opts.insecure_registries);
        let (top_bytes, top_digest) = reg.manifest(None).await?;
        let (parsed, top_mt) = parse_manifest(&top_bytes)
            .map_err(|e| RuntimeError::Pull(format!("pull {display}: {e}")))?;
        let (manifest_bytes, manifest_digest) = match &parsed {
            Parsed::Manifest(_) => (top_bytes.clone(), top_digest.clone()),
            Parsed::Index(list) => {
                let d = select_platform(list).ok_or_else(|| {
                    RuntimeError::Pull(format!(
                        "pull {display}: no manifest for linux/{} in the image index",
                        image::host_arch()
                    ))
                })?;
                reg.manifest(Some(&d.digest)).await?
            }
        };
        let manifest = match parse_manifest(&manifest_bytes) {
            Ok((Parsed::Manifest(m), _)) => m,
            Ok(_) => {
                return Err(RuntimeError::Pull(format!(
                    "pull {display}: nested image index"
                )))
            }
            Err(e) => return Err(RuntimeError::Pull(format!("pull {display}: {e}"))),
        };
        let lease = self.lease().await?;
        let result = async {
            for blob in std::iter::once(&manifest.config).chain(manifest.layers.iter()) {
                if self.content_labels(&blob.digest).await?.is_some() {
                    continue;
                }
                let stream = reg.blob(&blob.digest).await?;
                self.write_content(&lease, &blob.digest, blob.size, stream)
                    .await?;
            }
            self.write_bytes(&lease, &manifest_digest, manifest_bytes.clone())
                .await?;
            if manifest_digest != top_digest {
                self.write_bytes(&lease, &top_digest, top_bytes.clone())
                    .await?;
            }
            let target = PbDescriptor {
                media_type: top_mt.clone(),
                digest: top_digest.clone(),
                size: top_bytes.len() as i64,
                annotations: HashMap::new(),
            };
            let labels = HashMap::from([(LABEL_PULLED_AT.to_string(), now_secs().to_string())]);
            self.finish_image(&lease, name, target, labels, true).await
        }
        .await;
        self.drop_lease(&lease).await;
        result
    }

    /// Import an image archive as `ctr image import` does: an OCI image layout tar
    /// (`index.json` + `blobs/sha256/…`, names from the `io.containerd.image.name` or a full
    /// `org.opencontainers.image.ref.name` annotation) or a `docker save` tar
    /// (`manifest.json` with `RepoTags`). Blobs go into the content store, each image is
    /// created (or updated) and unpacked.
    pub async fn import_archive(&self, path: &Path) -> Result<Vec<ImageInfo>, RuntimeError> {
        let p = path.to_path_buf();
        let meta = tokio::task::spawn_blocking(move || image::read_archive_meta(&p))
            .await
            .map_err(|e| RuntimeError::Other(format!("import {}: {e}", path.display())))?
            .map_err(|e| RuntimeError::Other(format!("import {}: {e}", path.display())))?;
        let lease = self.lease().await?;
        let r = if let Some(index) = &meta.index {
            self.import_oci_layout(&lease, path, index).await
        } else if let Some(m) = &meta.docker_manifest {
            self.import_docker_save(&lease, path, m).await
        } else {
            Err(RuntimeError::Other(format!(
                "import {}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
                path.display()
            )))
        };
        self.drop_lease(&lease).await;
        r
    }

    async fn import_oci_layout(
        &self,
        lease: &str,
        path: &Path,
        index: &[u8],
    ) -> Result<Vec<ImageInfo>, RuntimeError> {
        let fail = |e: String| RuntimeError::Other(format!("import {}: {e}", path.display()));
        let entries = match parse_manifest(index).map_err(&fail)? {
            (Parsed::Index(m), _) => m,
            _ => return Err(fail("index.json is not an image index".into())),
        };
        let mut rx = image::stream_archive_files(path.to_path_buf(), |p| p.starts_with("blobs/"));
        while let Some(f) = rx.recv().await {
            let f = f.map_err(&fail)?;
            let mut parts = f.path.trim_start_matches("blobs/").splitn(2, '/');
            let (Some(alg), Some(hex)) = (parts.next(), parts.next()) else {
                continue;
            };
            let digest = format!("{alg}:{hex}");
            if alg == "sha256" && sha256_digest(&f.data) != digest {
                return Err(fail(format!("blob {} does not match its digest", f.path)));
            }
            self.write_bytes(lease, &digest, f.data).await?;
        }
        let mut out = Vec::new();
        for e in &entries {
            let Some(raw_name) = image::layout_image_name(e) else {
                return Err(fail(format!(
                    "manifest {} has no image name (annotation {} or {})",
                    e.digest,
                    image::ANNOTATION_CONTAINERD_NAME,
                    image::ANNOTATION_REF_NAME
                )));
            };
            let name = normalize_reference(&raw_name)?.whole();
            let mut target = pb_desc(e);
            if target.media_type.is_empty() {
                target.media_type = image::MT_OCI_MANIFEST.into();
            }
            let labels = HashMap::from([(LABEL_IMPORTED_AT.to_string(), now_secs().to_string())]);
            out.push(
                self.finish_image(lease, &name, target, labels, false)
                    .await?,
            );
        }
        Ok(out)
    }

    async fn import_docker_save(
        &self,
        lease: &str,
        path: &Path,
        manifest_json: &[u8],
    ) -> Result<Vec<ImageInfo>, RuntimeError> {
        let fail = |e: String| RuntimeError::Other(format!("import {}: {e}", path.display()));
        let entries: Vec<image::DockerSaveEntry> = serde_json::from_slice(manifest_json)
            .map_err(|e| fail(format!("manifest.json: {e}")))?;
        let wanted: HashSet<String> = entries
            .iter()
            .flat_map(|e| std::iter::once(e.config.clone()).chain(e.layers.iter().cloned()))
            .collect();
        // path in the archive → (digest, size, gzip?)
        let mut written: HashMap<String, (String, i64, bool)> = HashMap::new();
        let want = wanted.clone();
        let mut rx = image::stream_archive_files(path.to_path_buf(), move |p| want.contains(p));
        while let Some(f) = rx.recv().await {
            let f = f.map_err(&fail)?;
            let digest = sha256_digest(&f.data);
            let gz = f.data.starts_with(&[0x1f, 0x8b]);
            let size = f.data.len() as i64;
            self.write_bytes(lease, &digest, f.data).await?;
            written.insert(f.path, (digest, size, gz));
        }
        let mut out = Vec::new();
        for e in &entries {
            let get = |p: &String| {
                written
                    .get(p)
                    .cloned()
                    .ok_or_else(|| fail(format!("{p} is listed in manifest.json but missing")))
            };
            let (cdigest, csize, _) = get(&e.config)?;
            let mut layers = Vec::new();
            for l in &e.layers {
                let (d, s, gz) = get(l)?;
                let mt = if gz {
                    "application/vnd.docker.image.rootfs.diff.tar.gzip"
                } else {
                    image::MT_DOCKER_LAYER
                };
                layers.push(serde_json::json!({"mediaType": mt, "size": s, "digest": d}));
            }
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": image::MT_DOCKER_MANIFEST,
                "config": {"mediaType": image::MT_DOCKER_CONFIG, "size": csize, "digest": cdigest},
                "layers": layers,
            });
            let mbytes = serde_json::to_vec(&manifest).map_err(|e| fail(e.to_string()))?;
            let mdigest = sha256_digest(&mbytes);
            let msize = mbytes.len() as i64;
            self.write_bytes(lease, &mdigest, mbytes).await?;
            for tag in e.repo_tags.iter().flatten() {
                let name = normalize_reference(tag)?.whole();
                let target = PbDescriptor {
                    media_type: image::MT_DOCKER_MANIFEST.into(),
                    digest: mdigest.clone(),
                    size: msize,
                    annotations: HashMap::new(),
                };
                let labels =
                    HashMap::from([(LABEL_IMPORTED_AT.to_string(), now_secs().to_string())]);
                out.push(
                    self.finish_image(lease, &name, target, labels, false)
                        .await?,
                );
            }
        }
        Ok(out)
    }

    // ---- containers ---------------------------------------------------------------------

    async fn get_container(&self, id: &str) -> Result<Option<Container>, RuntimeError> {
        match self
            .containers()
            .get(self.req(GetContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(r) => Ok(r.into_inner().container),
            Err(s) if is_not_found(&s) => Ok(None),
            Err(s) => Err(grpc_err("get container", id, s)),
        }
    }

    async fn get_task(
        &self,
        id: &str,
    ) -> Result<Option<containerd_client::types::v1::Process>, RuntimeError> {
        match self
            .tasks()
            .get(self.req(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().process),
            Err(s) if is_not_found(&s) => Ok(None),
            Err(s) => Err(grpc_err("get task", id, s)),
        }
    }

    fn oom_seen(&self, id: &str) -> bool {
        self.ooms.lock().map(|s| s.contains(id)).unwrap_or(false) || cgroup_oom_killed(id)
    }

    fn forget_oom(&self, id: &str) {
        if let Ok(mut s) = self.ooms.lock() {
            s.remove(id);
        }
    }

    fn task_state(&self, id: &str, p: &containerd_client::types::v1::Process) -> ContainerState {
        match TaskStatus::try_from(p.status).unwrap_or(TaskStatus::Unknown) {
            TaskStatus::Created => ContainerState::Created,
            TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing => {
                ContainerState::Running { pid: p.pid }
            }
            TaskStatus::Stopped => ContainerState::Stopped {
                exit_code: p.exit_status as i32,
                exited_at_ms: ts_ms(p.exited_at.as_ref()),
                oom_killed: self.oom_seen(id),
            },
            // The shim is gone (containerd cannot tell): nothing runs any more.
            TaskStatus::Unknown => ContainerState::Stopped {
                exit_code: -1,
                exited_at_ms: 0,
                oom_killed: self.oom_seen(id),
            },
        }
    }

    async fn create_task(
        &self,
        spec: &ContainerSpec,
        mounts: Vec<PbMount>,
    ) -> Result<(), RuntimeError> {
        if let Some(dir) = spec.log_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                RuntimeError::Start(format!(
                    "{}: cannot create log directory {}: {e}",
                    spec.id,
                    dir.display()
                ))
            })?;
        }
        let uri = log_uri(&self.opts.log_driver, &spec.log_path);
        match self
            .tasks()
            .create(self.req(CreateTaskRequest {
                container_id: spec.id.clone(),
                rootfs: mounts,
                stdin: String::new(),
                stdout: uri.clone(),
                stderr: uri,
                terminal: false,
                ..Default::default()
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) if s.code() == Code::Unavailable => Err(grpc_err("create task", &spec.id, s)),
            Err(s) => Err(RuntimeError::Start(format!(
                "{}: {}",
                spec.id,
                clean_msg(s.message())
            ))),
        }
    }

    async fn snapshot_mounts(&self, key: &str) -> Result<Vec<PbMount>, RuntimeError> {
        Ok(self
            .snapshots()
            .mounts(self.req(MountsRequest {
                snapshotter: self.opts.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
            .map_err(|s| grpc_err("snapshot mounts", key, s))?
            .into_inner()
            .mounts)
    }

    async fn create_container(
        &self,
        spec: &ContainerSpec,
        lease: &str,
    ) -> Result<Vec<PbMount>, RuntimeError> {
        let name = normalize_reference(&spec.image)?.whole();
        let img = self.stored_image(&name).await?.ok_or_else(|| {
            RuntimeError::Start(format!(
                "{}: image {name} is not present on this instance (it must be pulled first)",
                spec.id
            ))
        })?;
        self.ensure_unpacked(&img).await?;
        let parent = chain_ids(&img.config.diff_ids).pop().unwrap_or_default();
        let mounts = match self
            .snapshots()
            .prepare(self.req_lease(
                PrepareSnapshotRequest {
                    snapshotter: self.opts.snapshotter.clone(),
                    key: spec.id.clone(),
                    parent,
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
        {
            Ok(r) => r.into_inner().mounts,
            Err(s) if s.code() == Code::AlreadyExists => self.snapshot_mounts(&spec.id).await?,
            Err(s) => return Err(grpc_err("prepare snapshot", &spec.id, s)),
        };
        let mut users = UserDb::default();
        if spec.user.as_deref().is_some_and(spec::user_needs_lookup) {
            let dirs = rootfs_dirs(&mounts);
            users.passwd = read_rootfs_file(&dirs, "etc/passwd");
            users.group = read_rootfs_file(&dirs, "etc/group");
        }
        let oci = spec::oci_spec(spec, "rootfs", &users)?;
        let value = serde_json::to_vec(&oci).map_err(|e| RuntimeError::Other(e.to_string()))?;
        let container = Container {
            id: spec.id.clone(),
            labels: spec
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            image: name,
            runtime: Some(ContainerRuntime {
                name: self.opts.runtime.clone(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value,
            }),
            snapshotter: self.opts.snapshotter.clone(),
            snapshot_key: spec.id.clone(),
            ..Default::default()
        };
        match self
            .containers()
            .create(self.req_lease(
                CreateContainerRequest {
                    container: Some(container),
                },
                lease,
            ))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(grpc_err("create container", &spec.id, s)),
        }
        Ok(mounts)
    }

    async fn wait_exit(
        &self,
        id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> Result<Option<(u32, u64)>, RuntimeError> {
        let mut client = self.tasks();
        let fut = client.wait(self.req(WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        }));
        match tokio::time::timeout(timeout, fut).await {
            Err(_) => Ok(None),
            Ok(Ok(r)) => {
                let r = r.into_inner();
                Ok(Some((r.exit_status, ts_ms(r.exited_at.as_ref()))))
            }
            Ok(Err(s)) => Err(grpc_err("wait", id, s)),
        }
    }
}

/// Remember OOM kills in `namespace` for `state()`; resubscribes if the stream breaks.
async fn watch_ooms(channel: Channel, namespace: String, ooms: Arc<Mutex<HashSet<String>>>) {
    loop {
        let req = SubscribeRequest {
            filters: vec![format!("namespace==\"{namespace}\",topic==\"/tasks/oom\"")],
        };
        if let Ok(r) = EventsClient::new(channel.clone()).subscribe(req).await {
            let mut s = r.into_inner();
            while let Ok(Some(env)) = s.message().await {
                if let Some(ev) = env.event.as_ref() {
                    if let Ok(oom) = event_any(ev).to_msg::<containerd_client::events::TaskOom>() {
                        if let Ok(mut set) = ooms.lock() {
                            set.insert(oom.container_id);
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[async_trait]
impl Runtime for Containerd {
    async fn ensure_image(
        &self,
        reference: &str,
        auth: Option<&RegistryAuth>,
        policy: PullPolicy,
    ) -> Result<ImageInfo, RuntimeError> {
        let name = normalize_reference(reference)?.whole();
        let cached = match self.stored_image(&name).await {
            Ok(c) => c,
            Err(e @ RuntimeError::Unavailable(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(image = %name, error = %e, "cached image is unusable; pulling it again");
                None
            }
        };
        let use_cached =
            |img: &StoredImage| image_info(&name, &img.target.digest, &img.config, false);
        let pull_first = match (&cached, policy) {
            (Some(_), PullPolicy::PreferCached) => false,
            (Some(img), PullPolicy::Once) => {
                !(img.labels.contains_key(LABEL_PULLED_AT)
                    || img.labels.contains_key(LABEL_IMPORTED_AT))
            }
            _ => true,
        };
        if !pull_first {
            let img = cached.as_ref().expect("cached is Some when not pulling");
            self.ensure_unpacked(img).await?;
            return Ok(use_cached(img));
        }
        match self.pull(reference, &name, auth).await {
            Ok(i) => Ok(i),
            Err(e) => match (policy, &cached) {
                (PullPolicy::Default, Some(img)) if !matches!(e, RuntimeError::Unavailable(_)) => {
                    tracing::warn!(image = %name, error = %e, "pull failed; using the cached image");
                    self.ensure_unpacked(img).await?;
                    Ok(use_cached(img))
                }
                _ => Err(e),
            },
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let mounts = match self.get_container(&spec.id).await? {
            Some(_) => {
                if self.get_task(&spec.id).await?.is_some() {
                    return Ok(());
                }
                self.snapshot_mounts(&spec.id).await?
            }
            None => {
                let lease = self.lease().await?;
                let r = self.create_container(spec, &lease).await;
                self.drop_lease(&lease).await;
                r?
            }
        };
        self.forget_oom(&spec.id);
        self.create_task(spec, mounts).await
    }

    async fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        match self
            .tasks()
            .start(self.req(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().pid),
            Err(s) if is_not_found(&s) => Err(RuntimeError::NotFound(id.to_string())),
            Err(s) if s.code() == Code::Unavailable => Err(grpc_err("start", id, s)),
            Err(s) => Err(RuntimeError::Start(format!(
                "{id}: {}",
                clean_msg(s.message())
            ))),
        }
    }

    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        match self
            .tasks()
            .kill(self.req(KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal: signal as u32,
                all: false,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if is_not_found(&s) => Ok(()),
            Err(s) if s.message().contains("process already finished") => Ok(()),
            Err(s) => Err(grpc_err(&format!("kill (signal {signal})"), id, s)),
        }
    }

    /// `None`: no such container. A container without a task (never created, or its task
    /// was deleted) is reported as `Stopped { exit_code: -1, exited_at_ms: 0 }`: it is not
    /// running and will not run again without `create`.
    async fn state(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        if self.get_container(id).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(match self.get_task(id).await? {
            Some(p) => self.task_state(id, &p),
            None => ContainerState::Stopped {
                exit_code: -1,
                exited_at_ms: 0,
                oom_killed: self.oom_seen(id),
            },
        }))
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        if let Some(p) = self.get_task(id).await? {
            if p.status != TaskStatus::Stopped as i32 {
                match self
                    .tasks()
                    .kill(self.req(KillRequest {
                        container_id: id.to_string(),
                        exec_id: String::new(),
                        signal: SIGKILL,
                        all: true,
                    }))
                    .await
                {
                    Ok(_) => {}
                    Err(s)
                        if is_not_found(&s) || s.message().contains("process already finished") => {
                    }
                    Err(s) => return Err(grpc_err("kill", id, s)),
                }
                if self
                    .wait_exit(id, "", Duration::from_secs(10))
                    .await?
                    .is_none()
                {
                    return Err(RuntimeError::Other(format!(
                        "remove {id}: the task did not exit within 10 s of SIGKILL"
                    )));
                }
            }
            match self
                .tasks()
                .delete(self.req(DeleteTaskRequest {
                    container_id: id.to_string(),
                }))
                .await
            {
                Ok(_) => {}
                Err(s) if is_not_found(&s) => {}
                Err(s) => return Err(grpc_err("delete task", id, s)),
            }
        }
        match self
            .containers()
            .delete(self.req(DeleteContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(_) => {}
            Err(s) if is_not_found(&s) => {}
            Err(s) => return Err(grpc_err("delete container", id, s)),
        }
        self.remove_snapshot(id).await?;
        self.forget_oom(id);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ExistingContainer>, RuntimeError> {
        let containers = self
            .containers()
            .list(self.req(ListContainersRequest { filters: vec![] }))
            .await
            .map_err(|s| grpc_err("list containers in namespace", &self.namespace, s))?
            .into_inner()
            .containers;
        let mut out = Vec::with_capacity(containers.len());
        for c in containers {
            let state = self
                .get_task(&c.id)
                .await?
                .map(|p| self.task_state(&c.id, &p));
            out.push(ExistingContainer {
                labels: c.labels.into_iter().collect::<BTreeMap<_, _>>(),
                id: c.id,
                state,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Runs `argv` with the container's user, environment and working directory and no
    /// stdio. A command that cannot be started (not in the image) is `Err(Start)`.
    async fn exec(
        &self,
        id: &str,
        argv: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutcome, RuntimeError> {
        let c = self
            .get_container(id)
            .await?
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        let cspec: serde_json::Value = c
            .spec
            .as_ref()
            .and_then(|a| serde_json::from_slice(&a.value).ok())
            .unwrap_or(serde_json::Value::Null);
        let process = spec::exec_process(&cspec, &argv);
        let exec_id = format!("berth-exec-{}", random_suffix());
        let value = serde_json::to_vec(&process).map_err(|e| RuntimeError::Other(e.to_string()))?;
        self.tasks()
            .exec(self.req(ExecProcessRequest {
                container_id: id.to_string(),
                stdin: String::new(),
                stdout: String::new(),
                stderr: String::new(),
                terminal: false,
                spec: Some(prost_types::Any {
                    type_url: PROCESS_TYPE_URL.into(),
                    value,
                }),
                exec_id: exec_id.clone(),
            }))
            .await
            .map_err(|s| match s.code() {
                Code::NotFound => RuntimeError::NotFound(id.to_string()),
                Code::Unavailable => grpc_err("exec", id, s),
                _ => RuntimeError::Other(format!("exec in {id}: {}", clean_msg(s.message()))),
            })?;
        let delete = || async {
            let _ = self
                .tasks()
                .delete_process(self.req(DeleteProcessRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.clone(),
                }))
                .await;
        };
        if let Err(s) = self
            .tasks()
            .start(self.req(StartRequest {
                container_id: id.to_string(),
                exec_id: exec_id.clone(),
            }))
            .await
        {
            delete().await;
            return Err(match s.code() {
                Code::Unavailable => grpc_err("exec", id, s),
                _ => RuntimeError::Start(format!(
                    "exec {argv:?} in {id}: {}",
                    clean_msg(s.message())
                )),
            });
        }
        let outcome = match self.wait_exit(id, &exec_id, timeout).await {
            Ok(Some((code, _))) => Ok(ExecOutcome::Exited(code as i32)),
            Ok(None) => {
                let _ = self
                    .tasks()
                    .kill(self.req(KillRequest {
                        container_id: id.to_string(),
                        exec_id: exec_id.clone(),
                        signal: SIGKILL,
                        all: false,
                    }))
                    .await;
                // Reap it so DeleteProcess succeeds.
                let _ = self.wait_exit(id, &exec_id, Duration::from_secs(5)).await;
                Ok(ExecOutcome::TimedOut)
            }
            Err(e) => Err(e),
        };
        delete().await;
        outcome
    }

    /// Exits of containers' init processes (exec exits are filtered out) and OOM kills in
    /// this namespace. The channel closes if the subscription breaks; call again.
    async fn events(&self) -> Result<mpsc::Receiver<RuntimeEvent>, RuntimeError> {
        let ns = self.namespace.clone();
        let req = SubscribeRequest {
            filters: vec![
                format!("namespace==\"{ns}\",topic==\"/tasks/exit\""),
                format!("namespace==\"{ns}\",topic==\"/tasks/oom\""),
                format!("namespace==\"{ns}\",topic==\"{READY_TOPIC}\""),
            ],
        };
        let (tx, rx) = mpsc::channel(256);
        let (ready_tx, mut ready_rx) = tokio::sync::oneshot::channel::<()>();
        let ooms = self.ooms.clone();
        let channel = self.channel.clone();
        tokio::spawn(async move {
            // containerd sends the response headers with the first event only, so this
            // resolves once something (at worst our own marker) has been published.
            let Ok(resp) = EventsClient::new(channel).subscribe(req).await else {
                return;
            };
            let mut stream = resp.into_inner();
            let _ = ready_tx.send(());
            while let Ok(Some(env)) = stream.message().await {
                let Some(any) = env.event.as_ref().map(event_any) else {
                    continue;
                };
                let ev = if env.topic == "/tasks/exit" {
                    match any.to_msg::<containerd_client::events::TaskExit>() {
                        // An exec's exit carries the exec id; only the init process (whose
                        // id is the container id) ends the container.
                        Ok(e) if e.id == e.container_id => RuntimeEvent::Exited {
                            id: e.container_id,
                            exit_code: e.exit_status as i32,
                            exited_at_ms: ts_ms(e.exited_at.as_ref()),
                        },
                        _ => continue,
                    }
                } else if env.topic == "/tasks/oom" {
                    match any.to_msg::<containerd_client::events::TaskOom>() {
                        Ok(e) => {
                            if let Ok(mut set) = ooms.lock() {
                                set.insert(e.container_id.clone());
                            }
                            RuntimeEvent::Oom { id: e.container_id }
                        }
                        Err(_) => continue,
                    }
                } else {
                    continue;
                };
                if tx.send(ev).await.is_err() {
                    break;
                }
            }
        });
        // Publish a marker until the subscription delivers something: from then on no exit
        // can be missed by the caller.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let marker = containerd_client::events::ContainerUpdate {
                id: "berth-events-ready".into(),
                ..Default::default()
            };
            EventsClient::new(self.channel.clone())
                .publish(self.req(PublishRequest {
                    topic: READY_TOPIC.into(),
                    event: Some(containerd_client::to_any(&marker)),
                }))
                .await
                .map_err(|s| grpc_err("publish to events in namespace", &ns, s))?;
            tokio::select! {
                r = &mut ready_rx => {
                    return match r {
                        Ok(()) => Ok(rx),
                        Err(_) => Err(RuntimeError::Unavailable(format!(
                            "subscribe to containerd events in namespace {ns} failed"
                        ))),
                    };
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(RuntimeError::Unavailable(format!(
                    "containerd event subscription in namespace {ns} did not start within 10 s"
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_uri_escapes_the_path() {
        assert_eq!(
            log_uri(
                Path::new("/usr/bin/berth"),
                Path::new("/var/log/berth/t 1/web.log")
            ),
            "binary:///usr/bin/berth?log-driver=%2Fvar%2Flog%2Fberth%2Ft%201%2Fweb.log"
        );
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn rootfs_dirs_upper_first() {
        let m = PbMount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                "index=off".into(),
                "workdir=/w".into(),
                "upperdir=/u".into(),
                "lowerdir=/l1:/l2".into(),
            ],
        };
        assert_eq!(
            rootfs_dirs(&[m]),
            [
                PathBuf::from("/u"),
                PathBuf::from("/l1"),
                PathBuf::from("/l2")
            ]
        );
    }
}
