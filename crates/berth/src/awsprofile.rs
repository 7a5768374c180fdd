//! Write or update an AWS CLI profile (e.g. `berth`) so that
//! `aws --profile berth ecs list-clusters` reaches this berth.
//!
//! * `~/.aws/config` gets `[profile NAME]` with `region` and `endpoint_url`
//!   (a profile-level `endpoint_url` applies to every service in CLI v1
//!   1.46 / botocore 1.43 and later);
//! * `~/.aws/credentials` gets `[NAME]` with `aws_access_key_id` and
//!   `aws_secret_access_key`.
//!
//! Every other line of both files — other profiles, comments, blank lines,
//! other keys of our section — is kept byte for byte. Files are replaced via
//! temp file + fsync + rename in the same directory, never rewritten in
//! place.
//!
//! The INI dialect is the one botocore reads (Python `configparser`,
//! `RawConfigParser` defaults): `#` and `;` start full-line comments only;
//! `=` or `:` separate key and value; option names are case-insensitive;
//! an indented line after an option continues that option's value (this is
//! how nested blocks such as `s3 =\n  addressing_style = path` are
//! written); a section header is `[` … the last `]`, taken literally, so
//! `[ profile berth ]` is *not* the profile `berth` for the CLI (botocore
//! requires the section name to start with `profile` and splits the rest
//! with `shlex`). Such a section is still recognised here and its header is
//! rewritten to the canonical `[profile berth]`, so the CLI sees it.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The profile to write.
#[derive(Debug, Clone, Copy)]
pub struct Profile<'a> {
    /// Profile name, e.g. `berth`. `default` writes `[default]` in config.
    pub name: &'a str,
    pub region: &'a str,
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    /// e.g. `https://127.0.0.1:8080`.
    pub endpoint_url: &'a str,
    /// The CA bundle the CLI verifies an HTTPS endpoint with (`ca_bundle`).
    pub ca_bundle: Option<&'a str>,
}

/// Where the profile was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfilePaths {
    pub config: PathBuf,
    pub credentials: PathBuf,
}

/// Update (or create) `[profile NAME]` in the AWS config file (region,
/// endpoint_url) and `[NAME]` in the shared credentials file (access key
/// id and secret). Paths honour `AWS_CONFIG_FILE` and
/// `AWS_SHARED_CREDENTIALS_FILE` when set, else `$HOME/.aws/config` and
/// `$HOME/.aws/credentials`.
pub fn write_profile(p: &Profile) -> io::Result<ProfilePaths> {
    let paths = profile_paths(&|k| std::env::var_os(k))?;
    write_profile_to(&paths.config, &paths.credentials, p)
}

/// The config and credentials paths the AWS CLI would use, given an
/// environment lookup (pass `&|k| std::env::var_os(k)` for the real one).
/// Like botocore, a leading `~` is expanded (from `HOME`); `$VAR`s are not.
pub fn profile_paths(env: &dyn Fn(&str) -> Option<OsString>) -> io::Result<ProfilePaths> {
    let home = || -> io::Result<PathBuf> {
        match env("HOME") {
            Some(h) if !h.is_empty() => Ok(PathBuf::from(h)),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "HOME is not set: cannot locate ~/.aws (set HOME, or AWS_CONFIG_FILE and \
                 AWS_SHARED_CREDENTIALS_FILE)",
            )),
        }
    };
    let resolve = |var: &str, default: &str| -> io::Result<PathBuf> {
        match env(var) {
            Some(v) if !v.is_empty() => {
                let p = PathBuf::from(&v);
                match p.strip_prefix("~") {
                    Ok(rest) => Ok(home()?.join(rest)),
                    Err(_) => Ok(p),
                }
            }
            _ => Ok(home()?.join(".aws").join(default)),
        }
    };
    Ok(ProfilePaths {
        config: resolve("AWS_CONFIG_FILE", "config")?,
        credentials: resolve("AWS_SHARED_CREDENTIALS_FILE", "credentials")?,
    })
}

