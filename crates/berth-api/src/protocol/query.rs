//! The AWS Query protocol (ELBv2, CloudWatch's older clients), inbound: a form body
//! (`Action=CreateRule&Version=2015-12-01&Conditions.member.1.Values.member.1=%2Fapi%2F*`)
//! decoded into a tree (`serde_json::Value`: objects, arrays for `member.N`, string
//! leaves), and typed extraction from that tree whose errors name the member and the
//! value that was wrong.
//!
//! Pure: no I/O.

use std::borrow::Cow;
use std::collections::BTreeMap;

use berth_model::{ApiError, ErrorKind};
use hyper::header::CONTENT_TYPE;
use hyper::HeaderMap;
use serde_json::{Map, Value};

/// Is this a Query-protocol request? A form body and no `X-Amz-Target`.
pub fn is_query_request(headers: &HeaderMap) -> bool {
    !headers.contains_key("x-amz-target")
        && headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            })
}

/// A Query-protocol error as sent: `<Error><Type/><Code/><Message/></Error>` and an HTTP status.
/// Carries its own code because the query protocol has codes the model's `ErrorKind`
/// does not (`InvalidAction`, `SignatureDoesNotMatch`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub code: Cow<'static, str>,
    pub message: String,
    pub status: u16,
}

impl QueryError {
    pub fn new(
        code: impl Into<Cow<'static, str>>,
        status: u16,
        message: impl Into<String>,
    ) -> Self {
        QueryError {
            code: code.into(),
            message: message.into(),
            status,
        }
    }

    /// `ValidationError` (400).
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new("ValidationError", 400, message)
    }

    /// A body that is not a form (400 `MalformedQueryString`, as AWS answers).
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new("MalformedQueryString", 400, message)
    }

    /// One of the model's kinds (`TargetGroupNotFound`, `PriorityInUse`, …).
    pub fn kind(kind: ErrorKind, message: impl Into<String>) -> Self {
        QueryError::from(ApiError::new(kind, message))
    }

    /// `Sender` for client errors, `Receiver` for server faults.
    pub fn fault_type(&self) -> &'static str {
        if self.status >= 500 {
            "Receiver"
        } else {
            "Sender"
        }
    }
}

impl From<ApiError> for QueryError {
    /// Service kinds (ELBv2's `TargetGroupNotFound`, …) keep their code; the JSON-protocol kinds that reach this endpoint
    /// (authentication, server errors, generic validation) take their Query-protocol
    /// names and statuses.
    fn from(e: ApiError) -> Self {
        let (code, status): (&'static str, u16) = match e.kind {
            ErrorKind::ServerException => ("InternalFailure", 500),
            ErrorKind::ThrottlingException => ("Throttling", 400),
            ErrorKind::MissingAuthenticationTokenException => ("MissingAuthenticationToken", 403),
            ErrorKind::IncompleteSignatureException => ("IncompleteSignature", 400),
            ErrorKind::UnrecognizedClientException => ("InvalidClientTokenId", 403),
            ErrorKind::InvalidSignatureException => ("SignatureDoesNotMatch", 403),
            ErrorKind::AccessDeniedException => ("AccessDenied", 403),
            ErrorKind::InvalidParameterException
            | ErrorKind::ClientException
            | ErrorKind::SerializationException => ("ValidationError", 400),
            ErrorKind::UnknownOperationException => ("InvalidAction", 400),
            k => (k.as_str(), 400),
        };
        QueryError::new(code, status, e.message)
    }
}

/// `application/x-www-form-urlencoded` → `(name, value)` pairs in body order:
/// `+` is a space, `%XX` a byte; the bytes must be UTF-8.
pub fn decode_form(body: &[u8]) -> Result<Vec<(String, String)>, QueryError> {
    let mut out = Vec::new();
    for pair in body.split(|b| *b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        out.push((unescape(k)?, unescape(v)?));
    }
    Ok(out)
}

fn unescape(s: &[u8]) -> Result<String, QueryError> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3).and_then(|h| {
                    std::str::from_utf8(h)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                });
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => {
                        return Err(QueryError::malformed(format!(
                            "Malformed percent-encoding in the request body near '{}'.",
                            String::from_utf8_lossy(&s[i..(i + 3).min(s.len())])
                        )))
                    }
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| QueryError::malformed("The request body is not valid UTF-8.".to_string()))
}

/// The tree being built: a leaf, a structure, or a `member.N` list (ordered by N).
enum Node {
    Leaf(String),
    Struct(BTreeMap<String, Node>),
    List(BTreeMap<u32, Node>),
}

