//! Serving `berth logs` through the session: reads of a container's log files by cursor
//! (inode + offset of the live file), so a follower polls and gets each byte once, across
//! rotations (the file it was reading is found again as `<log>.1`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use berth_model::agent::{ContainerLogs, LogCursor, LogsRequest, LogsResponse};

use crate::logdriver::rotated_path;

/// At most this much output per container per answer; the cursor continues from there.
pub const MAX_CHUNK: u64 = 512 * 1024;

fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

fn read_range(path: &Path, from: u64, to: u64) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(to.saturating_sub(from)).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The last `n` lines of `data`.
fn last_lines(data: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &data[data.len()..];
    }
    let mut seen = 0;
    let end = if data.ends_with(b"\n") {
        data.len() - 1
    } else {
        data.len()
    };
    for i in (0..end).rev() {
        if data[i] == b'\n' {
            seen += 1;
            if seen == n {
                return &data[i + 1..];
            }
        }
    }
    data
}

/// Reads one container's log from `cursor` (or from the start / the last `tail` lines).
pub fn read_from(
    path: &Path,
    cursor: Option<LogCursor>,
    tail: Option<usize>,
) -> io::Result<(Vec<u8>, LogCursor)> {
    let Some(live_ino) = inode(path) else {
        return Ok((Vec::new(), cursor.unwrap_or_default()));
    };
    let live_len = std::fs::metadata(path)?.len();
    match cursor {
        Some(c) if c.inode == live_ino => {
            let to = live_len.min(c.offset + MAX_CHUNK);
            let data = read_range(path, c.offset.min(live_len), to)?;
            Ok((
                data,
                LogCursor {
                    inode: live_ino,
                    offset: to.max(c.offset.min(live_len)),
                },
            ))
        }
        Some(c) => {
            // Rotated since: finish the file we were in (now `.1`, or further back), then
            // go on with the live file from its start.
            let mut n = 1;
            loop {
                let p = rotated_path(path, n);
                match inode(&p) {
                    Some(i) if i == c.inode => {
                        let len = std::fs::metadata(&p)?.len();
                        let to = len.min(c.offset + MAX_CHUNK);
                        let data = read_range(&p, c.offset.min(len), to)?;
                        if to < len {
                            return Ok((
                                data,
                                LogCursor {
                                    inode: c.inode,
                                    offset: to,
                                },
                            ));
                        }
                        return Ok((
                            data,
                            LogCursor {
                                inode: live_ino,
                                offset: 0,
                            },
                        ));
                    }
                    Some(_) => n += 1,
                    None => break,
                }
            }
            // Rotated away entirely: carry on with the live file.
            let to = live_len.min(MAX_CHUNK);
            Ok((
                read_range(path, 0, to)?,
                LogCursor {
                    inode: live_ino,
                    offset: to,
                },
            ))
        }
        None => {
            // Everything so far (rotated files oldest first), or its last `tail` lines.
            let mut all = Vec::new();
            let rotated: Vec<PathBuf> = (1..)
                .map(|n| rotated_path(path, n))
                .take_while(|p| p.exists())
                .collect();
            for p in rotated.iter().rev() {
                all.extend(std::fs::read(p)?);
            }
            all.extend(read_range(path, 0, live_len)?);
            let data = match tail {
                Some(n) => last_lines(&all, n).to_vec(),
                None => all,
            };
            // Keep one answer bounded: the newest output wins.
            let data = if data.len() as u64 > 4 * MAX_CHUNK {
                data[data.len() - 4 * MAX_CHUNK as usize..].to_vec()
            } else {
                data
            };
            Ok((
                data,
                LogCursor {
                    inode: live_ino,
                    offset: live_len,
                },
            ))
        }
    }
}

/// Answers a logs request from the agent's data dir.
pub fn serve(data_dir: &Path, req: &LogsRequest) -> LogsResponse {
    let dir = data_dir.join("logs").join(&req.task_id);
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_suffix(".log")
                    .map(str::to_string)
            })
            .collect(),
        Err(_) => {
            return LogsResponse {
                request_id: req.request_id.clone(),
                logs: vec![],
                error: Some(format!(
                    "task {} has no output on this container instance (yet)",
                    req.task_id
                )),
            }
        }
    };
    names.sort();
    if let Some(c) = &req.container {
        if !names.contains(c) {
            return LogsResponse {
                request_id: req.request_id.clone(),
                logs: vec![],
                error: Some(format!(
                    "task {} has no container named {c:?} (it has: {})",
                    req.task_id,
                    names.join(", ")
                )),
            };
        }
        names.retain(|n| n == c);
    }
    let mut logs = Vec::new();
    for name in names {
        let path = dir.join(format!("{name}.log"));
        match read_from(&path, req.cursors.get(&name).copied(), req.tail) {
            Ok((data, cursor)) => logs.push(ContainerLogs {
                container: name,
                data: String::from_utf8_lossy(&data).into_owned(),
                cursor,
            }),
            Err(e) => {
                return LogsResponse {
                    request_id: req.request_id.clone(),
                    logs: vec![],
                    error: Some(format!("read {}: {e}", path.display())),
                }
            }
        }
    }
    LogsResponse {
        request_id: req.request_id.clone(),
        logs,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn cursor_reads_each_byte_once_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.log");
        std::fs::write(&path, b"one\ntwo\n").unwrap();
        let (d, c) = read_from(&path, None, None).unwrap();
        assert_eq!(d, b"one\ntwo\n");
        let (d, c2) = read_from(&path, Some(c), None).unwrap();
        assert!(d.is_empty());
        assert_eq!(c2, c);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"three\n")
            .unwrap();
        // Rotate: the live file becomes .1, a new live file starts.
        std::fs::rename(&path, rotated_path(&path, 1)).unwrap();
        std::fs::write(&path, b"four\n").unwrap();
        let (d, c3) = read_from(&path, Some(c2), None).unwrap();
        assert_eq!(d, b"three\n");
        let (d, _) = read_from(&path, Some(c3), None).unwrap();
        assert_eq!(d, b"four\n");
    }

    #[test]
    fn tail_takes_the_last_lines_over_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.log");
        std::fs::write(rotated_path(&path, 1), b"a\nb\n").unwrap();
        std::fs::write(&path, b"c\n").unwrap();
        let (d, _) = read_from(&path, None, Some(2)).unwrap();
        assert_eq!(d, b"b\nc\n");
        let (d, _) = read_from(&path, None, None).unwrap();
        assert_eq!(d, b"a\nb\nc\n");
    }

    #[test]
    fn serve_names_a_missing_container() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs/t1")).unwrap();
        std::fs::write(dir.path().join("logs/t1/web.log"), b"hi\n").unwrap();
        let mut req = LogsRequest {
            request_id: "r".into(),
            task_id: "t1".into(),
            container: Some("db".into()),
            cursors: Default::default(),
            tail: None,
        };
        let r = serve(dir.path(), &req);
        assert!(r.error.unwrap().contains("\"db\""));
        req.container = None;
        let r = serve(dir.path(), &req);
        assert_eq!(r.logs[0].data, "hi\n");
    }
}
