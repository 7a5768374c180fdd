//! The AWS Query protocol, outbound: XML documents rendered from the model's PascalCase serde (objects are child
//! elements, arrays are `<member>` lists, `null` is left out).
//!
//! Pure: no I/O.

use super::query::QueryError;
use serde_json::Value;

/// Appends `s` with XML's special characters escaped. Characters XML 1.0 cannot carry
/// at all (most C0 controls) become U+FFFD, so the document always parses.
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

/// Writes `<name>value</name>`: objects become child elements (in their key order),
/// arrays `<member>` elements (`<name/>` when empty), booleans `true`/`false`;
/// `null` writes nothing.
pub fn write_element(out: &mut String, name: &str, v: &Value) {
    match v {
        Value::Null => {}
        Value::Array(items) if items.is_empty() => {
            out.push('<');
            out.push_str(name);
            out.push_str("/>");
        }
        Value::Array(items) => {
            open(out, name);
            for item in items {
                write_element(out, "member", item);
            }
            close(out, name);
        }
        Value::Object(m) => {
            open(out, name);
            for (k, v) in m {
                write_element(out, k, v);
            }
            close(out, name);
        }
        Value::String(s) => {
            open(out, name);
            escape_into(out, s);
            close(out, name);
        }
        Value::Bool(b) => {
            open(out, name);
            out.push_str(if *b { "true" } else { "false" });
            close(out, name);
        }
        Value::Number(n) => {
            open(out, name);
            out.push_str(&n.to_string());
            close(out, name);
        }
    }
}

fn open(out: &mut String, name: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
}

fn close(out: &mut String, name: &str) {
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// `<{op}Response xmlns=…><{op}Result>…</{op}Result><ResponseMetadata><RequestId>…`.
/// `result` is an object whose members become the result's elements.
pub fn success(xmlns: &str, op: &str, result: &Value, request_id: &str) -> String {
    let mut out = String::with_capacity(512);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!("<{op}Response xmlns=\"{xmlns}\">"));
    match result {
        Value::Object(m) if m.is_empty() => out.push_str(&format!("<{op}Result/>")),
        Value::Object(_) => write_element(&mut out, &format!("{op}Result"), result),
        _ => out.push_str(&format!("<{op}Result/>")),
    }
    out.push_str("<ResponseMetadata><RequestId>");
    escape_into(&mut out, request_id);
    out.push_str("</RequestId></ResponseMetadata>");
    out.push_str(&format!("</{op}Response>"));
    out
}

/// `<ErrorResponse xmlns=…><Error><Type>Sender</Type><Code>…</Code><Message>…</Message></Error><RequestId>…</RequestId></ErrorResponse>`
pub fn error(xmlns: &str, e: &QueryError, request_id: &str) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!("<ErrorResponse xmlns=\"{xmlns}\"><Error><Type>"));
    out.push_str(e.fault_type());
    out.push_str("</Type><Code>");
    escape_into(&mut out, &e.code);
    out.push_str("</Code><Message>");
    escape_into(&mut out, &e.message);
    out.push_str("</Message></Error><RequestId>");
    escape_into(&mut out, request_id);
    out.push_str("</RequestId></ErrorResponse>");
    out
}

/// Epoch seconds → ISO 8601 with milliseconds, UTC (`2026-11-21T09:38:59.123Z`).
pub fn iso8601(epoch: f64) -> String {
    let ms_total = (epoch * 1000.0).round() as i64;
    let secs = ms_total.div_euclid(1000);
    let ms = ms_total.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_model::{ApiError, ErrorKind};
    use serde_json::json;

    const XMLNS: &str = crate::elbv2::XMLNS;

    #[test]
    fn renders_lists_objects_and_scalars() {
        let v = json!({
            "TargetGroups": [{
                "TargetGroupName": "a&b<c>",
                "Port": 80,
                "HealthCheckEnabled": true,
                "Matcher": {"HttpCode": "200"},
                "LoadBalancerArns": [],
                "VpcId": null
            }]
        });
        let xml = success(XMLNS, "CreateTargetGroup", &v, "rid-1");
        assert!(xml.starts_with("<?xml"));
        assert!(xml.contains(&format!("<CreateTargetGroupResponse xmlns=\"{XMLNS}\"><CreateTargetGroupResult><TargetGroups><member>")));
        assert!(xml.contains("<TargetGroupName>a&amp;b&lt;c&gt;</TargetGroupName>"));
        assert!(xml.contains("<Port>80</Port>"));
        assert!(xml.contains("<HealthCheckEnabled>true</HealthCheckEnabled>"));
        assert!(xml.contains("<Matcher><HttpCode>200</HttpCode></Matcher>"));
        assert!(xml.contains("<LoadBalancerArns/>"));
        assert!(!xml.contains("VpcId"));
        assert!(xml.ends_with("</member></TargetGroups></CreateTargetGroupResult><ResponseMetadata><RequestId>rid-1</RequestId></ResponseMetadata></CreateTargetGroupResponse>"));
    }

    #[test]
    fn empty_result() {
        let xml = success(XMLNS, "DeleteRule", &json!({}), "r");
        assert!(xml.contains("<DeleteRuleResponse xmlns=\"http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/\"><DeleteRuleResult/><ResponseMetadata>"));
    }

    #[test]
    fn error_document() {
        let e = QueryError::kind(
            ErrorKind::TargetGroupNotFound,
            "One or more target groups not found",
        );
        assert_eq!(e.status, 400);
        assert_eq!(
            error(XMLNS, &e, "r-3"),
            format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>Sender</Type><Code>TargetGroupNotFound</Code><Message>One or more target groups not found</Message></Error><RequestId>r-3</RequestId></ErrorResponse>")
        );
        let s = QueryError::from(ApiError::server("boom"));
        assert_eq!(
            (s.code.as_ref(), s.status, s.fault_type()),
            ("InternalFailure", 500, "Receiver")
        );
        let a = QueryError::from(ApiError::new(ErrorKind::InvalidSignatureException, "bad"));
        assert_eq!((a.code.as_ref(), a.status), ("SignatureDoesNotMatch", 403));
    }

    #[test]
    fn escapes_control_characters() {
        assert_eq!(escape("a\u{1}b\tc'\""), "a\u{FFFD}b&#9;c&apos;&quot;");
    }

    #[test]
    fn timestamps() {
        assert_eq!(iso8601(0.0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_795_253_939.123), "2026-11-21T09:38:59.123Z");
        assert_eq!(iso8601(951_782_400.5), "2000-02-29T00:00:00.500Z");
    }
}
