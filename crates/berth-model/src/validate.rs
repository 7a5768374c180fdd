//! Name and tag validation shared by every operation.

use std::collections::HashSet;

use once_cell::sync::Lazy;
use regex::Regex;

use crate::error::ApiError;
use crate::types::Tag;

/// Maximum number of tags on one resource.
pub const MAX_TAGS: usize = 50;
/// Maximum tag key length (characters).
pub const MAX_TAG_KEY_LEN: usize = 128;
/// Maximum tag value length (characters).
pub const MAX_TAG_VALUE_LEN: usize = 256;

static NAME_RE: Lazy<Regex> = Lazy::new(|| Regex::new(r"^[A-Za-z0-9_-]{1,255}$").unwrap());
static TAG_RE: Lazy<Regex> = Lazy::new(|| Regex::new(r"^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$").unwrap());

const NAME_RULE: &str =
    "Up to 255 letters (uppercase and lowercase), numbers, underscores, and hyphens are allowed.";

/// True when `name` is 1-255 characters of `[A-Za-z0-9_-]` (the rule for
/// clusters, families, services, containers and volumes).
pub fn is_valid_name(name: &str) -> bool {
    NAME_RE.is_match(name)
}

fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "Invalid {what} name '{name}'. {NAME_RULE}"
        )))
    }
}

/// Cluster names: 1-255 of `[A-Za-z0-9_-]`.
pub fn validate_cluster_name(name: &str) -> Result<(), ApiError> {
    check_name("cluster", name)
}

/// Service names: 1-255 of `[A-Za-z0-9_-]`.
pub fn validate_service_name(name: &str) -> Result<(), ApiError> {
    check_name("service", name)
}

/// Container names: 1-255 of `[A-Za-z0-9_-]`.
pub fn validate_container_name(name: &str) -> Result<(), ApiError> {
    check_name("container", name)
}

/// Task definition families: 1-255 of `[A-Za-z0-9_-]`. A `ClientException`,
/// as ECS reports family problems from RegisterTaskDefinition.
pub fn validate_family(name: &str) -> Result<(), ApiError> {
    if is_valid_name(name) {
        Ok(())
    } else if name.is_empty() {
        Err(ApiError::client("Family should not be null or empty."))
    } else {
        Err(ApiError::client(format!(
            "Invalid family '{name}'. {NAME_RULE}"
        )))
    }
}

fn check_tag_key(key: &str) -> Result<(), ApiError> {
    let len = key.chars().count();
    if len == 0 {
        return Err(ApiError::invalid(
            "Invalid tag key ''. Tag keys must be between 1 and 128 characters long.",
        ));
    }
    if len > MAX_TAG_KEY_LEN {
        return Err(ApiError::invalid(format!(
            "Invalid tag key '{key}'. Tag keys must be between 1 and 128 characters long; got {len}."
        )));
    }
    if !TAG_RE.is_match(key) {
        return Err(ApiError::invalid(format!(
            "Invalid tag key '{key}'. Tag keys may contain only letters, numbers, spaces and _ . : / = + - @"
        )));
    }
    if key.len() >= 4 && key[..4].eq_ignore_ascii_case("aws:") {
        return Err(ApiError::invalid(format!(
            "Invalid tag key '{key}'. The 'aws:' prefix is reserved for AWS use."
        )));
    }
    Ok(())
}

/// Tags on Create*/Register*/TagResource: at most 50, key 1-128 and value
/// 0-256 characters of `[\p{L}\p{Z}\p{N}_.:/=+\-@]`, no `aws:` prefix (any
/// case), no key twice.
pub fn validate_tags(tags: &[Tag]) -> Result<(), ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(format!(
            "Too many tags: {}. A resource can have at most {MAX_TAGS} tags.",
            tags.len()
        )));
    }
    let mut seen = HashSet::new();
    for t in tags {
        check_tag_key(&t.key)?;
        let vlen = t.value.chars().count();
        if vlen > MAX_TAG_VALUE_LEN {
            return Err(ApiError::invalid(format!(
                "Invalid value for tag key '{}'. Tag values can be at most 256 characters long; got {vlen}.",
                t.key
            )));
        }
        if !TAG_RE.is_match(&t.value) {
            return Err(ApiError::invalid(format!(
                "Invalid value '{}' for tag key '{}'. Tag values may contain only letters, numbers, spaces and _ . : / = + - @",
                t.value, t.key
            )));
        }
        if !seen.insert(t.key.as_str()) {
            return Err(ApiError::invalid(format!(
                "Duplicate tag key '{}'. Each tag key may appear only once.",
                t.key
            )));
        }
    }
    Ok(())
}

