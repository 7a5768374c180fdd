//! Container logs: the `binary://` log driver containerd's shim spawns, and the reader behind
//! `berth logs`.
//!
//! containerd 1.6's runc shim (`pkg/process/io.go`, `NewBinaryCmd`) starts the binary of a
//! `binary:///path/to/berth?log-driver=/var/lib/…/task.log` URI with every query pair as two
//! arguments — `log-driver /var/lib/…/task.log` — in *Go map order*, so with more pairs
//! (`&max-size=1m&max-file=3`) the pairs come in any order: [`parse_args`] takes them as
//! key/value pairs wherever they are. Its environment is only `CONTAINER_ID` and
//! `CONTAINER_NAMESPACE`, so the defaults must be right. It gets the container's stdout on
//! fd 3, stderr on fd 4, and the write end of a pipe on fd 5 that it closes once ready (the
//! shim blocks until then). On shutdown the shim closes the pipes and sends SIGTERM, then
//! SIGKILL after a timeout; the driver keeps draining until both streams reach EOF.
//!
//! The file holds the raw lines of both streams; a line is always written whole (lines of
//! the two streams never interleave mid-line; a line longer than [`MAX_LINE`] is cut into
//! several lines). When the next line would take the file past `max_size`, it is rotated:
//! `path.4 → path.5`, …, `path → path.1` (the oldest beyond `max_files` is dropped).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Longest line kept whole; longer ones are split.
pub const MAX_LINE: usize = 64 * 1024;
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;
pub const DEFAULT_MAX_FILES: usize = 5;
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// Rotation limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rotate when the file would grow beyond this many bytes.
    pub max_size: u64,
    /// How many rotated files (`path.1` … `path.N`) to keep.
    pub max_files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_size: DEFAULT_MAX_SIZE,
            max_files: DEFAULT_MAX_FILES,
        }
    }
}

/// `10485760`, `512k`, `10m`, `1g` (as Docker's `max-size`; k = 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()?
        .checked_mul(mult)
        .filter(|n| *n > 0)
}

impl Limits {
    /// Defaults, overridden by `BERTH_LOG_MAX_SIZE` / `BERTH_LOG_MAX_FILES` when set and valid.
    pub fn from_env() -> Limits {
        let mut l = Limits::default();
        if let Some(v) = std::env::var("BERTH_LOG_MAX_SIZE")
            .ok()
            .and_then(|v| parse_size(&v))
        {
            l.max_size = v;
        }
        if let Some(v) = std::env::var("BERTH_LOG_MAX_FILES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
        {
            l.max_files = v;
        }
        l
    }
}

/// A log-driver invocation, as parsed from the arguments the shim passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverArgs {
    pub path: PathBuf,
    pub limits: Limits,
}

/// Recognise a log-driver invocation among `args` (without argv\[0\]): key/value pairs in
/// any order, `log-driver <path>` required, `max-size <size>` and `max-file <n>` (or
/// `max-files`) optional, over [`Limits::from_env`]. `None` when `log-driver` is not among
/// the keys (not a log-driver invocation); `Some(Err)` names what is wrong.
pub fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Option<Result<DriverArgs, String>> {
    let args: Vec<OsString> = args.into_iter().collect();
    let pairs: Vec<(&OsString, Option<&OsString>)> =
        args.chunks(2).map(|c| (&c[0], c.get(1))).collect();
    if !pairs.iter().any(|(k, _)| *k == "log-driver") {
        return None;
    }
    let mut path = None;
    let mut limits = Limits::from_env();
    let mut problems = Vec::new();
    for (k, v) in pairs {
        let key = k.to_string_lossy();
        let Some(v) = v else {
            problems.push(format!("{key} has no value"));
            continue;
        };
        let val = v.to_string_lossy();
        match &*key {
            "log-driver" => path = Some(PathBuf::from(v)),
            "max-size" => match parse_size(&val) {
                Some(n) => limits.max_size = n,
                None => problems.push(format!("max-size {val:?} is not a size like 10m")),
            },
            "max-file" | "max-files" => match val.trim().parse() {
                Ok(n) => limits.max_files = n,
                Err(_) => problems.push(format!("{key} {val:?} is not a number")),
            },
            _ => {} // other drivers' options: ignored
        }
    }
    match path {
        Some(p) if p.is_absolute() && problems.is_empty() => {
            Some(Ok(DriverArgs { path: p, limits }))
        }
        Some(p) if !p.is_absolute() => Some(Err(format!(
            "log-driver path {} is not absolute",
            p.display()
        ))),
        _ => Some(Err(problems.join("; "))),
    }
}

/// The log file with size-based rotation.
struct RotatingFile {
    path: PathBuf,
    limits: Limits,
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    fn open(path: &Path, limits: Limits) -> io::Result<RotatingFile> {
        let mut f = RotatingFile {
            path: path.to_path_buf(),
            limits,
            file: None,
            size: 0,
        };
        f.reopen()?;
        Ok(f)
    }

