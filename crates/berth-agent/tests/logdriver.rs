//! The log driver's pump (in-process, over pipes) and the `run` entry point as a child
//! process with containerd's fd layout, plus `read_logs` ordering, tail and follow across
//! rotations.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use berth_agent::logdriver::{self, rotated_path, Limits};

/// Close-on-exec: a child spawned by a concurrent test must not inherit (and so keep open)
/// another test's write ends.
fn pipe() -> (File, File) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    (File::from(r), File::from(w))
}

/// Start `pump` on fresh pipes; returns the writers and the pump's thread, after the
/// driver has signalled readiness (closed its end of the ready pipe).
fn start_pump(
    path: &Path,
    limits: Limits,
) -> (File, File, std::thread::JoinHandle<io::Result<()>>) {
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    let (mut ready_r, ready_w) = pipe();
    let p = path.to_path_buf();
    let t = std::thread::spawn(move || logdriver::pump(out_r, err_r, Some(ready_w), &p, limits));
    let mut b = [0u8; 1];
    assert_eq!(
        ready_r.read(&mut b).expect("ready pipe"),
        0,
        "readiness is EOF"
    );
    assert!(path.exists(), "log file created before readiness");
    (out_w, err_w, t)
}

fn all_logs(path: &Path, tail: Option<usize>) -> String {
    let mut out = Vec::new();
    logdriver::read_logs(path, false, tail, &mut out).expect("read_logs");
    String::from_utf8(out).expect("utf8")
}

#[test]
fn both_streams_whole_lines_no_interleaving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/task.log");
    let (mut out_w, mut err_w, t) = start_pump(&path, Limits::default());
    let n = 2000;
    let a = std::thread::spawn(move || {
        for i in 0..n {
            // Written in pieces, so a line reaches the driver in several reads.
            let line = format!("stdout line {i:05} {}\n", "o".repeat(100 + i % 50));
            let (x, y) = line.as_bytes().split_at(line.len() / 2);
            out_w.write_all(x).unwrap();
            out_w.write_all(y).unwrap();
        }
    });
    let b = std::thread::spawn(move || {
        for i in 0..n {
            writeln!(err_w, "stderr line {i:05} {}", "e".repeat(200 + i % 70)).unwrap();
        }
        // A last line without a newline still ends up as a line.
        write!(err_w, "no newline at the end").unwrap();
    });
    a.join().unwrap();
    b.join().unwrap();
    t.join().unwrap().expect("pump");
    let text = std::fs::read_to_string(&path).unwrap();
    let (mut o, mut e) = (0, 0);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("stdout line ") {
            let (i, body) = rest.split_at(5);
            assert_eq!(i.parse::<usize>().unwrap(), o, "stdout order");
            assert_eq!(body, format!(" {}", "o".repeat(100 + o % 50)));
            o += 1;
        } else if let Some(rest) = line.strip_prefix("stderr line ") {
            let (i, body) = rest.split_at(5);
            assert_eq!(i.parse::<usize>().unwrap(), e, "stderr order");
            assert_eq!(body, format!(" {}", "e".repeat(200 + e % 70)));
            e += 1;
        } else {
            assert_eq!(line, "no newline at the end", "torn line");
        }
    }
    assert_eq!((o, e), (n, n));
    assert!(text.ends_with('\n'));
}

#[test]
fn very_long_lines_are_cut_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("task.log");
    let (mut out_w, err_w, t) = start_pump(&path, Limits::default());
    drop(err_w);
    let long = "x".repeat(logdriver::MAX_LINE * 2 + 10);
    writeln!(out_w, "{long}").unwrap();
    drop(out_w);
    t.join().unwrap().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.replace('\n', ""), long);
    assert!(text.lines().all(|l| l.len() <= logdriver::MAX_LINE));
}

#[test]
fn rotation_keeps_max_files_and_read_logs_orders_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("task.log");
    let limits = Limits {
        max_size: 100,
        max_files: 3,
    };
    let (mut out_w, err_w, t) = start_pump(&path, limits);
    drop(err_w);
    // Each line is 10 bytes: 10 lines per file.
    for i in 0..100 {
        writeln!(out_w, "line {i:04}").unwrap();
    }
    drop(out_w);
    t.join().unwrap().unwrap();

    for n in 1..=3 {
        let p = rotated_path(&path, n);
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(len <= 100 && len > 0, "{} is {len} bytes", p.display());
    }
    assert!(
        !rotated_path(&path, 4).exists(),
        "only 3 rotated files kept"
    );
    assert!(std::fs::metadata(&path).unwrap().len() <= 100);

    // Everything kept, oldest first, contiguous up to the last line.
    let all = all_logs(&path, None);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 40, "{all}");
    for (k, l) in lines.iter().enumerate() {
        assert_eq!(*l, format!("line {:04}", 60 + k));
    }
    // Tail across files.
    assert_eq!(
        all_logs(&path, Some(15)),
        (85..100)
            .map(|i| format!("line {i:04}\n"))
            .collect::<String>()
    );
    assert_eq!(all_logs(&path, Some(0)), "");
    assert_eq!(all_logs(&path, Some(1000)), all);
    // No log at all.
    let mut sink = Vec::new();
    let err =
        logdriver::read_logs(&dir.path().join("none.log"), false, None, &mut sink).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}

