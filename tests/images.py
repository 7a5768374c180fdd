"""A small OCI image for berth's end-to-end tests, built from the distribution's
busybox-static with the standard library only (no docker, no buildah).

The image holds one layer: /bin/busybox plus applet symlinks, /etc/passwd and
/etc/group (root, app = uid 1000, nobody), and /tmp. Its default command writes
a page naming its task and container into /tmp/www/index.html and serves it
with busybox httpd on ${PORT:-80}:

    task=<BERTH_TASK_ID> container=<BERTH_CONTAINER_NAME> cluster=<BERTH_CLUSTER> arn=<BERTH_TASK_ARN>

(the agent injects BERTH_TASK_ARN, BERTH_TASK_ID, BERTH_CONTAINER_NAME and
BERTH_CLUSTER into every container).

Everything is deterministic (mtime 0, sorted entries, fixed gzip header), so
the same inputs give the same digests on every machine.

    build_oci_archive(path, name="localhost/berth-test:latest", cmd=None)  # OCI image-layout tar
    push_to_registry("127.0.0.1:5000", "berth-test", "1")               # registry HTTP API v2
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import tarfile
import urllib.parse
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

BUSYBOX = Path("/usr/bin/busybox")

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

ANN_CONTAINERD_NAME = "io.containerd.image.name"
ANN_REF_NAME = "org.opencontainers.image.ref.name"

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

APPLETS = (
    "sh", "ash", "httpd", "sleep", "echo", "cat", "true", "false", "env", "id", "wget", "nc",
    "head", "tail", "tr", "dd", "ls", "kill", "mkdir", "rm", "touch", "test", "[", "printf",
    "sed", "grep", "wc", "seq", "hostname", "ps", "date", "timeout", "yes", "cut", "ip",
)

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"


def serve_script(port: Optional[int] = None) -> str:
    """The shell one-liner the image runs by default: write the page, serve it with
    busybox httpd. With `port`, listen there instead of ${PORT:-80}."""
    p = str(port) if port is not None else "${PORT:-80}"
    # httpd runs as a child of sh, which (as PID 1 of the container) would ignore SIGTERM
    # without a trap: with it, a stop takes effect at once and exits 143, as a real app would.
    return (
        "mkdir -p /tmp/www; "
        'echo "task=${BERTH_TASK_ID} container=${BERTH_CONTAINER_NAME} '
        'cluster=${BERTH_CLUSTER} arn=${BERTH_TASK_ARN}" > /tmp/www/index.html; '
        "trap 'exit 143' TERM INT; "
        f"httpd -f -p {p} -h /tmp/www & wait"
    )


def serve_command(port: Optional[int] = None) -> list[str]:
    """A container definition `command` that serves the page on `port`."""
    return ["sh", "-c", serve_script(port)]


DEFAULT_CMD = ("/bin/sh", "-c", serve_script())


def page_names(body: str, task_id: str, container: str) -> bool:
    """Whether a page served by the image names this task and container."""
    return f"task={task_id} " in body and f"container={container} " in body


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Blob(NamedTuple):
    media_type: str
    digest: str
    data: bytes

    @property
    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


class Image(NamedTuple):
    config: Blob
    layers: tuple[Blob, ...]
    manifest: bytes
    manifest_digest: str

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers)


# ---------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------


def _tar_add(tf: tarfile.TarFile, name: str, *, data: Optional[bytes] = None, mode: int = 0o644,
             kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    ti = tarfile.TarInfo(name)
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mode = mode
    ti.type = kind
    if kind == tarfile.SYMTYPE:
        ti.linkname = link
        tf.addfile(ti)
    elif kind == tarfile.DIRTYPE:
        tf.addfile(ti)
    else:
        assert data is not None
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))


def _gzip(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return out.getvalue()


@lru_cache(maxsize=None)
def _layer() -> tuple[bytes, str]:
    """The root filesystem layer: (gzipped tar, diff_id of the uncompressed tar)."""
    if not BUSYBOX.is_file():
        raise FileNotFoundError(f"{BUSYBOX} not found: install busybox-static (scripts/install-deps.sh)")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        dirs = ["bin", "etc", "home", "home/app", "root", "tmp", "usr", "usr/bin", "var", "proc", "sys", "dev"]
        for d in sorted(dirs):
            _tar_add(tf, d, kind=tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        _tar_add(tf, "bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755)
        for a in sorted(APPLETS):
            _tar_add(tf, f"bin/{a}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
        _tar_add(tf, "etc/group", data=GROUP.encode())
        _tar_add(tf, "etc/passwd", data=PASSWD.encode())
    tar_bytes = raw.getvalue()
    return _gzip(tar_bytes), sha256(tar_bytes)


@lru_cache(maxsize=None)
def _build(cmd: tuple[str, ...]) -> Image:
    layer_gz, diff_id = _layer()
    layer = Blob(MT_LAYER_GZIP, sha256(layer_gz), layer_gz)
    config = {
        "created": "1970-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [PATH_ENV], "Cmd": list(cmd), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "berth tests/images.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_blob = Blob(MT_CONFIG, sha256(config_bytes), config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": config_blob.descriptor,
        "layers": [layer.descriptor],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return Image(config_blob, (layer,), manifest_bytes, sha256(manifest_bytes))


def build_image(cmd: Optional[Sequence[str]] = None) -> Image:
    """The test image (in memory). `cmd` replaces the default command."""
    return _build(tuple(cmd) if cmd is not None else DEFAULT_CMD)


def _split_name(name: str) -> str:
    """The tag of an image reference (`latest` when it has none)."""
    last = name.rsplit("/", 1)[-1]
    if "@" in last:
        return ""
    return last.split(":", 1)[1] if ":" in last else "latest"


def build_oci_archive(path: str | Path, name: str = "localhost/berth-test:latest",
                      cmd: Optional[Sequence[str]] = None) -> Image:
    """Write the image as an OCI image-layout tar (what `ctr image export`/`docker save`
    produce and `ctr image import`/`berth image import` read). index.json names it with
    `io.containerd.image.name` = `name` (the full reference) and
    `org.opencontainers.image.ref.name` = its tag, as docker does. Returns the Image."""
    img = build_image(cmd)
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": img.manifest_digest,
            "size": len(img.manifest),
            "annotations": {ANN_CONTAINERD_NAME: name, ANN_REF_NAME: _split_name(name)},
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    }
    files: dict[str, bytes] = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True, separators=(",", ":")).encode(),
        f"blobs/sha256/{img.manifest_digest.split(':', 1)[1]}": img.manifest,
    }
    for b in img.blobs:
        files[f"blobs/sha256/{b.digest.split(':', 1)[1]}"] = b.data
    path = Path(path)
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("blobs", "blobs/sha256"):
            _tar_add(tf, d, kind=tarfile.DIRTYPE, mode=0o755)
        for fname in sorted(files):
            _tar_add(tf, fname, data=files[fname])
    return img


# ---------------------------------------------------------------------------
# Registry HTTP API v2
# ---------------------------------------------------------------------------


class RegistryError(AssertionError):
    pass


class RegistryClient:
    """Just enough of the registry HTTP API v2 for pushing and reading back the test image."""

    def __init__(self, addr: str, auth: Optional[tuple[str, str]] = None, timeout: float = 30):
        self.addr = addr
        self.timeout = timeout
        self.headers: dict[str, str] = {}
        if auth:
            tok = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            self.headers["Authorization"] = f"Basic {tok}"

    def request(self, method: str, url: str, body: bytes = b"",
                headers: Optional[dict[str, str]] = None) -> tuple[int, dict[str, str], bytes]:
        u = urllib.parse.urlsplit(url)
        host = u.netloc or self.addr
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        conn = http.client.HTTPConnection(host, timeout=self.timeout)
        try:
            hdrs = {**self.headers, **(headers or {})}
            if method in ("POST", "PUT"):
                hdrs.setdefault("Content-Length", str(len(body)))
            conn.request(method, target, body=body or None, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def _check(self, what: str, got: tuple[int, dict, bytes], *ok: int) -> tuple[int, dict, bytes]:
        if got[0] not in ok:
            raise RegistryError(f"registry {self.addr}: {what} answered HTTP {got[0]}: {got[2][:500]!r}")
        return got

    def has_blob(self, repo: str, digest: str) -> bool:
        return self.request("HEAD", f"/v2/{repo}/blobs/{digest}")[0] == 200

    def push_blob(self, repo: str, blob: Blob) -> None:
        """Monolithic upload: POST an upload session, PUT the whole blob with its digest."""
        if self.has_blob(repo, blob.digest):
            return
        _, h, _ = self._check(f"POST /v2/{repo}/blobs/uploads/",
                              self.request("POST", f"/v2/{repo}/blobs/uploads/"), 202)
        loc = h.get("location")
        if not loc:
            raise RegistryError(f"registry {self.addr}: upload session without a Location header")
        sep = "&" if "?" in loc else "?"
        put = f"{loc}{sep}digest={urllib.parse.quote(blob.digest)}"
        self._check(f"PUT blob {blob.digest}",
                    self.request("PUT", put, blob.data, {"Content-Type": "application/octet-stream"}), 201)

    def push_manifest(self, repo: str, ref: str, manifest: bytes, media_type: str = MT_MANIFEST) -> str:
        _, h, _ = self._check(f"PUT /v2/{repo}/manifests/{ref}",
                              self.request("PUT", f"/v2/{repo}/manifests/{ref}", manifest,
                                           {"Content-Type": media_type}), 201)
        return h.get("docker-content-digest", "")

    def get_manifest(self, repo: str, ref: str) -> tuple[str, bytes, str]:
        """(media type, raw manifest, Docker-Content-Digest)."""
        _, h, body = self._check(f"GET /v2/{repo}/manifests/{ref}",
                                 self.request("GET", f"/v2/{repo}/manifests/{ref}",
                                              headers={"Accept": f"{MT_MANIFEST}, {MT_INDEX}"}), 200)
        return h.get("content-type", ""), body, h.get("docker-content-digest", "")

    def get_blob(self, repo: str, digest: str) -> bytes:
        # The registry may redirect blob reads to its storage; the filesystem driver does not.
        return self._check(f"GET blob {digest}", self.request("GET", f"/v2/{repo}/blobs/{digest}"), 200)[2]

    def push_image(self, repo: str, tag: str, img: Image) -> str:
        for b in img.blobs:
            self.push_blob(repo, b)
        digest = self.push_manifest(repo, tag, img.manifest)
        if digest and digest != img.manifest_digest:
            raise RegistryError(f"registry stored the manifest as {digest}, expected {img.manifest_digest}")
        return img.manifest_digest


def push_to_registry(registry_addr: str, repo: str, tag: str, cmd: Optional[Sequence[str]] = None,
                     auth: Optional[tuple[str, str]] = None) -> Image:
    """Push the test image to `registry_addr` (host:port, plain HTTP) as `repo:tag`."""
    img = build_image(cmd)
    RegistryClient(registry_addr, auth=auth).push_image(repo, tag, img)
    return img