/// [`write_profile`] with explicit paths. Missing parent directories are
/// created (mode 0700). A file whose text would not change is not
/// rewritten. The credentials file always ends up mode 0600; a new config
/// file is 0600, an existing one keeps its mode. A path that is a symlink
/// is followed, and the file it points to is replaced.
pub fn write_profile_to(
    config: &Path,
    credentials: &Path,
    p: &Profile,
) -> io::Result<ProfilePaths> {
    validate(p)?;
    let config_section = if p.name == "default" {
        "default".to_string()
    } else {
        format!("profile {}", p.name)
    };
    let mut keys = vec![("region", p.region), ("endpoint_url", p.endpoint_url)];
    if let Some(b) = p.ca_bundle {
        keys.push(("ca_bundle", b));
    }
    update_file(config, &config_section, &keys, false)?;
    update_file(
        credentials,
        p.name,
        &[
            ("aws_access_key_id", p.access_key_id),
            ("aws_secret_access_key", p.secret_access_key),
        ],
        true,
    )?;
    Ok(ProfilePaths {
        config: config.to_path_buf(),
        credentials: credentials.to_path_buf(),
    })
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn validate(p: &Profile) -> io::Result<()> {
    if p.name.is_empty()
        || p.name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '[' | ']' | '"' | '\''))
    {
        return Err(invalid(format!(
            "invalid AWS profile name {:?}: it must be non-empty, without whitespace, quotes \
             or brackets",
            p.name
        )));
    }
    for (what, v) in [
        ("region", p.region),
        ("aws_access_key_id", p.access_key_id),
        ("aws_secret_access_key", p.secret_access_key),
        ("endpoint_url", p.endpoint_url),
    ] {
        if v.trim().is_empty() || v.trim() != v || v.chars().any(|c| c.is_control()) {
            return Err(invalid(format!(
                "invalid {what} {v:?} for AWS profile {:?}: it must be non-empty, without \
                 surrounding whitespace or control characters",
                p.name
            )));
        }
    }
    Ok(())
}

fn update_file(path: &Path, section: &str, keys: &[(&str, &str)], secret: bool) -> io::Result<()> {
    // Follow a symlink (dotfile managers) so that the link survives.
    let target = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(path)?,
        _ => path.to_path_buf(),
    };
    let (old, old_mode) = match fs::read(&target) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not UTF-8; not touching it", target.display()),
                )
            })?;
            (Some(text), file_mode(&target))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (None, None),
        Err(e) => return Err(with_path(e, "cannot read", &target)),
    };
    let new = upsert_ini_section(old.as_deref().unwrap_or(""), section, keys);
    let mode = if secret {
        0o600
    } else {
        old_mode.unwrap_or(0o600)
    };
    if old.as_deref() == Some(new.as_str()) && (!secret || old_mode == Some(0o600)) {
        return Ok(());
    }
    write_atomic(&target, new.as_bytes(), mode)
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(unix)]
fn file_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

#[cfg(not(unix))]
fn file_mode(_path: &Path) -> Option<u32> {
    None
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write `data` to `path` via a temp file in the same directory, fsync,
/// rename, fsync the directory.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    create_dir_private(&dir).map_err(|e| with_path(e, "cannot create directory", &dir))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| invalid(format!("{} is not a file path", path.display())))?;

    let mut tmp_name = OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".berth-tmp-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);

    let result = (|| -> io::Result<()> {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(mode);
        }
        let mut f = opts.open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // Make the rename durable. Not every filesystem lets a directory be
        // fsynced; the data itself is already on disk.
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| with_path(e, "cannot write", path))
}

