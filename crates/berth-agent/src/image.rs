//! Images: references, manifests, configs, chain ids and the registry client.
//!
//! containerd 1.6 has no Transfer service, so berth fetches from registries itself (with
//! `oci-client`) and hands the bytes to containerd's content store; [`crate::containerd`] does
//! the storing and unpacking. Everything here is either pure (parsing, digests, names) or
//! speaks only to a registry or a local archive.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::Reference;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::runtime::{ImageInfo, RegistryAuth, RuntimeError};

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MT_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Manifest media types berth accepts from a registry.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    MT_OCI_INDEX,
    MT_DOCKER_LIST,
    MT_OCI_MANIFEST,
    MT_DOCKER_MANIFEST,
];

/// Annotations naming an image in an OCI layout's `index.json`.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Parse and normalise a reference the way containerd does (`busybox` →
/// `docker.io/library/busybox:latest`). A malformed reference is `ImageNotFound`.
pub fn normalize_reference(reference: &str) -> Result<Reference, RuntimeError> {
    reference.parse::<Reference>().map_err(|e| {
        RuntimeError::ImageNotFound(format!("invalid image reference {reference:?}: {e}"))
    })
}

/// Whether a registry (`host[:port]`) is spoken to over plain HTTP: loopback hosts and those
/// listed as insecure (with or without the port).
pub fn is_plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(registry)
    };
    host == "localhost"
        || host == "::1"
        || host.starts_with("127.")
        || insecure.iter().any(|i| i == registry || i == host)
}

/// A content descriptor as it appears in manifests and indexes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// What a manifest-ish blob turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Index(Vec<Descriptor>),
    Manifest(Manifest),
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// Parse a manifest or index. Returns the kind and the media type to record for it.
pub fn parse_manifest(bytes: &[u8]) -> Result<(Parsed, String), String> {
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid manifest: {e}"))?;
    match (raw.manifests, raw.config) {
        (Some(m), _) => Ok((
            Parsed::Index(m),
            raw.media_type.unwrap_or_else(|| MT_OCI_INDEX.to_string()),
        )),
        (None, Some(config)) => Ok((
            Parsed::Manifest(Manifest {
                config,
                layers: raw.layers,
            }),
            raw.media_type
                .unwrap_or_else(|| MT_OCI_MANIFEST.to_string()),
        )),
        (None, None) => Err("invalid manifest: neither an index nor an image manifest".into()),
    }
}

pub fn is_index_media_type(mt: &str) -> bool {
    mt == MT_OCI_INDEX || mt == MT_DOCKER_LIST
}

/// The host's architecture in OCI terms.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// Pick the manifest for linux on the host's architecture from an index. Entries without a
/// platform are accepted as a last resort (single-platform indexes written by tools).
pub fn select_platform(manifests: &[Descriptor]) -> Option<&Descriptor> {
    let arch = host_arch();
    manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .or_else(|| {
            manifests
                .iter()
                .find(|d| d.platform.is_none() && !is_attestation(d))
        })
}

fn is_attestation(d: &Descriptor) -> bool {
    d.annotations
        .get("vnd.docker.reference.type")
        .is_some_and(|t| t == "attestation-manifest")
}

/// The parts of an image config berth uses.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImageConfig {
    pub diff_ids: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    config: Option<RawContainerConfig>,
    #[serde(default)]
    rootfs: Option<RawRootfs>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawContainerConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

pub fn parse_config(bytes: &[u8]) -> Result<ImageConfig, String> {
    let raw: RawConfig =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid image config: {e}"))?;
    let c = raw.config.unwrap_or_default();
    Ok(ImageConfig {
        diff_ids: raw.rootfs.map(|r| r.diff_ids).unwrap_or_default(),
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.filter(|s| !s.is_empty()),
        user: c.user.filter(|s| !s.is_empty()),
        stop_signal: c.stop_signal.filter(|s| !s.is_empty()),
        labels: c.labels.unwrap_or_default(),
    })
}

pub fn image_info(name: &str, digest: &str, config: &ImageConfig, pulled: bool) -> ImageInfo {
    ImageInfo {
        name: name.to_string(),
        digest: digest.to_string(),
        entrypoint: config.entrypoint.clone(),
        cmd: config.cmd.clone(),
        env: config.env.clone(),
        working_dir: config.working_dir.clone(),
        user: config.user.clone(),
        stop_signal: config.stop_signal.clone(),
        labels: config.labels.clone(),
        pulled,
    }
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Snapshot chain ids of a layer stack (identity.ChainIDs): the first is the first diff id,
/// each next is `sha256(parent + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => sha256_digest(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// containerd GC labels on a manifest: it keeps its config and layers.
pub fn manifest_gc_labels(m: &Manifest) -> HashMap<String, String> {
    let mut l = HashMap::new();
    l.insert(
        "containerd.io/gc.ref.content.config".to_string(),
        m.config.digest.clone(),
    );
    for (i, layer) in m.layers.iter().enumerate() {
        l.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            layer.digest.clone(),
        );
    }
    l
}