impl Node {
    fn into_value(self) -> Value {
        match self {
            Node::Leaf(s) => Value::String(s),
            Node::Struct(m) => {
                Value::Object(m.into_iter().map(|(k, v)| (k, v.into_value())).collect())
            }
            Node::List(m) => Value::Array(m.into_values().map(Node::into_value).collect()),
        }
    }
}

fn conflict(key: &str) -> QueryError {
    QueryError::validation(format!(
        "Parameter '{key}' is given both as a value and as a structure or list."
    ))
}

/// Pairs → tree. `A.B=1` is `{"A":{"B":"1"}}`; `A.member.2=x&A.member.1=y` is
/// `{"A":["y","x"]}` (ordered by N, gaps closed); an empty `A=` where a list is
/// expected reads as an empty list (that is how the query serializer sends `[]`).
pub fn to_tree(pairs: &[(String, String)]) -> Result<Map<String, Value>, QueryError> {
    let mut root: BTreeMap<String, Node> = BTreeMap::new();
    for (key, value) in pairs {
        let segs: Vec<&str> = key.split('.').collect();
        if segs.iter().any(|s| s.is_empty()) {
            return Err(QueryError::validation(format!(
                "Malformed parameter name '{key}'."
            )));
        }
        insert(&mut root, &segs, value, key)?;
    }
    Ok(root.into_iter().map(|(k, v)| (k, v.into_value())).collect())
}

fn insert(
    map: &mut BTreeMap<String, Node>,
    segs: &[&str],
    value: &str,
    key: &str,
) -> Result<(), QueryError> {
    let name = segs[0].to_string();
    let rest = &segs[1..];
    if rest.is_empty() {
        match map.get(&name) {
            None => {
                map.insert(name, Node::Leaf(value.to_string()));
                Ok(())
            }
            // `A=` next to `A.member.1=…`: the empty value adds nothing.
            Some(Node::List(_)) | Some(Node::Struct(_)) if value.is_empty() => Ok(()),
            // The last value of a repeated name wins, as AWS does.
            Some(Node::Leaf(_)) => {
                map.insert(name, Node::Leaf(value.to_string()));
                Ok(())
            }
            Some(_) => Err(conflict(key)),
        }
    } else if rest[0] == "member" {
        let n = rest
            .get(1)
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                QueryError::validation(format!(
                    "Malformed parameter name '{key}': 'member' must be followed by an index of 1 or more."
                ))
            })?;
        let entry = map
            .entry(name)
            .or_insert_with(|| Node::List(BTreeMap::new()));
        if matches!(entry, Node::Leaf(v) if v.is_empty()) {
            *entry = Node::List(BTreeMap::new());
        }
        let Node::List(list) = entry else {
            return Err(conflict(key));
        };
        let rest = &rest[2..];
        if rest.is_empty() {
            match list.get(&n) {
                None | Some(Node::Leaf(_)) => {
                    list.insert(n, Node::Leaf(value.to_string()));
                    Ok(())
                }
                Some(_) => Err(conflict(key)),
            }
        } else {
            let item = list
                .entry(n)
                .or_insert_with(|| Node::Struct(BTreeMap::new()));
            let Node::Struct(m) = item else {
                return Err(conflict(key));
            };
            insert(m, rest, value, key)
        }
    } else {
        let entry = map
            .entry(name)
            .or_insert_with(|| Node::Struct(BTreeMap::new()));
        if matches!(entry, Node::Leaf(v) if v.is_empty()) {
            *entry = Node::Struct(BTreeMap::new());
        }
        let Node::Struct(m) = entry else {
            return Err(conflict(key));
        };
        insert(m, rest, value, key)
    }
}

/// A structure of the request (the whole request, or a nested member) with typed
/// getters. `path` is how errors name members (`Actions.member.1.ForwardConfig`).
#[derive(Clone, Copy)]
pub struct Params<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();

impl<'a> Params<'a> {
    pub fn new(map: &'a Map<String, Value>) -> Self {
        Params { map, path: "" }
    }