fn create_dir_private(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

// ---------------------------------------------------------------------------
// The pure core
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind<'a> {
    /// `[ … ]`; the text between `[` and the last `]`, untrimmed.
    Header(&'a str),
    /// `key = value` at the section's option level; key as written, trimmed.
    Option(&'a str),
    /// An indented line continuing the previous option's value.
    Continuation,
    Blank,
    Comment,
    /// Anything else (unparseable for configparser); kept as is.
    Other,
}

#[derive(Debug)]
struct Line<'a> {
    /// Without the line ending.
    body: &'a str,
    /// `"\n"`, `"\r\n"` or `""` (last line without newline).
    eol: &'a str,
    kind: Kind<'a>,
}

fn split_lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    // configparser state: is there an option whose value may continue, and
    // the indentation of the line that started it.
    let mut in_option = false;
    let mut indent_level = 0usize;
    for raw in text.split_inclusive('\n') {
        let (body, eol) = if let Some(b) = raw.strip_suffix("\r\n") {
            (b, "\r\n")
        } else if let Some(b) = raw.strip_suffix('\n') {
            (b, "\n")
        } else {
            (raw, "")
        };
        let trimmed = body.trim();
        let indent = body.len() - body.trim_start().len();
        let kind = if trimmed.is_empty() {
            Kind::Blank
        } else if trimmed.starts_with('#') || trimmed.starts_with(';') {
            Kind::Comment
        } else if in_option && indent > indent_level {
            Kind::Continuation
        } else {
            indent_level = indent;
            match header_name(trimmed) {
                Some(h) => {
                    in_option = false;
                    Kind::Header(h)
                }
                None => match option_key(trimmed) {
                    Some(k) => {
                        in_option = true;
                        Kind::Option(k)
                    }
                    None => {
                        in_option = false;
                        Kind::Other
                    }
                },
            }
        };
        out.push(Line { body, eol, kind });
    }
    out
}

/// `[name]` (anything may follow the last `]`) → `name`, untrimmed.
fn header_name(trimmed: &str) -> Option<&str> {
    let rest = trimmed.strip_prefix('[')?;
    let end = rest.rfind(']')?;
    let name = &rest[..end];
    (!name.is_empty()).then_some(name)
}

/// `key = value` or `key: value` → `key` (trimmed).
fn option_key(trimmed: &str) -> Option<&str> {
    let i = trimmed.find(['=', ':'])?;
    let key = trimmed[..i].trim();
    (!key.is_empty()).then_some(key)
}

/// Words of a section name, quotes around a word removed.
fn name_words(name: &str) -> Vec<&str> {
    name.split_whitespace()
        .map(|w| {
            w.strip_prefix('"')
                .and_then(|w| w.strip_suffix('"'))
                .or_else(|| w.strip_prefix('\'').and_then(|w| w.strip_suffix('\'')))
                .unwrap_or(w)
        })
        .collect()
}

/// Is `header` the section `section` as botocore reads it? One-word names
/// (`default`, credentials profiles) must match exactly; `profile NAME`
/// must start with `profile` and split (like `shlex`) into the same words.
fn strict_match(header: &str, section: &str) -> bool {
    if header == section {
        return true;
    }
    let want = name_words(section);
    want.len() >= 2
        && header.starts_with(want[0])
        && header.starts_with(|c: char| !c.is_whitespace())
        && name_words(header) == want
}

/// Same words, whatever the spacing: `[ profile berth ]`.
fn loose_match(header: &str, section: &str) -> bool {
    name_words(header) == name_words(section)
}