    fn reopen(&mut self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn rotated(&self, n: usize) -> PathBuf {
        rotated_path(&self.path, n)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.limits.max_files == 0 {
            fs::remove_file(&self.path).or_else(ignore_not_found)?;
        } else {
            fs::remove_file(self.rotated(self.limits.max_files)).or_else(ignore_not_found)?;
            for n in (1..self.limits.max_files).rev() {
                fs::rename(self.rotated(n), self.rotated(n + 1)).or_else(ignore_not_found)?;
            }
            fs::rename(&self.path, self.rotated(1)).or_else(ignore_not_found)?;
        }
        self.reopen()
    }

    /// Write one whole line (with its newline).
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            self.reopen()?;
        }
        if self.size > 0 && self.size + line.len() as u64 > self.limits.max_size {
            self.rotate()?;
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("log file not open"))?;
        // One write(2) on an O_APPEND file: readers never see half a line from us.
        if let Err(e) = file.write_all(line) {
            self.file = None; // reopen next time (e.g. after the disk had filled up)
            return Err(e);
        }
        self.size += line.len() as u64;
        Ok(())
    }
}

fn ignore_not_found(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// `path.n` (`task.log.1`).
pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Copy one stream into the shared file line by line, until EOF. Write errors do not stop
/// the copy (a logger that stops reading would block the container); the first is returned.
fn copy_lines(stream: File, out: &Mutex<RotatingFile>) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(MAX_LINE, stream);
    let mut line = Vec::with_capacity(1024);
    let mut first_err = None;
    loop {
        line.clear();
        // Read up to a newline, but never more than MAX_LINE bytes.
        let n = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line);
        match n {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                first_err.get_or_insert(e);
                break;
            }
        }
        if line.last() != Some(&b'\n') {
            line.push(b'\n'); // a cut long line, or the last line without a newline
        }
        let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = w.write_line(&line) {
            if first_err.is_none() {
                eprintln!("berth log-driver: writing {}: {e}", w.path.display());
                first_err = Some(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// The driver's core: open (create) the log file, signal readiness by closing `ready`, copy
/// both streams into it line by line, return when both reached EOF.
pub fn pump(
    stdout: File,
    stderr: File,
    ready: Option<File>,
    path: &Path,
    limits: Limits,
) -> io::Result<()> {
    let out = Mutex::new(RotatingFile::open(path, limits)?);
    drop(ready);
    let (a, b) = std::thread::scope(|s| {
        let t = s.spawn(|| copy_lines(stderr, &out));
        let a = copy_lines(stdout, &out);
        let b = t.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (a, b)
    });
    a.and(b)
}

/// Take an inherited descriptor, if it is open.
fn inherited(fd: std::os::fd::RawFd) -> Option<File> {
    use std::os::fd::FromRawFd;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).ok()?;
    // SAFETY: the descriptor is open (F_GETFD succeeded) and, by the shim's contract
    // (fds 3, 4, 5 = stdout, stderr, ready pipe), nothing else in this process owns it: this
    // runs once, at the start of the log-driver process, and hands the fd to a File that
    // becomes its only owner.
    Some(unsafe { File::from_raw_fd(fd) })
}

/// The `log-driver` process: streams on fds 3 and 4, readiness pipe on fd 5, limits from the
/// environment (or [`run_with`] for limits from arguments).
pub fn run(path: &Path) -> io::Result<()> {
    run_with(path, Limits::from_env())
}

/// [`run`] with explicit limits.
pub fn run_with(path: &Path, limits: Limits) -> io::Result<()> {
    // The shim sends SIGTERM right after closing its ends of the pipes: keep running so the
    // data still in the pipes is written, and exit at EOF (the shim SIGKILLs us if that
    // takes too long). Registering a handler (that only sets a flag nobody reads) replaces
    // the default action, process-wide, whatever threads exist already.
    let term = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, term)?;
    let missing = |n| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("fd {n} is not open: not started through containerd's binary log URI?"),
        )
    };
    let stdout = inherited(3).ok_or_else(|| missing(3))?;
    let stderr = inherited(4).ok_or_else(|| missing(4))?;
    let ready = inherited(5);
    pump(stdout, stderr, ready, path, limits)
}

/// Print the log at `path` to `out`: rotated files oldest first, then the current one; with
/// `tail`, only the last that many lines; with `follow`, keep printing what is appended (and
/// continue with the new file when it is rotated) until writing to `out` fails.
pub fn read_logs(
    path: &Path,
    follow: bool,
    tail: Option<usize>,
    out: impl Write,
) -> io::Result<()> {
    read_logs_while(path, follow, tail, out, &|| true)
}

