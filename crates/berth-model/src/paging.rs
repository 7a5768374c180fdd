//! List pagination: opaque `nextToken`s and `maxResults`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

#[derive(Serialize, Deserialize)]
struct Token {
    o: String,
    k: String,
}

/// Opaque continuation token: base64url of JSON `{"o": op, "k": last_key}`.
/// Tokens are tied to the operation that issued them.
pub fn encode_token(op: &str, last_key: &str) -> String {
    let t = Token {
        o: op.to_string(),
        k: last_key.to_string(),
    };
    // Serializing two strings cannot fail.
    let json = serde_json::to_vec(&t).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// The last key of the previous page, or `InvalidParameterException
/// "Invalid nextToken: <token>"` on garbage or a token from another operation.
pub fn decode_token(op: &str, token: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::invalid(format!("Invalid nextToken: {token}"));
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| invalid())?;
    let t: Token = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if t.o != op {
        return Err(invalid());
    }
    Ok(t.k)
}

/// Decode an optional request token (`None` or empty string = first page).
pub fn decode_opt_token(op: &str, token: Option<&str>) -> Result<Option<String>, ApiError> {
    match token {
        None | Some("") => Ok(None),
        Some(t) => decode_token(op, t).map(Some),
    }
}

/// `maxResults`: absent → `default`; otherwise 1..=100.
pub fn check_max_results(v: Option<i64>, default: usize) -> Result<usize, ApiError> {
    match v {
        None => Ok(default),
        Some(n) if (1..=100).contains(&n) => Ok(n as usize),
        Some(n) => Err(ApiError::invalid(format!(
            "Invalid maxResults: {n}. maxResults must be between 1 and 100."
        ))),
    }
}

/// One page of `items` strictly after the key `after`.
///
/// `items` must be in the order the caller wants to list them in, and keys
/// must be unique. The page starts right after the item whose key equals
/// `after`; if that item has gone since the previous page, it starts at the
/// first key that sorts after `after` in the list's direction (ascending, or
/// descending when the list's first key is greater than its last). Returns
/// the page and, when more items follow, the token for the next one.
pub fn page<T, F: Fn(&T) -> String>(
    items: impl IntoIterator<Item = T>,
    after: Option<&str>,
    max: usize,
    op: &str,
    key: F,
) -> (Vec<T>, Option<String>) {
    let max = max.max(1);
    let items: Vec<T> = items.into_iter().collect();
    let keys: Vec<String> = items.iter().map(&key).collect();
    let start = match after {
        None => 0,
        Some(a) => match keys.iter().position(|k| k == a) {
            Some(i) => i + 1,
            None => {
                let descending = keys.len() > 1 && keys[0] > keys[keys.len() - 1];
                keys.iter()
                    .position(|k| {
                        if descending {
                            k.as_str() < a
                        } else {
                            k.as_str() > a
                        }
                    })
                    .unwrap_or(keys.len())
            }
        },
    };
    let end = (start + max).min(items.len());
    let token = if end < items.len() && end > start {
        Some(encode_token(op, &keys[end - 1]))
    } else {
        None
    };
    let page = items.into_iter().skip(start).take(end - start).collect();
    (page, token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use proptest::prelude::*;

    #[test]
    fn tokens_round_trip() {
        for key in ["", "a", "arn:aws:ecs:us-east-1:1:cluster/x", "ünï/+= code"] {
            let t = encode_token("ListClusters", key);
            assert!(t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(decode_token("ListClusters", &t).unwrap(), key);
        }
    }

    #[test]
    fn wrong_op_and_garbage_rejected() {
        let t = encode_token("ListClusters", "x");
        let e = decode_token("ListServices", &t).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidParameterException);
        assert_eq!(e.message, format!("Invalid nextToken: {t}"));
        for g in ["", "!!!", "bm90IGpzb24", "e30"] {
            let e = decode_token("ListClusters", g).unwrap_err();
            assert!(e.message.contains("Invalid nextToken"), "{g}");
        }
        assert_eq!(decode_opt_token("ListClusters", Some("")).unwrap(), None);
        assert_eq!(decode_opt_token("ListClusters", None).unwrap(), None);
    }

    #[test]
    fn max_results() {
        assert_eq!(check_max_results(None, 100).unwrap(), 100);
        assert_eq!(check_max_results(None, 10).unwrap(), 10);
        assert_eq!(check_max_results(Some(1), 100).unwrap(), 1);
        assert_eq!(check_max_results(Some(100), 100).unwrap(), 100);
        for bad in [0, -1, 101, i64::MAX] {
            let e = check_max_results(Some(bad), 100).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidParameterException);
            assert!(e.message.contains(&bad.to_string()));
        }
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("k{i:05}")).collect()
    }

    fn all_pages(items: &[String], max: usize) -> (Vec<String>, Vec<usize>, Vec<String>) {
        let mut out = Vec::new();
        let mut sizes = Vec::new();
        let mut tokens = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (p, next) = page(items.iter().cloned(), after.as_deref(), max, "Op", |s| {
                s.clone()
            });
            sizes.push(p.len());
            out.extend(p);
            match next {
                Some(t) => {
                    assert!(!tokens.contains(&t), "token repeated");
                    after = Some(decode_token("Op", &t).unwrap());
                    tokens.push(t);
                }
                None => break,
            }
        }
        (out, sizes, tokens)
    }

    #[test]
    fn pages_of_250() {
        let items = keys(250);
        let (out, sizes, tokens) = all_pages(&items, 100);
        assert_eq!(sizes, vec![100, 100, 50]);
        assert_eq!(tokens.len(), 2);
        assert_eq!(out, items);
    }

    #[test]
    fn exact_multiple_has_no_trailing_token() {
        let (_, sizes, _) = all_pages(&keys(200), 100);
        assert_eq!(sizes, vec![100, 100]);
        let (out, sizes, _) = all_pages(&[], 100);
        assert!(out.is_empty());
        assert_eq!(sizes, vec![0]);
    }

    #[test]
    fn resumes_after_deleted_key() {
        let items = keys(10);
        let (p, t) = page(items.iter().cloned(), None, 3, "Op", |s| s.clone());
        assert_eq!(p, items[..3]);
        let after = decode_token("Op", &t.unwrap()).unwrap();
        // the last item of the previous page has been deleted meanwhile
        let remaining: Vec<String> = items.iter().filter(|k| **k != after).cloned().collect();
        let (p, _) = page(remaining, Some(&after), 3, "Op", |s| s.clone());
        assert_eq!(p, items[3..6]);
        // descending lists resume in their own direction
        let mut desc = keys(10);
        desc.reverse();
        let without: Vec<String> = desc.iter().filter(|k| *k != "k00005").cloned().collect();
        let (p, _) = page(without, Some("k00005"), 2, "Op", |s| s.clone());
        assert_eq!(p, vec!["k00004".to_string(), "k00003".to_string()]);
    }

    proptest! {
        #[test]
        fn concatenated_pages_equal_input(n in 0usize..400, max in 1usize..=100) {
            let items = keys(n);
            let (out, sizes, _) = all_pages(&items, max);
            prop_assert_eq!(out, items);
            prop_assert!(sizes.iter().all(|s| *s <= max));
            let full_pages = sizes.len() - 1;
            prop_assert!(sizes[..full_pages].iter().all(|s| *s == max));
        }
    }
}