/// Tag keys for UntagResource: same key rules as [`validate_tags`].
pub fn validate_tag_keys(keys: &[String]) -> Result<(), ApiError> {
    for k in keys {
        check_tag_key(k)?;
    }
    Ok(())
}

/// TagResource semantics: existing keys are overwritten, others kept (order
/// preserved, new keys appended). Fails if the result would exceed 50 tags.
/// `new` should already have passed [`validate_tags`].
pub fn merge_tags(existing: &[Tag], new: &[Tag]) -> Result<Vec<Tag>, ApiError> {
    let mut out: Vec<Tag> = existing.to_vec();
    for t in new {
        match out.iter_mut().find(|e| e.key == t.key) {
            Some(e) => e.value = t.value.clone(),
            None => out.push(t.clone()),
        }
    }
    if out.len() > MAX_TAGS {
        return Err(ApiError::invalid(format!(
            "Too many tags: the resource would have {} tags. A resource can have at most {MAX_TAGS} tags.",
            out.len()
        )));
    }
    Ok(out)
}

/// UntagResource semantics: drop the named keys; unknown keys are ignored.
pub fn remove_tags(existing: &[Tag], keys: &[String]) -> Vec<Tag> {
    existing
        .iter()
        .filter(|t| !keys.iter().any(|k| k == &t.key))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn tag(k: &str, v: &str) -> Tag {
        Tag {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn cluster_names() {
        assert!(validate_cluster_name("default").is_ok());
        assert!(validate_cluster_name("a_B-9").is_ok());
        assert!(validate_cluster_name(&"x".repeat(255)).is_ok());
        let e = validate_cluster_name("a b").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidParameterException);
        assert_eq!(
            e.message,
            "Invalid cluster name 'a b'. Up to 255 letters (uppercase and lowercase), numbers, underscores, and hyphens are allowed."
        );
        assert!(validate_cluster_name("").is_err());
        assert!(validate_cluster_name(&"x".repeat(256)).is_err());
        assert!(validate_cluster_name("a/b").is_err());
    }

    #[test]
    fn families() {
        assert!(validate_family("auth").is_ok());
        let e = validate_family("au th").unwrap_err();
        assert!(e.message.contains("'au th'"));
        assert!(validate_family("").is_err());
        assert!(validate_family("a:1").is_err());
    }

    #[test]
    fn tags_table() {
        let ok = vec![
            tag("env", "prod"),
            tag("a b", ""),
            tag("k.:/=+-@_", "ünïcode 1"),
        ];
        assert!(validate_tags(&ok).is_ok());
        let cases: Vec<(Vec<Tag>, &str)> = vec![
            (vec![tag("", "v")], "''"),
            (vec![tag(&"k".repeat(129), "v")], "kkkk"),
            (vec![tag("bad#key", "v")], "bad#key"),
            (vec![tag("aws:x", "v")], "aws:x"),
            (vec![tag("AWS:x", "v")], "AWS:x"),
            (vec![tag("k", &"v".repeat(257))], "'k'"),
            (vec![tag("k", "bad|value")], "bad|value"),
            (vec![tag("dup", "1"), tag("dup", "2")], "dup"),
            ((0..51).map(|i| tag(&format!("k{i}"), "v")).collect(), "51"),
        ];
        for (tags, needle) in cases {
            let e = validate_tags(&tags).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidParameterException, "{needle}");
            assert!(e.message.contains(needle), "{} !~ {needle}", e.message);
        }
    }

    #[test]
    fn tag_keys() {
        assert!(validate_tag_keys(&["a".into(), "b c".into()]).is_ok());
        let e = validate_tag_keys(&["ok".into(), "aws:name".into()]).unwrap_err();
        assert!(e.message.contains("aws:name"));
        assert!(validate_tag_keys(&["".into()]).is_err());
    }

    #[test]
    fn merge_and_remove() {
        let existing = vec![tag("a", "1"), tag("b", "2")];
        let merged = merge_tags(&existing, &[tag("b", "3"), tag("c", "4")]).unwrap();
        assert_eq!(merged, vec![tag("a", "1"), tag("b", "3"), tag("c", "4")]);
        assert_eq!(
            remove_tags(&merged, &["a".into(), "zz".into()]),
            vec![tag("b", "3"), tag("c", "4")]
        );
        let many: Vec<Tag> = (0..50).map(|i| tag(&format!("k{i}"), "v")).collect();
        assert!(merge_tags(&many, &[tag("k1", "w")]).is_ok());
        assert!(merge_tags(&many, &[tag("new", "w")]).is_err());
    }
}