/// Return `text` with section `[section]` holding `keys`.
///
/// Keys already in the section are replaced in place (keeping their
/// indentation; a repeated key's later copies are removed, since botocore
/// refuses duplicate options); missing keys are appended after the
/// section's last option. Other keys of the section, other sections,
/// comments and blank lines are kept byte for byte. A missing section is
/// appended at the end, after a blank line. The file's line ending (LF or
/// CRLF) is used for new lines; a file without a trailing newline gets one
/// only where a line is added after its last line. Calling it twice with
/// the same arguments gives the same text as calling it once.
///
/// If several sections match, the one the AWS CLI uses is updated (the
/// last exact one); a section that only matches when spacing is ignored
/// (`[ profile berth ]`, which the CLI does not see) is updated and its
/// header rewritten only if no exact one exists.
pub fn upsert_ini_section(text: &str, section: &str, keys: &[(&str, &str)]) -> String {
    let lines = split_lines(text);
    let eol = lines
        .iter()
        .map(|l| l.eol)
        .find(|e| !e.is_empty())
        .unwrap_or("\n");
    // Values must stay on one line.
    let clean = |v: &str| -> String { v.chars().filter(|c| *c != '\r' && *c != '\n').collect() };
    let keys: Vec<(String, String)> = keys.iter().map(|(k, v)| (clean(k), clean(v))).collect();
    let section = clean(section);

    let headers: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| matches!(l.kind, Kind::Header(_)))
        .map(|(i, _)| i)
        .collect();
    let header_of = |i: usize| -> &str {
        match lines[i].kind {
            Kind::Header(h) => h,
            _ => "",
        }
    };
    let strict = headers
        .iter()
        .copied()
        .rfind(|&i| strict_match(header_of(i), &section));
    let target = strict.or_else(|| {
        headers
            .iter()
            .copied()
            .find(|&i| loose_match(header_of(i), &section))
    });

    let mut out = String::with_capacity(text.len() + 128);
    let push_line = |out: &mut String, body: &str, eol_: &str| {
        out.push_str(body);
        out.push_str(eol_);
    };
    // Before adding a line after the current output, make sure it ends
    // with a newline.
    let ensure_newline = |out: &mut String| {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str(eol);
        }
    };

    let Some(start) = target else {
        // Append a new section.
        for l in &lines {
            push_line(&mut out, l.body, l.eol);
        }
        ensure_newline(&mut out);
        let last_blank = matches!(
            lines.last(),
            None | Some(Line {
                kind: Kind::Blank,
                ..
            })
        );
        if !out.is_empty() && !last_blank {
            out.push_str(eol);
        }
        out.push('[');
        out.push_str(&section);
        out.push(']');
        out.push_str(eol);
        for (k, v) in &keys {
            push_line(&mut out, &format!("{k} = {v}"), eol);
        }
        return out;
    };

    let end = headers
        .iter()
        .copied()
        .find(|&i| i > start)
        .unwrap_or(lines.len());
    // Last option or continuation line of the section: new keys go after it.
    let insert_after = (start..end)
        .rev()
        .find(|&i| matches!(lines[i].kind, Kind::Option(_) | Kind::Continuation))
        .unwrap_or(start);

    let mut seen = vec![false; keys.len()];
    let mut dropping = false; // dropping the continuation lines of a removed or replaced key
    for (i, l) in lines.iter().enumerate() {
        let in_section = i > start && i < end;
        if i == start && strict.is_none() {
            // Rewrite `[ profile berth ]` so the CLI sees it; keep whatever
            // followed the `]`.
            let trimmed = l.body.trim_start();
            let after = trimmed
                .rfind(']')
                .map(|j| &trimmed[j + 1..])
                .unwrap_or_default();
            push_line(&mut out, &format!("[{section}]{after}"), l.eol);
        } else if in_section {
            match l.kind {
                Kind::Option(k) => {
                    dropping = false;
                    if let Some(j) = keys.iter().position(|(key, _)| key.eq_ignore_ascii_case(k)) {
                        dropping = true;
                        if !seen[j] {
                            seen[j] = true;
                            let indent = &l.body[..l.body.len() - l.body.trim_start().len()];
                            let (key, value) = &keys[j];
                            push_line(&mut out, &format!("{indent}{key} = {value}"), l.eol);
                        }
                    } else {
                        push_line(&mut out, l.body, l.eol);
                    }
                }
                Kind::Continuation if dropping => {}
                _ => push_line(&mut out, l.body, l.eol),
            }
        } else {
            push_line(&mut out, l.body, l.eol);
        }
        if i == insert_after {
            // No option of the section follows: every key not seen yet is
            // missing.
            for (j, (k, v)) in keys.iter().enumerate() {
                if !seen[j] {
                    ensure_newline(&mut out);
                    push_line(&mut out, &format!("{k} = {v}"), eol);
                    seen[j] = true;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BERTH_CONFIG: &[(&str, &str)] = &[
        ("region", "us-east-1"),
        ("endpoint_url", "http://127.0.0.1:8080"),
    ];

    fn upsert(text: &str, section: &str) -> String {
        upsert_ini_section(text, section, BERTH_CONFIG)
    }

    #[test]
    fn upsert_table() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "empty file",
                "",
                "profile berth",
                "[profile berth]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:8080\n",
            ),
            (
                "other profiles and comments untouched",
                "# my config\n[default]\nregion = eu-west-1\n; note\n\n[profile work]\nregion = ap-south-1\noutput=json\n",
                "profile berth",
                "# my config\n[default]\nregion = eu-west-1\n; note\n\n[profile work]\nregion = ap-south-1\noutput=json\n\n[profile berth]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:8080\n",
            ),
            (
                "no trailing newline",
                "[default]\nregion = eu-west-1",
                "profile berth",
                "[default]\nregion = eu-west-1\n\n[profile berth]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:8080\n",
            ),
            (
                "already ends with a blank line",
                "[default]\nregion = eu-west-1\n\n",
                "profile berth",
                "[default]\nregion = eu-west-1\n\n[profile berth]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:8080\n",
            ),
            (
                "replace in place, keep other keys and comments",
                "[default]\nregion = x\n\n[profile berth]\n# managed by berth\nregion=eu-west-3\noutput = table\nendpoint_url = http://old:1\ncli_pager =\n\n[profile z]\nregion = y\n",
                "profile berth",
                "[default]\nregion = x\n\n[profile berth]\n# managed by berth\nregion = us-east-1\noutput = table\nendpoint_url = http://127.0.0.1:8080\ncli_pager =\n\n[profile z]\nregion = y\n",
            ),
            (
                "missing key appended after the last option, before trailing comment",
                "[profile berth]\nregion = eu-west-3\noutput = json\n# about next\n\n[profile z]\nregion = y\n",
                "profile berth",
                "[profile berth]\nregion = us-east-1\noutput = json\nendpoint_url = http://127.0.0.1:8080\n# about next\n\n[profile z]\nregion = y\n",
            ),
            (
                "empty section, header is the last line without newline",
                "[default]\nregion = x\n\n[profile berth]",
                "profile berth",
                "[default]\nregion = x\n\n[profile berth]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:8080\n",
            ),
            (
                "last line of the section has no newline",
                "[profile berth]\noutput = json",
                "profile berth",
                "[profile berth]\noutput = json\nregion = us-east-1\nendpoint_url = http://127.0.0.1:8080\n",
            ),
            (
                "CRLF kept and used for new lines",
                "[default]\r\nregion = x\r\n",
                "profile berth",
                "[default]\r\nregion = x\r\n\r\n[profile berth]\r\nregion = us-east-1\r\nendpoint_url = http://127.0.0.1:8080\r\n",
            ),
            (
                "CRLF replace in place",
                "[profile berth]\r\nregion = x\r\noutput = json\r\n",
                "profile berth",
                "[profile berth]\r\nregion = us-east-1\r\noutput = json\r\nendpoint_url = http://127.0.0.1:8080\r\n",
            ),
            (
                "spaced header rewritten so the CLI sees it",
                "[ profile berth ]\nregion = x\noutput = json\n",
                "profile berth",
                "[profile berth]\nregion = us-east-1\noutput = json\nendpoint_url = http://127.0.0.1:8080\n",
            ),
            (
                "extra inner spaces and quotes are what the CLI accepts: kept",
                "[profile   \"berth\"]  # note\nregion = x\n",
                "profile berth",
                "[profile   \"berth\"]  # note\nregion = us-east-1\nendpoint_url = http://127.0.0.1:8080\n",
            ),
            (
                "exact section preferred over a spaced one",
                "[ profile berth ]\nregion = a\n\n[profile berth]\nregion = b\n",
                "profile berth",
                "[ profile berth ]\nregion = a\n\n[profile berth]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:8080\n",
            ),
            (
                "nested sub-block inside the profile is not our endpoint_url",
                "[profile berth]\nregion = x\ns3 =\n  endpoint_url = http://s3:9000\n  addressing_style = path\n\n[profile z]\nregion = y\n",
                "profile berth",
                "[profile berth]\nregion = us-east-1\ns3 =\n  endpoint_url = http://s3:9000\n  addressing_style = path\nendpoint_url = http://127.0.0.1:8080\n\n[profile z]\nregion = y\n",
            ),
            (
                "services reference and [services] section untouched",
                "[profile berth]\nregion = x\nservices = berth-svc\n\n[services berth-svc]\necs =\n  endpoint_url = http://old:1\n",
                "profile berth",
                "[profile berth]\nregion = us-east-1\nservices = berth-svc\nendpoint_url = http://127.0.0.1:8080\n\n[services berth-svc]\necs =\n  endpoint_url = http://old:1\n",
            ),
            (
                "multi-line value of a replaced key is dropped",
                "[profile berth]\nendpoint_url =\n  http://weird\noutput = json\n",
                "profile berth",
                "[profile berth]\nendpoint_url = http://127.0.0.1:8080\noutput = json\nregion = us-east-1\n",
            ),
            (
                "duplicate key copies removed; case-insensitive key, colon delimiter",
                "[profile berth]\nRegion: a\noutput = json\nregion = b\n",
                "profile berth",
                "[profile berth]\nregion = us-east-1\noutput = json\nendpoint_url = http://127.0.0.1:8080\n",
            ),
            (
                "indented options keep their indentation",
                "[profile berth]\n  region = a\n  output = json\n",
                "profile berth",
                "[profile berth]\n  region = us-east-1\n  output = json\nendpoint_url = http://127.0.0.1:8080\n",
            ),
            (
                "default profile and profile-less names are distinct",
                "[default]\nregion = a\n[berth]\nregion = b\n",
                "profile berth",
                "[default]\nregion = a\n[berth]\nregion = b\n\n[profile berth]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:8080\n",
            ),
            (
                "profile name is a prefix of another",
                "[profile berth2]\nregion = a\n",
                "profile berth",
                "[profile berth2]\nregion = a\n\n[profile berth]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:8080\n",
            ),
            (
                "only comments and blank lines",
                "# nothing yet\n\n",
                "profile berth",
                "# nothing yet\n\n[profile berth]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:8080\n",
            ),
            (
                "credentials: exact one-word section preferred over [ berth ]",
                "[ berth ]\nx = 1\n\n[berth]\naws_access_key_id = OLD\n",
                "berth",
                "[ berth ]\nx = 1\n\n[berth]\naws_access_key_id = OLD\nregion = us-east-1\nendpoint_url = http://127.0.0.1:8080\n",
            ),
            (
                "default section",
                "[default]\nregion = a\n",
                "default",
                "[default]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:8080\n",
            ),
        ];
        for (name, input, section, want) in cases {
            let got = upsert(input, section);
            assert_eq!(&got, want, "{name}");
            // Idempotent.
            assert_eq!(upsert(&got, section), got, "{name} (second call)");
        }
    }

    #[test]
    fn other_sections_byte_for_byte() {
        let before = "; top comment\r\n[default]\r\naws_access_key_id = AKIA1\r\naws_secret_access_key = s1  \r\n\r\n\t# tabbed comment\r\n[prod]\r\naws_access_key_id=AKIA2\r\naws_secret_access_key=s2";
        let after = upsert_ini_section(
            before,
            "berth",
            &[
                ("aws_access_key_id", "AKB"),
                ("aws_secret_access_key", "sec"),
            ],
        );
        assert!(after.starts_with(before), "{after:?}");
        assert_eq!(
            &after[before.len()..],
            "\r\n\r\n[berth]\r\naws_access_key_id = AKB\r\naws_secret_access_key = sec\r\n"
        );
    }

    #[test]
    fn second_call_with_new_values_replaces_in_place() {
        let keys1 = [("aws_access_key_id", "A1"), ("aws_secret_access_key", "S1")];
        let keys2 = [("aws_access_key_id", "A2"), ("aws_secret_access_key", "S2")];
        let base = "[default]\naws_access_key_id = D\n";
        let one = upsert_ini_section(base, "berth", &keys1);
        let two = upsert_ini_section(&one, "berth", &keys2);
        assert_eq!(
            two,
            "[default]\naws_access_key_id = D\n\n[berth]\naws_access_key_id = A2\n\
             aws_secret_access_key = S2\n"
        );
    }

    #[test]
    fn values_cannot_inject_lines() {
        let got = upsert_ini_section("", "x", &[("k", "a\nb = c\r\n[y]")]);
        assert_eq!(got, "[x]\nk = ab = c[y]\n");
    }

    #[test]
    fn garbage_input_never_panics() {
        for text in [
            "[",
            "]",
            "[]",
            "[ ]\n",
            "=",
            "key without section = 1\n",
            "\r",
            "\r\n\r\n",
            "[profile berth\nregion = x",
            "[a]]\n[[b]\n",
            "  [profile berth]\n  region = a\n",
            "[profile berth]\n=\n:\n  \n",
            "ü[ü]\n[profile ü]\nü = ü\n",
        ] {
            let once = upsert(text, "profile berth");
            assert_eq!(upsert(&once, "profile berth"), once, "{text:?}");
        }
    }

    fn profile<'a>(key: &'a str) -> Profile<'a> {
        Profile {
            name: "berth",
            region: "us-east-1",
            access_key_id: key,
            secret_access_key: "secret/with+chars",
            endpoint_url: "http://127.0.0.1:8080",
            ca_bundle: None,
        }
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn write_profile_to_creates_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("aws/config");
        let creds = dir.path().join("aws/credentials");
        let paths = write_profile_to(&config, &creds, &profile("AKIAB1")).unwrap();
        assert_eq!(paths.config, config);
        assert_eq!(paths.credentials, creds);
        assert_eq!(
            fs::read_to_string(&config).unwrap(),
            "[profile berth]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:8080\n"
        );
        assert_eq!(
            fs::read_to_string(&creds).unwrap(),
            "[berth]\naws_access_key_id = AKIAB1\naws_secret_access_key = secret/with+chars\n"
        );
        #[cfg(unix)]
        {
            assert_eq!(mode(&creds), 0o600);
            assert_eq!(mode(&config), 0o600);
            assert_eq!(mode(&dir.path().join("aws")), 0o700);
        }
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("aws"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn write_profile_to_updates_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        let creds = dir.path().join("credentials");
        let config_before = "# mine\n[default]\nregion = eu-west-1\n\n[profile berth]\nregion = eu-west-2\ncli_pager =\n";
        let creds_before = "[default]\naws_access_key_id = AKIADEF\naws_secret_access_key = d\n";
        fs::write(&config, config_before).unwrap();
        fs::write(&creds, creds_before).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
            fs::set_permissions(&creds, fs::Permissions::from_mode(0o644)).unwrap();
        }
        write_profile_to(&config, &creds, &profile("AKIAB2")).unwrap();
        assert_eq!(
            fs::read_to_string(&config).unwrap(),
            "# mine\n[default]\nregion = eu-west-1\n\n[profile berth]\nregion = us-east-1\n\
             cli_pager =\nendpoint_url = http://127.0.0.1:8080\n"
        );
        assert_eq!(
            fs::read_to_string(&creds).unwrap(),
            "[default]\naws_access_key_id = AKIADEF\naws_secret_access_key = d\n\n[berth]\n\
             aws_access_key_id = AKIAB2\naws_secret_access_key = secret/with+chars\n"
        );
        #[cfg(unix)]
        {
            assert_eq!(mode(&config), 0o644, "config keeps its mode");
            assert_eq!(mode(&creds), 0o600, "credentials tightened");
        }
        // Second run with a new key: replaced in place, nothing else moves.
        let c1 = fs::read_to_string(&config).unwrap();
        write_profile_to(&config, &creds, &profile("AKIAB3")).unwrap();
        assert_eq!(fs::read_to_string(&config).unwrap(), c1);
        assert!(fs::read_to_string(&creds)
            .unwrap()
            .contains("aws_access_key_id = AKIAB3\n"));
    }

    #[cfg(unix)]
    #[test]
    fn write_profile_to_replaces_the_file_not_in_place_and_follows_symlinks() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("dotfiles-credentials");
        let link = dir.path().join("credentials");
        let config = dir.path().join("config");
        fs::write(&real, "[default]\naws_access_key_id = A\n").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let ino_before = fs::metadata(&real).unwrap().ino();
        write_profile_to(&config, &link, &profile("AKIAB4")).unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        let text = fs::read_to_string(&real).unwrap();
        assert!(text.starts_with("[default]\naws_access_key_id = A\n\n[berth]\n"));
        // A new inode: written via rename, not in place.
        assert_ne!(fs::metadata(&real).unwrap().ino(), ino_before);
    }

    #[cfg(unix)]
    #[test]
    fn unchanged_file_is_not_rewritten() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        let creds = dir.path().join("credentials");
        write_profile_to(&config, &creds, &profile("AKIAB5")).unwrap();
        let (a, b) = (
            fs::metadata(&config).unwrap().ino(),
            fs::metadata(&creds).unwrap().ino(),
        );
        write_profile_to(&config, &creds, &profile("AKIAB5")).unwrap();
        assert_eq!(fs::metadata(&config).unwrap().ino(), a);
        assert_eq!(fs::metadata(&creds).unwrap().ino(), b);
    }

    #[test]
    fn default_profile_uses_default_section() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        let creds = dir.path().join("credentials");
        let p = Profile {
            name: "default",
            ..profile("AKIAB6")
        };
        write_profile_to(&config, &creds, &p).unwrap();
        assert!(fs::read_to_string(&config)
            .unwrap()
            .starts_with("[default]\n"));
        assert!(fs::read_to_string(&creds)
            .unwrap()
            .starts_with("[default]\n"));
    }

    #[test]
    fn invalid_input_rejected_and_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        let creds = dir.path().join("credentials");
        for p in [
            Profile {
                name: "",
                ..profile("A")
            },
            Profile {
                name: "a b",
                ..profile("A")
            },
            Profile {
                name: "x]",
                ..profile("A")
            },
            Profile {
                endpoint_url: "http://x\n[evil]",
                ca_bundle: None,
                ..profile("A")
            },
            Profile {
                region: "",
                ..profile("A")
            },
            profile(" A"),
        ] {
            let err = write_profile_to(&config, &creds, &p).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        assert!(!config.exists() && !creds.exists());
    }

    #[test]
    fn non_utf8_file_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        let creds = dir.path().join("credentials");
        fs::write(&config, b"[default]\nregion = \xff\n").unwrap();
        let err = write_profile_to(&config, &creds, &profile("A")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(fs::read(&config).unwrap(), b"[default]\nregion = \xff\n");
    }

    #[test]
    fn paths_from_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(a, _)| *a == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            profile_paths(&env(&[("HOME", "/home/u")])).unwrap(),
            ProfilePaths {
                config: "/home/u/.aws/config".into(),
                credentials: "/home/u/.aws/credentials".into(),
            }
        );
        assert_eq!(
            profile_paths(&env(&[
                ("HOME", "/home/u"),
                ("AWS_CONFIG_FILE", "/etc/aws.cfg"),
                ("AWS_SHARED_CREDENTIALS_FILE", "~/creds"),
            ]))
            .unwrap(),
            ProfilePaths {
                config: "/etc/aws.cfg".into(),
                credentials: "/home/u/creds".into(),
            }
        );
        assert_eq!(
            profile_paths(&env(&[
                ("AWS_CONFIG_FILE", "/a"),
                ("AWS_SHARED_CREDENTIALS_FILE", "/b"),
            ]))
            .unwrap()
            .config,
            PathBuf::from("/a")
        );
        assert_eq!(
            profile_paths(&env(&[("AWS_CONFIG_FILE", "/a")]))
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        // Empty values count as unset.
        assert_eq!(
            profile_paths(&env(&[("HOME", "/h"), ("AWS_CONFIG_FILE", "")]))
                .unwrap()
                .config,
            PathBuf::from("/h/.aws/config")
        );
    }
}