    /// An empty structure (for absent optional structures).
    pub fn empty() -> Params<'static> {
        Params {
            map: EMPTY.get_or_init(Map::new),
            path: "",
        }
    }

    /// The full name of member `name` for messages.
    pub fn name(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// A string member; a structure or list where a string is expected is refused.
    pub fn str(&self, name: &str) -> Result<Option<&'a str>, QueryError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(QueryError::validation(format!(
                "Parameter '{}' must be a single value.",
                self.name(name)
            ))),
        }
    }

    /// A required, non-empty string member.
    pub fn req_str(&self, name: &str) -> Result<&'a str, QueryError> {
        match self.str(name)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(QueryError::validation(format!(
                "A value for '{}' is required: Member must not be null",
                self.name(name)
            ))),
        }
    }

    /// An integer member within `min..=max`.
    pub fn int(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, QueryError> {
        let Some(s) = self.str(name)? else {
            return Ok(None);
        };
        let n: i64 = s.trim().parse().map_err(|_| {
            QueryError::validation(format!(
                "Value '{s}' at '{}' is not a valid integer",
                self.name(name)
            ))
        })?;
        if n < min || n > max {
            return Err(QueryError::validation(format!(
                "Value '{n}' at '{}' failed to satisfy constraint: Member must be between {min} and {max}",
                self.name(name)
            )));
        }
        Ok(Some(n))
    }

    /// A boolean member (`true`/`false`, case-insensitive, as the query protocol sends).
    pub fn bool(&self, name: &str) -> Result<Option<bool>, QueryError> {
        match self.str(name)? {
            None => Ok(None),
            Some(s) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Some(s) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            Some(s) => Err(QueryError::validation(format!(
                "Value '{s}' at '{}' is not a valid boolean (true or false)",
                self.name(name)
            ))),
        }
    }

    fn list(&self, name: &str) -> Result<Option<&'a Vec<Value>>, QueryError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            // `Name=` is how the query serializer sends an empty list.
            Some(Value::String(s)) if s.is_empty() => {
                static NONE: Vec<Value> = Vec::new();
                Ok(Some(&NONE))
            }
            Some(_) => Err(QueryError::validation(format!(
                "Parameter '{}' must be a list ('{}.member.N').",
                self.name(name),
                self.name(name)
            ))),
        }
    }

    /// A list of strings (`Name.member.N`); `None` when absent.
    pub fn str_list(&self, name: &str) -> Result<Option<Vec<String>>, QueryError> {
        let Some(items) = self.list(name)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(QueryError::validation(format!(
                    "Parameter '{}.member.{}' must be a single value.",
                    self.name(name),
                    i + 1
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A list of structures (`Name.member.N.Field`); `None` when absent. Each item
    /// is named `Name.member.N` in errors.
    pub fn struct_list(&self, name: &str) -> Result<Option<Vec<Owned>>, QueryError> {
        let Some(items) = self.list(name)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Object(m) => Ok(Owned {
                    map: m.clone(),
                    path: format!("{}.member.{}", self.name(name), i + 1),
                }),
                _ => Err(QueryError::validation(format!(
                    "Parameter '{}.member.{}' must be a structure.",
                    self.name(name),
                    i + 1
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A nested structure (`Name.Field`); `None` when absent.
    pub fn sub(&self, name: &str) -> Result<Option<Owned>, QueryError> {
        match self.map.get(name) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Owned {
                map: m.clone(),
                path: self.name(name),
            })),
            Some(Value::String(s)) if s.is_empty() => Ok(Some(Owned {
                map: Map::new(),
                path: self.name(name),
            })),
            Some(_) => Err(QueryError::validation(format!(
                "Parameter '{}' must be a structure ('{}.Field').",
                self.name(name),
                self.name(name)
            ))),
        }
    }
}

/// A nested structure that owns its members (list items, sub-structures).
#[derive(Debug, Clone)]
pub struct Owned {
    map: Map<String, Value>,
    path: String,
}

impl Owned {
    pub fn params(&self) -> Params<'_> {
        Params {
            map: &self.map,
            path: &self.path,
        }
    }
    pub fn path(&self) -> &str {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn query_requests_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        assert!(is_query_request(&h));
        h.insert(
            "x-amz-target",
            HeaderValue::from_static("AmazonEC2ContainerServiceV20141113.ListClusters"),
        );
        assert!(!is_query_request(&h));
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-amz-json-1.1"),
        );
        assert!(!is_query_request(&h));
    }

    use serde_json::json;

    fn tree(body: &str) -> Map<String, Value> {
        to_tree(&decode_form(body.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn decodes_percent_and_plus() {
        let p = decode_form(
            b"Action=CreateTargetGroup&HealthCheckPath=%2Fhealth%3Fa%3Db&Name=a+b&Empty=&Flag",
        )
        .unwrap();
        assert_eq!(
            p,
            vec![
                ("Action".into(), "CreateTargetGroup".into()),
                ("HealthCheckPath".into(), "/health?a=b".into()),
                ("Name".into(), "a b".into()),
                ("Empty".into(), "".into()),
                ("Flag".into(), "".into()),
            ]
        );
        assert!(decode_form(b"A=%zz").is_err());
        assert!(decode_form(b"A=%2").is_err());
        assert!(decode_form(b"A=%ff").is_err(), "not UTF-8");
        assert_eq!(decode_form(b"A=%C3%A9").unwrap()[0].1, "é");
    }

    #[test]
    fn captured_create_rule_becomes_a_tree() {
        let body = "Action=CreateRule&Version=2015-12-01&ListenerArn=arn%3Al&Conditions.member.1.Field=path-pattern&Conditions.member.1.Values.member.1=%2Fauth%2F%2A&Conditions.member.2.Field=host-header&Conditions.member.2.Values.member.1=api.example.com&Priority=10&Actions.member.1.Type=forward&Actions.member.1.TargetGroupArn=arn%3Atg";
        assert_eq!(
            Value::Object(tree(body)),
            json!({
                "Action": "CreateRule", "Version": "2015-12-01", "ListenerArn": "arn:l",
                "Conditions": [
                    {"Field": "path-pattern", "Values": ["/auth/*"]},
                    {"Field": "host-header", "Values": ["api.example.com"]}
                ],
                "Priority": "10",
                "Actions": [{"Type": "forward", "TargetGroupArn": "arn:tg"}]
            })
        );
    }

    #[test]
    fn members_are_ordered_by_index_not_by_position() {
        let t = tree("Names.member.10=j&Names.member.2=b&Names.member.1=a&ForwardConfig.TargetGroups.member.2.Weight=5&ForwardConfig.TargetGroups.member.1.TargetGroupArn=x&Matcher.HttpCode=200");
        assert_eq!(t["Names"], json!(["a", "b", "j"]));
        assert_eq!(
            t["ForwardConfig"],
            json!({"TargetGroups": [{"TargetGroupArn": "x"}, {"Weight": "5"}]})
        );
        assert_eq!(t["Matcher"], json!({"HttpCode": "200"}));
    }

    #[test]
    fn empty_list_and_conflicts() {
        let t = tree("Names=&Attributes.member.1.Key=k&Attributes.member.1.Value=v");
        let p = Params::new(&t);
        assert_eq!(p.str_list("Names").unwrap(), Some(vec![]));
        let attrs = p.struct_list("Attributes").unwrap().unwrap();
        assert_eq!(attrs[0].params().req_str("Key").unwrap(), "k");
        assert_eq!(attrs[0].path(), "Attributes.member.1");
        assert!(to_tree(&decode_form(b"A=x&A.B=y").unwrap()).is_err());
        assert!(to_tree(&decode_form(b"A.member.x=1").unwrap()).is_err());
        assert!(to_tree(&decode_form(b"A.member.0=1").unwrap()).is_err());
        assert!(to_tree(&decode_form(b"A..B=1").unwrap()).is_err());
        // A list where a value is expected, and the reverse.
        let t = tree("Port.member.1=1&Names=x");
        let p = Params::new(&t);
        assert!(p.str("Port").is_err());
        assert!(p.str_list("Names").is_err());
    }

    #[test]
    fn typed_getters_name_the_member_and_value() {
        let t = tree("Port=70000&Interval=abc&Ok=5&Flag=TRUE&Bad=yes&Sub.Port=0");
        let p = Params::new(&t);
        let e = p.int("Port", 1, 65535).unwrap_err();
        assert_eq!(e.code, "ValidationError");
        assert!(
            e.message.contains("'70000'") && e.message.contains("'Port'"),
            "{}",
            e.message
        );
        let e = p.int("Interval", 5, 300).unwrap_err();
        assert!(e.message.contains("'abc'"), "{}", e.message);
        assert_eq!(p.int("Ok", 5, 300).unwrap(), Some(5));
        assert_eq!(p.int("Missing", 5, 300).unwrap(), None);
        assert_eq!(p.bool("Flag").unwrap(), Some(true));
        assert!(p.bool("Bad").unwrap_err().message.contains("'yes'"));
        let sub = p.sub("Sub").unwrap().unwrap();
        let e = sub.params().int("Port", 1, 65535).unwrap_err();
        assert!(e.message.contains("'Sub.Port'"), "{}", e.message);
        assert!(p.req_str("Name").unwrap_err().message.contains("'Name'"));
    }
}