/// A writer that hands what it gets to a channel and fails once it has seen `END\n`, as a
/// closed terminal or pipe would end `berth logs -f`.
struct Collect(mpsc::Sender<Vec<u8>>, Vec<u8>);

impl Write for Collect {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.1.extend_from_slice(buf);
        let _ = self.0.send(buf.to_vec());
        if self.1.ends_with(b"END\n") {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "done"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Wait until `got` (fed from `rx`) ends with `want`, or fail after a deadline.
fn wait_for(rx: &mpsc::Receiver<Vec<u8>>, got: &mut Vec<u8>, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.ends_with(want.as_bytes()) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(b) => got.extend_from_slice(&b),
            Err(_) => panic!(
                "timed out waiting for {want:?}; got {:?}",
                String::from_utf8_lossy(got)
            ),
        }
    }
}

#[test]
fn follow_continues_across_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("task.log");
    let limits = Limits {
        max_size: 30,
        max_files: 2,
    };
    let (mut out_w, err_w, t) = start_pump(&path, limits);
    drop(err_w);
    writeln!(out_w, "before 0").unwrap();
    writeln!(out_w, "before 1").unwrap();
    // Wait until the driver wrote them, so the reader's tail sees them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "driver did not write");
        std::thread::sleep(Duration::from_millis(10));
    }

    let (tx, rx) = mpsc::channel();
    let p = path.clone();
    let reader = std::thread::spawn(move || {
        logdriver::read_logs(&p, true, Some(1), Collect(tx, Vec::new()))
    });
    let mut got = Vec::new();
    wait_for(&rx, &mut got, "before 1\n");
    let mut expected = String::from("before 1\n");
    // 9-byte lines, 3 per file: a rotation every third line. Each line is awaited before
    // the next is written, so the reader sees every file.
    for i in 0..20 {
        let line = format!("after {i:02}\n");
        out_w.write_all(line.as_bytes()).unwrap();
        expected.push_str(&line);
        wait_for(&rx, &mut got, &line);
    }
    out_w.write_all(b"END\n").unwrap();
    expected.push_str("END\n");
    wait_for(&rx, &mut got, "END\n");
    let res = reader.join().unwrap();
    assert_eq!(res.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    assert_eq!(
        String::from_utf8(got).unwrap(),
        expected,
        "nothing lost or repeated"
    );
    assert!(rotated_path(&path, 2).exists() && !rotated_path(&path, 3).exists());
    drop(out_w);
    t.join().unwrap().unwrap();
}

#[test]
fn read_logs_while_stops_following() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("task.log");
    std::fs::write(&path, "one\ntwo\n").unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    logdriver::read_logs_while(&path, true, None, &mut out, &|| {
        start.elapsed() < Duration::from_millis(300)
    })
    .unwrap();
    assert_eq!(out, b"one\ntwo\n");
}

/// The helper run as a child process by `run_in_a_child_with_containerds_fd_layout`: a
/// no-op unless the environment says otherwise.
#[test]
fn child_log_driver_helper() {
    let Some(path) = std::env::var_os("BERTH_TEST_LOG_DRIVER_PATH") else {
        return;
    };
    let args = logdriver::parse_args(["log-driver".into(), path, "max-size".into(), "64".into()])
        .expect("log-driver args")
        .expect("valid");
    logdriver::run_with(&args.path, args.limits).expect("log driver");
}

#[test]
fn run_in_a_child_with_containerds_fd_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("task.log");
    let (out_r, mut out_w) = pipe();
    let (err_r, mut err_w) = pipe();
    let (mut ready_r, ready_w) = pipe();
    // The shell moves what std can pass (fds 0, 1, 2) to where the shim puts them
    // (3 = stdout stream, 4 = stderr stream, 5 = ready pipe), then runs this test binary
    // filtered to the helper above.
    let me = std::env::current_exe().unwrap();
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"exec 3<&0 4<&2 5>&1 0</dev/null 1>/dev/null 2>/dev/null; exec "$0" "$@""#)
        .arg(&me)
        .args(["--exact", "child_log_driver_helper", "--test-threads=1"])
        .env_clear()
        .env("BERTH_TEST_LOG_DRIVER_PATH", &path)
        .stdin(Stdio::from(out_r))
        .stderr(Stdio::from(err_r))
        .stdout(Stdio::from(ready_w))
        .spawn()
        .expect("spawn child");
    let mut b = [0u8; 1];
    assert_eq!(
        ready_r.read(&mut b).unwrap(),
        0,
        "child signalled readiness"
    );
    writeln!(out_w, "from stdout").unwrap();
    writeln!(err_w, "from stderr").unwrap();
    // SIGTERM (as the shim sends on close) does not cut the driver short...
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    for i in 0..10 {
        writeln!(out_w, "more {i}").unwrap();
    }
    // ...it exits when both streams are closed.
    drop(out_w);
    drop(err_w);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "driver did not exit at EOF");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let all = all_logs(&path, None);
    let mut lines: Vec<&str> = all.lines().collect();
    lines.sort();
    let mut want = vec!["from stderr", "from stdout"];
    let more: Vec<String> = (0..10).map(|i| format!("more {i}")).collect();
    want.extend(more.iter().map(String::as_str));
    want.sort();
    assert_eq!(lines, want);
    // max-size 64 from the arguments: rotated.
    assert!(rotated_path(&path, 1).exists());
}