/// containerd GC labels on an index: it keeps the manifests present locally.
pub fn index_gc_labels<'a>(
    manifests: impl IntoIterator<Item = &'a str>,
) -> HashMap<String, String> {
    manifests
        .into_iter()
        .enumerate()
        .map(|(i, d)| (format!("containerd.io/gc.ref.content.m.{i}"), d.to_string()))
        .collect()
}

/// Map a registry client failure to what the caller must decide on: the image does not exist
/// (`ImageNotFound`) or the registry could not be used (`Pull`).
pub fn pull_error(reference: &str, err: OciDistributionError) -> RuntimeError {
    use OciDistributionError as E;
    match &err {
        E::ImageManifestNotFoundError(_) => {
            RuntimeError::ImageNotFound(format!("pull {reference}: manifest not found"))
        }
        E::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let msgs: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| {
                    if e.message.is_empty() {
                        format!("{:?}", e.code)
                    } else {
                        e.message.clone()
                    }
                })
                .collect();
            let not_found = codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            });
            if not_found {
                RuntimeError::ImageNotFound(format!("pull {reference}: {}", msgs.join("; ")))
            } else {
                RuntimeError::Pull(format!("pull {reference}: {}", msgs.join("; ")))
            }
        }
        E::ServerError { code: 404, .. } => {
            RuntimeError::ImageNotFound(format!("pull {reference}: not found"))
        }
        E::ServerError { code, message, .. } => RuntimeError::Pull(format!(
            "pull {reference}: registry answered HTTP {code}: {}",
            message.trim()
        )),
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => RuntimeError::Pull(format!(
            "pull {reference}: unauthorized: check the repository credentials ({err})"
        )),
        E::RequestError(e) => RuntimeError::Pull(format!("pull {reference}: {}", request_cause(e))),
        _ => RuntimeError::Pull(format!("pull {reference}: {err}")),
    }
}

/// The innermost useful cause of an HTTP client error ("connection refused", "dns error …").
fn request_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    let mut last = e.to_string();
    loop {
        if let Some(io) = cur.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::TimedOut => "connection timed out".into(),
                _ => io.to_string(),
            };
        }
        match cur.source() {
            Some(s) => {
                last = s.to_string();
                cur = s;
            }
            None => return last,
        }
    }
}

/// A registry client for one reference (plain HTTP or HTTPS decided by the reference's host).
pub struct Registry {
    client: oci_client::Client,
    auth: oci_client::secrets::RegistryAuth,
    pub reference: Reference,
    /// The reference as the user gave it, for messages.
    pub display: String,
}

impl Registry {
    pub fn new(
        reference: Reference,
        display: &str,
        auth: Option<&RegistryAuth>,
        insecure: &[String],
    ) -> Self {
        let registry = reference.resolve_registry().to_string();
        let protocol = if is_plain_http(&registry, insecure) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let client = oci_client::Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(300)),
            ..Default::default()
        });
        let auth = match auth {
            Some(a) => {
                oci_client::secrets::RegistryAuth::Basic(a.username.clone(), a.password.clone())
            }
            None => oci_client::secrets::RegistryAuth::Anonymous,
        };
        Registry {
            client,
            auth,
            reference,
            display: display.to_string(),
        }
    }

    /// Fetch the manifest (or index) `reference` points at, or the one with `digest`.
    /// Returns the exact bytes and their digest.
    pub async fn manifest(&self, digest: Option<&str>) -> Result<(Vec<u8>, String), RuntimeError> {
        let r = match digest {
            Some(d) => self.reference.clone_with_digest(d.to_string()),
            None => self.reference.clone(),
        };
        self.client
            .pull_manifest_raw(&r, &self.auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| pull_error(&self.display, e))
    }

    /// Stream a blob.
    pub async fn blob(
        &self,
        digest: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, String>>, RuntimeError> {
        let s = self
            .client
            .pull_blob_stream(&self.reference, digest)
            .await
            .map_err(|e| pull_error(&self.display, e))?;
        Ok(s.stream.map(|r| r.map_err(|e| e.to_string())).boxed())
    }
}

/// The small files of an image archive, read in a first pass.
#[derive(Debug, Default)]
pub struct ArchiveMeta {
    /// OCI layout `index.json`.
    pub index: Option<Vec<u8>>,
    /// `docker save`'s `manifest.json`.
    pub docker_manifest: Option<Vec<u8>>,
}

/// Entries of `docker save`'s `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerSaveEntry {
    pub config: String,
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    pub layers: Vec<String>,
}

fn normalize_entry_path(p: &Path) -> String {
    let s = p.to_string_lossy();
    s.trim_start_matches("./").to_string()
}