/// [`read_logs`] that stops following once `keep_following` returns false (checked between
/// polls), e.g. when the task has stopped.
pub fn read_logs_while(
    path: &Path,
    follow: bool,
    tail: Option<usize>,
    mut out: impl Write,
    keep_following: &dyn Fn() -> bool,
) -> io::Result<()> {
    let rotated: Vec<PathBuf> = (1..)
        .map(|n| rotated_path(path, n))
        .take_while(|p| p.exists())
        .collect();
    // The current file is read through one handle that following then continues with.
    let mut current = match File::open(path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if current.is_none() && rotated.is_empty() && !follow {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no log at {}", path.display()),
        ));
    }
    match tail {
        None => {
            for p in rotated.iter().rev() {
                match File::open(p) {
                    Ok(mut f) => {
                        io::copy(&mut f, &mut out)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {} // rotated away meanwhile
                    Err(e) => return Err(e),
                }
            }
            if let Some(f) = current.as_mut() {
                io::copy(f, &mut out)?;
            }
        }
        Some(n) => {
            // Newest first, until n lines are found; then print them oldest first.
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            let mut need = n;
            let mut cur = Vec::new();
            if let Some(f) = current.as_mut() {
                f.read_to_end(&mut cur)?;
            }
            let mut sources = vec![cur];
            let mut older = rotated.iter();
            while need > 0 {
                let Some(buf) = sources.pop() else {
                    match older.next() {
                        Some(p) => {
                            sources.push(fs::read(p).or_else(|e| {
                                if e.kind() == io::ErrorKind::NotFound {
                                    Ok(Vec::new())
                                } else {
                                    Err(e)
                                }
                            })?);
                            continue;
                        }
                        None => break,
                    }
                };
                let start = tail_start(&buf, need);
                need -= count_lines(&buf[start..]).min(need);
                chunks.push(buf[start..].to_vec());
            }
            for c in chunks.iter().rev() {
                out.write_all(c)?;
            }
        }
    }
    out.flush()?;
    if !follow {
        return Ok(());
    }
    loop {
        if let Some(f) = current.as_mut() {
            io::copy(f, &mut out)?;
            out.flush()?;
        }
        // Has the file been replaced (rotated) or truncated?
        match (fs::metadata(path), current.as_mut()) {
            (Ok(now), Some(f)) => {
                let ours = f.metadata()?;
                if now.ino() != ours.ino() || now.dev() != ours.dev() {
                    // Whatever was written to the old file before the rename is in our
                    // handle still: drain it, then go on with the new file from its start.
                    io::copy(f, &mut out)?;
                    current = File::open(path).ok();
                    continue;
                }
                if f.stream_position()? > now.len() {
                    f.seek(SeekFrom::Start(0))?;
                    continue;
                }
            }
            (Ok(_), None) => {
                current = File::open(path).ok();
                continue;
            }
            (Err(_), _) => {} // between rename and create: wait
        }
        if !keep_following() {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

fn count_lines(buf: &[u8]) -> usize {
    let nl = buf.iter().filter(|b| **b == b'\n').count();
    nl + usize::from(!buf.is_empty() && buf.last() != Some(&b'\n'))
}

/// Offset in `buf` where its last `n` lines start (0 if it has fewer).
fn tail_start(buf: &[u8], n: usize) -> usize {
    if n == 0 {
        return buf.len();
    }
    // Skip the final newline: it ends the last line rather than starting a new one.
    let end = if buf.last() == Some(&b'\n') {
        buf.len() - 1
    } else {
        buf.len()
    };
    let mut seen = 0;
    for i in (0..end).rev() {
        if buf[i] == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn args_in_any_order() {
        let want = DriverArgs {
            path: "/var/log/t.log".into(),
            limits: Limits {
                max_size: 1 << 20,
                max_files: 3,
            },
        };
        let a = parse_args(os(&[
            "max-size",
            "1m",
            "log-driver",
            "/var/log/t.log",
            "max-file",
            "3",
        ]));
        assert_eq!(a, Some(Ok(want.clone())));
        let b = parse_args(os(&[
            "log-driver",
            "/var/log/t.log",
            "max-file",
            "3",
            "max-size",
            "1m",
        ]));
        assert_eq!(b, Some(Ok(want)));
        assert_eq!(parse_args(os(&["agent", "--config", "x"])), None);
        assert!(matches!(
            parse_args(os(&["log-driver", "rel.log"])),
            Some(Err(_))
        ));
        assert!(matches!(
            parse_args(os(&["log-driver", "/a.log", "max-size", "lots"])),
            Some(Err(m)) if m.contains("max-size")
        ));
        let d = parse_args(os(&["log-driver", "/a.log"])).unwrap().unwrap();
        assert_eq!(d.limits, Limits::from_env());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10m"), Some(10 << 20));
        assert_eq!(parse_size("512K"), Some(512 << 10));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1mb"), Some(1 << 20));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("m"), None);
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn tail_offsets() {
        assert_eq!(tail_start(b"a\nb\nc\n", 2), 2);
        assert_eq!(tail_start(b"a\nb\nc", 1), 4);
        assert_eq!(tail_start(b"a\nb\n", 5), 0);
        assert_eq!(tail_start(b"a\n", 0), 2);
        assert_eq!(count_lines(b"a\nb"), 2);
        assert_eq!(count_lines(b""), 0);
    }
}