pub fn read_archive_meta(path: &Path) -> Result<ArchiveMeta, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut ar = tar::Archive::new(f);
    let mut meta = ArchiveMeta::default();
    for entry in ar
        .entries()
        .map_err(|e| format!("read {}: {e}", path.display()))?
    {
        let mut entry = entry.map_err(|e| format!("read {}: {e}", path.display()))?;
        let name = normalize_entry_path(&entry.path().map_err(|e| e.to_string())?);
        let slot = match name.as_str() {
            "index.json" => &mut meta.index,
            "manifest.json" => &mut meta.docker_manifest,
            _ => continue,
        };
        let mut buf = Vec::new();
        entry
            .read_to_end(&mut buf)
            .map_err(|e| format!("read {name} in {}: {e}", path.display()))?;
        *slot = Some(buf);
    }
    Ok(meta)
}

/// One regular file of an archive, read by [`stream_archive_files`].
pub struct ArchiveFile {
    pub path: String,
    pub data: Vec<u8>,
}

/// Read the regular files of a tar whose path `want` accepts, one at a time on a blocking
/// thread, handing each over a channel (so at most two files are in memory at once).
pub fn stream_archive_files(
    path: PathBuf,
    want: impl Fn(&str) -> bool + Send + 'static,
) -> tokio::sync::mpsc::Receiver<Result<ArchiveFile, String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::task::spawn_blocking(move || {
        let run = || -> Result<(), String> {
            let f =
                std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
            let mut ar = tar::Archive::new(f);
            for entry in ar.entries().map_err(|e| e.to_string())? {
                let mut entry = entry.map_err(|e| format!("read {}: {e}", path.display()))?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let name = normalize_entry_path(&entry.path().map_err(|e| e.to_string())?);
                if !want(&name) {
                    continue;
                }
                let mut data = Vec::with_capacity(entry.size() as usize);
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| format!("read {name} in {}: {e}", path.display()))?;
                if tx
                    .blocking_send(Ok(ArchiveFile { path: name, data }))
                    .is_err()
                {
                    return Ok(());
                }
            }
            Ok(())
        };
        if let Err(e) = run() {
            let _ = tx.blocking_send(Err(e));
        }
    });
    rx
}

/// The name an OCI layout gives an index entry.
pub fn layout_image_name(d: &Descriptor) -> Option<String> {
    if let Some(n) = d.annotations.get(ANNOTATION_CONTAINERD_NAME) {
        return Some(n.clone());
    }
    let n = d.annotations.get(ANNOTATION_REF_NAME)?;
    // A bare tag ("latest") names nothing on its own.
    if n.contains('/') || n.contains(':') || n.contains('@') {
        Some(n.clone())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_like_containerd() {
        let r = normalize_reference("busybox").unwrap();
        assert_eq!(r.whole(), "docker.io/library/busybox:latest");
        assert_eq!(
            normalize_reference("127.0.0.1:5000/web:1").unwrap().whole(),
            "127.0.0.1:5000/web:1"
        );
        assert!(matches!(
            normalize_reference("bad ref!"),
            Err(RuntimeError::ImageNotFound(_))
        ));
    }

    #[test]
    fn plain_http_for_loopback_and_insecure() {
        assert!(is_plain_http("127.0.0.1:5000", &[]));
        assert!(is_plain_http("localhost:5000", &[]));
        assert!(is_plain_http("[::1]:5000", &[]));
        assert!(!is_plain_http("registry.example.com", &[]));
        assert!(is_plain_http("reg.lan:5000", &["reg.lan".into()]));
        assert!(is_plain_http("reg.lan:5000", &["reg.lan:5000".into()]));
        assert!(!is_plain_http("index.docker.io", &["reg.lan".into()]));
    }

    #[test]
    fn chain_ids_follow_identity_chain_id() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], sha256_digest(b"sha256:aaaa sha256:bbbb"));
    }

    #[test]
    fn picks_host_platform_from_index() {
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MT_OCI_INDEX}","manifests":[
              {{"mediaType":"{MT_OCI_MANIFEST}","digest":"sha256:1","size":1,"platform":{{"os":"linux","architecture":"s390x"}}}},
              {{"mediaType":"{MT_OCI_MANIFEST}","digest":"sha256:2","size":1,"platform":{{"os":"linux","architecture":"{}"}}}}]}}"#,
            host_arch()
        );
        let (p, mt) = parse_manifest(idx.as_bytes()).unwrap();
        assert_eq!(mt, MT_OCI_INDEX);
        let Parsed::Index(m) = p else { panic!("index") };
        assert_eq!(select_platform(&m).unwrap().digest, "sha256:2");
    }

    #[test]
    fn config_fields() {
        let c = parse_config(br#"{"config":{"Entrypoint":["/e"],"Cmd":["c"],"Env":["A=1"],"WorkingDir":"/w","User":"www","StopSignal":"SIGQUIT","Labels":{"k":"v"}},"rootfs":{"type":"layers","diff_ids":["sha256:x"]}}"#).unwrap();
        let i = image_info("n", "sha256:d", &c, true);
        assert_eq!(i.entrypoint, ["/e"]);
        assert_eq!(i.cmd, ["c"]);
        assert_eq!(i.working_dir.as_deref(), Some("/w"));
        assert_eq!(i.user.as_deref(), Some("www"));
        assert_eq!(i.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(i.labels["k"], "v");
        assert_eq!(c.diff_ids, ["sha256:x"]);
    }
}
