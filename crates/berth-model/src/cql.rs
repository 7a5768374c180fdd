//! The cluster query language (reference §8.4): `memberOf` placement constraints and
//! `ListContainerInstances.filter`.
//!
//! ```text
//! expr      := or
//! or        := and { ("||" | "or") and }
//! and       := unary { ("&&" | "and") unary }
//! unary     := ("!" | "not") unary | "(" expr ")" | predicate
//! predicate := subject ( "exists" | "!exists" | "not_exists" | "not exists"
//!                      | binop value | ("in" | "!in" | "not_in" | "not in") list )
//! list      := "[" value { "," value } "]" | "(" value { "," value } ")"
//! ```
//!
//! Precedence is NOT > AND > OR. `=~` is a regular expression matched against the whole
//! value (Java's `matches`), so `t2.*` matches `t2.small`.

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;

/// A parse error: what was wrong and where (0-based character offset into the expression).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CqlError {
    pub position: usize,
    pub message: String,
}

impl fmt::Display for CqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at position {})", self.message, self.position)
    }
}

impl std::error::Error for CqlError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    AgentConnected,
    AgentVersion,
    Ec2InstanceId,
    RegisteredAt,
    RunningTasksCount,
    TaskGroup,
    Attribute(String),
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::AgentConnected => f.write_str("agentConnected"),
            Subject::AgentVersion => f.write_str("agentVersion"),
            Subject::Ec2InstanceId => f.write_str("ec2InstanceId"),
            Subject::RegisteredAt => f.write_str("registeredAt"),
            Subject::RunningTasksCount => f.write_str("runningTasksCount"),
            Subject::TaskGroup => f.write_str("task:group"),
            Subject::Attribute(n) => write!(f, "attribute:{n}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Exists,
    NotExists,
    In,
    NotIn,
    Matches,
    NotMatches,
}

impl Op {
    fn word(w: &str) -> Option<Op> {
        Some(match w {
            "==" | "equals" => Op::Eq,
            "!=" | "not_equals" => Op::Ne,
            ">" | "greater_than" => Op::Gt,
            ">=" | "greater_than_equal" => Op::Ge,
            "<" | "less_than" => Op::Lt,
            "<=" | "less_than_equal" => Op::Le,
            "exists" => Op::Exists,
            "!exists" | "not_exists" => Op::NotExists,
            "in" => Op::In,
            "!in" | "not_in" => Op::NotIn,
            "=~" | "matches" => Op::Matches,
            "!~" | "not_matches" => Op::NotMatches,
            _ => return None,
        })
    }

    fn is_ordering(self) -> bool {
        matches!(self, Op::Gt | Op::Ge | Op::Lt | Op::Le)
    }

    fn name(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Exists => "exists",
            Op::NotExists => "!exists",
            Op::In => "in",
            Op::NotIn => "!in",
            Op::Matches => "=~",
            Op::NotMatches => "!~",
        }
    }
}

/// A compiled argument: the literal, plus its parsed forms where the subject needs them.
#[derive(Debug, Clone)]
pub struct Arg {
    pub text: String,
    /// For `=~`/`!~`: the anchored pattern.
    regex: Option<Regex>,
    /// For `registeredAt`: epoch seconds; for `runningTasksCount`: the count.
    number: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Predicate {
    pub subject: Subject,
    pub op: Op,
    pub args: Vec<Arg>,
}

#[derive(Debug, Clone)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Pred(Predicate),
}

/// What an expression is evaluated against: one container instance.
#[derive(Debug, Clone, Default)]
pub struct InstanceView {
    /// Attribute name → value (`None` for an attribute without a value).
    pub attributes: BTreeMap<String, Option<String>>,
    pub instance_id: String,
    /// Epoch seconds.
    pub registered_at: f64,
    pub running_tasks_count: i64,
    /// Groups of the tasks on the instance that are meant to run.
    pub task_groups: Vec<String>,
    pub agent_connected: bool,
    pub agent_version: Option<String>,
}

// ---------------------------------------------------------------- lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Word(String),
    Quoted(String),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::LParen => f.write_str("'('"),
            Tok::RParen => f.write_str("')'"),
            Tok::LBracket => f.write_str("'['"),
            Tok::RBracket => f.write_str("']'"),
            Tok::Comma => f.write_str("','"),
            Tok::Word(w) => write!(f, "'{w}'"),
            Tok::Quoted(q) => write!(f, "quoted value '{q}'"),
        }
    }
}

fn lex(s: &str) -> Result<Vec<(usize, Tok)>, CqlError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        match c {
            c if c.is_whitespace() => {
                i += 1;
            }
            '(' | ')' | '[' | ']' | ',' => {
                out.push((
                    start,
                    match c {
                        '(' => Tok::LParen,
                        ')' => Tok::RParen,
                        '[' => Tok::LBracket,
                        ']' => Tok::RBracket,
                        _ => Tok::Comma,
                    },
                ));
                i += 1;
            }
            '\'' | '"' => {
                let q = c;
                i += 1;
                let mut v = String::new();
                while i < chars.len() && chars[i] != q {
                    v.push(chars[i]);
                    i += 1;
                }
                if i >= chars.len() {
                    return Err(CqlError {
                        position: start,
                        message: format!("unterminated quoted value starting with {q}"),
                    });
                }
                i += 1;
                out.push((start, Tok::Quoted(v)));
            }
            _ => {
                let mut w = String::new();
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !matches!(chars[i], '(' | ')' | '[' | ']' | ',' | '\'' | '"')
                {
                    w.push(chars[i]);
                    i += 1;
                }
                out.push((start, Tok::Word(w)));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- parser

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    len: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn peek_word(&self) -> Option<&str> {
        match self.peek() {
            Some(Tok::Word(w)) => Some(w.as_str()),
            _ => None,
        }
    }

    fn at(&self) -> usize {
        self.toks.get(self.pos).map(|(p, _)| *p).unwrap_or(self.len)
    }

    fn next(&mut self) -> Option<(usize, Tok)> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn error(&self, message: impl Into<String>) -> CqlError {
        CqlError {
            position: self.at(),
            message: message.into(),
        }
    }

    fn unexpected(&self, expected: &str) -> CqlError {
        match self.peek() {
            Some(t) => self.error(format!("unexpected {t}; expected {expected}")),
            None => self.error(format!("unexpected end of expression; expected {expected}")),
        }
    }

    fn or(&mut self) -> Result<Expr, CqlError> {
        let mut left = self.and()?;
        while matches!(self.peek_word(), Some("||" | "or")) {
            self.pos += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, CqlError> {
        let mut left = self.unary()?;
        while matches!(self.peek_word(), Some("&&" | "and")) {
            self.pos += 1;
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, CqlError> {
        match self.peek() {
            Some(Tok::Word(w)) if w == "!" || w == "not" => {
                self.pos += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                let e = self.or()?;
                match self.peek() {
                    Some(Tok::RParen) => {
                        self.pos += 1;
                        Ok(e)
                    }
                    _ => Err(self.unexpected("')'")),
                }
            }
            Some(Tok::Word(_)) => self.predicate(),
            _ => Err(self.unexpected("a subject (attribute:<name>, ec2InstanceId, registeredAt, runningTasksCount, task:group, agentConnected, agentVersion), 'not' or '('")),
        }
    }

    fn subject(&mut self) -> Result<Subject, CqlError> {
        let at = self.at();
        let Some((_, Tok::Word(w))) = self.next() else {
            return Err(CqlError {
                position: at,
                message: "expected a subject".into(),
            });
        };
        Ok(match w.as_str() {
            "agentConnected" => Subject::AgentConnected,
            "agentVersion" => Subject::AgentVersion,
            "ec2InstanceId" => Subject::Ec2InstanceId,
            "registeredAt" => Subject::RegisteredAt,
            "runningTasksCount" => Subject::RunningTasksCount,
            "task:group" => Subject::TaskGroup,
            other => match other.strip_prefix("attribute:") {
                Some(name) if valid_attribute_name(name) => Subject::Attribute(name.to_string()),
                Some(name) => {
                    return Err(CqlError {
                        position: at,
                        message: format!(
                            "invalid attribute name '{name}': use 1-128 letters, digits, '-', '_', '/', '\\' or '.'"
                        ),
                    })
                }
                None => {
                    return Err(CqlError {
                        position: at,
                        message: format!(
                            "unknown subject '{other}'; expected attribute:<name>, ec2InstanceId, registeredAt, runningTasksCount, task:group, agentConnected or agentVersion"
                        ),
                    })
                }
            },
        })
    }

    fn value(&mut self) -> Result<(usize, String), CqlError> {
        let at = self.at();
        match self.peek() {
            Some(Tok::Word(w)) if !is_keyword(w) => {
                let w = w.clone();
                self.pos += 1;
                Ok((at, w))
            }
            Some(Tok::Quoted(q)) => {
                let q = q.clone();
                self.pos += 1;
                Ok((at, q))
            }
            _ => Err(self.unexpected("a value")),
        }
    }

    fn list(&mut self) -> Result<Vec<(usize, String)>, CqlError> {
        let close = match self.peek() {
            Some(Tok::LBracket) => Tok::RBracket,
            Some(Tok::LParen) => Tok::RParen,
            _ => return Err(self.unexpected("a list such as [a, b]")),
        };
        self.pos += 1;
        let mut items = vec![self.value()?];
        loop {
            match self.peek() {
                Some(Tok::Comma) => {
                    self.pos += 1;
                    items.push(self.value()?);
                }
                Some(t) if *t == close => {
                    self.pos += 1;
                    return Ok(items);
                }
                _ => return Err(self.unexpected(&format!("',' or {close}"))),
            }
        }
    }

    fn predicate(&mut self) -> Result<Expr, CqlError> {
        let subject = self.subject()?;
        let op_at = self.at();
        let op = match self.next() {
            Some((_, Tok::Word(w))) if w == "not" || w == "!" => match self.next() {
                Some((_, Tok::Word(w2))) if w2 == "in" => Op::NotIn,
                Some((_, Tok::Word(w2))) if w2 == "exists" => Op::NotExists,
                _ => {
                    return Err(CqlError {
                        position: op_at,
                        message: format!("expected 'not in' or 'not exists' after {subject}"),
                    })
                }
            },
            Some((_, Tok::Word(w))) => match Op::word(&w) {
                Some(op) => op,
                None => {
                    return Err(CqlError {
                        position: op_at,
                        message: format!(
                            "unknown operator '{w}' after {subject}; expected one of ==, !=, >, >=, <, <=, exists, !exists, in, !in, =~, !~"
                        ),
                    })
                }
            },
            Some((_, t)) => {
                return Err(CqlError {
                    position: op_at,
                    message: format!("unexpected {t} after {subject}; expected an operator"),
                })
            }
            None => {
                return Err(CqlError {
                    position: op_at,
                    message: format!("expression ends after {subject}; expected an operator"),
                })
            }
        };
        check_operator(&subject, op, op_at)?;
        let raw = match op {
            Op::Exists | Op::NotExists => vec![],
            Op::In | Op::NotIn => self.list()?,
            _ => vec![self.value()?],
        };
        let mut args = Vec::with_capacity(raw.len());
        for (at, text) in raw {
            args.push(compile_arg(&subject, op, at, text)?);
        }
        Ok(Expr::Pred(Predicate { subject, op, args }))
    }
}

fn is_keyword(w: &str) -> bool {
    matches!(w, "and" | "or" | "&&" | "||")
}

fn valid_attribute_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/' | '\\' | '.'))
}

fn check_operator(subject: &Subject, op: Op, at: usize) -> Result<(), CqlError> {
    let ok = match subject {
        Subject::Attribute(_) => true,
        Subject::AgentConnected | Subject::Ec2InstanceId | Subject::TaskGroup => matches!(
            op,
            Op::Eq | Op::Ne | Op::In | Op::NotIn | Op::Matches | Op::NotMatches
        ),
        Subject::AgentVersion | Subject::RegisteredAt | Subject::RunningTasksCount => {
            matches!(op, Op::Eq | Op::Ne) || op.is_ordering()
        }
    };
    if ok {
        Ok(())
    } else {
        Err(CqlError {
            position: at,
            message: format!("operator '{}' cannot be used with {subject}", op.name()),
        })
    }
}

fn compile_arg(subject: &Subject, op: Op, at: usize, text: String) -> Result<Arg, CqlError> {
    let mut arg = Arg {
        text,
        regex: None,
        number: None,
    };
    if matches!(op, Op::Matches | Op::NotMatches) {
        let re = Regex::new(&format!("^(?:{})$", arg.text)).map_err(|e| CqlError {
            position: at,
            message: format!("invalid pattern '{}': {e}", arg.text),
        })?;
        arg.regex = Some(re);
    }
    match subject {
        Subject::RegisteredAt => {
            arg.number = Some(parse_date(&arg.text).ok_or_else(|| CqlError {
                position: at,
                message: format!(
                    "invalid date '{}'; use 2018-06-18, 2018-06-18T22:28:28, 2018-06-18T22:28:28Z or 2018-06-18T22:28:28+00:00",
                    arg.text
                ),
            })?);
        }
        Subject::RunningTasksCount => {
            let n: i64 = arg.text.parse().map_err(|_| CqlError {
                position: at,
                message: format!("runningTasksCount needs a whole number, not '{}'", arg.text),
            })?;
            arg.number = Some(n as f64);
        }
        Subject::AgentConnected
            if !matches!(op, Op::Matches | Op::NotMatches)
                && arg.text != "true"
                && arg.text != "false" =>
        {
            return Err(CqlError {
                position: at,
                message: format!("agentConnected is true or false, not '{}'", arg.text),
            });
        }
        _ => {}
    }
    Ok(arg)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// `2018-06-18`, `2018-06-18T22:28:28`, `…Z`, `…+00:00` (any offset) → epoch seconds.
pub fn parse_date(s: &str) -> Option<f64> {
    let num = |t: &str, n: usize| -> Option<i64> {
        (t.len() == n && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut dp = date.split('-');
    let (y, m, d) = (
        num(dp.next()?, 4)?,
        num(dp.next()?, 2)?,
        num(dp.next()?, 2)?,
    );
    if dp.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut secs = days_from_civil(y, m, d) * 86400;
    if let Some(t) = time {
        let (clock, offset) = if let Some(c) = t.strip_suffix('Z') {
            (c, 0)
        } else if t.len() > 8 {
            let (c, off) = t.split_at(8);
            let sign = match off.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            let (oh, om) = off[1..].split_once(':')?;
            (c, sign * (num(oh, 2)? * 3600 + num(om, 2)? * 60))
        } else {
            (t, 0)
        };
        let mut cp = clock.split(':');
        let (h, mi, se) = (
            num(cp.next()?, 2)?,
            num(cp.next()?, 2)?,
            num(cp.next()?, 2)?,
        );
        if cp.next().is_some() || h > 23 || mi > 59 || se > 60 {
            return None;
        }
        secs += h * 3600 + mi * 60 + se - offset;
    }
    Some(secs as f64)
}

/// Parses an expression (≤2000 characters, as ECS allows).
pub fn parse(s: &str) -> Result<Expr, CqlError> {
    if s.chars().count() > 2000 {
        return Err(CqlError {
            position: 2000,
            message: "expression is longer than 2000 characters".into(),
        });
    }
    let toks = lex(s)?;
    if toks.is_empty() {
        return Err(CqlError {
            position: 0,
            message: "empty expression".into(),
        });
    }
    let mut p = Parser {
        toks,
        pos: 0,
        len: s.chars().count(),
    };
    let e = p.or()?;
    if p.pos < p.toks.len() {
        return Err(p.unexpected("'and', 'or' or the end of the expression"));
    }
    Ok(e)
}

// ---------------------------------------------------------------- evaluation

fn compare_values(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
        _ => a.cmp(b),
    }
}

fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| -> Vec<u64> {
        s.trim_start_matches('v')
            .split(['.', '-', '+'])
            .map(|p| p.parse().unwrap_or(0))
            .collect()
    };
    let (pa, pb) = (parts(a), parts(b));
    for i in 0..pa.len().max(pb.len()) {
        let o = pa.get(i).unwrap_or(&0).cmp(pb.get(i).unwrap_or(&0));
        if o != std::cmp::Ordering::Equal {
            return o;
        }
    }
    std::cmp::Ordering::Equal
}

fn ordering_holds(op: Op, o: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        Op::Eq => o == Equal,
        Op::Ne => o != Equal,
        Op::Gt => o == Greater,
        Op::Ge => o != Less,
        Op::Lt => o == Less,
        Op::Le => o != Greater,
        _ => false,
    }
}

impl Predicate {
    /// The positive form of a string test on one value.
    fn test_str(&self, op: Op, value: &str, cmp: fn(&str, &str) -> std::cmp::Ordering) -> bool {
        match op {
            Op::Eq | Op::Gt | Op::Ge | Op::Lt | Op::Le => {
                ordering_holds(op, cmp(value, &self.args[0].text))
            }
            Op::In => self.args.iter().any(|a| a.text == value),
            Op::Matches => self.args[0]
                .regex
                .as_ref()
                .is_some_and(|r| r.is_match(value)),
            _ => false,
        }
    }

    fn eval(&self, v: &InstanceView) -> bool {
        // Negative operators are the negation of their positive form, so a missing value
        // makes ==/in/=~ false and !=/!in/!~ true.
        let (positive, negate) = match self.op {
            Op::Ne => (Op::Eq, true),
            Op::NotIn => (Op::In, true),
            Op::NotMatches => (Op::Matches, true),
            Op::NotExists => (Op::Exists, true),
            op => (op, false),
        };
        let r = match &self.subject {
            Subject::Attribute(name) => match v.attributes.get(name) {
                None => false,
                Some(_) if positive == Op::Exists => true,
                Some(None) => false,
                Some(Some(val)) => self.test_str(positive, val, compare_values),
            },
            Subject::Ec2InstanceId => self.test_str(positive, &v.instance_id, str::cmp),
            Subject::AgentConnected => self.test_str(
                positive,
                if v.agent_connected { "true" } else { "false" },
                str::cmp,
            ),
            Subject::AgentVersion => match &v.agent_version {
                None => false,
                Some(ver) => self.test_str(positive, ver, compare_versions),
            },
            Subject::TaskGroup => v
                .task_groups
                .iter()
                .any(|g| self.test_str(positive, g, str::cmp)),
            Subject::RegisteredAt => {
                let x = self.args[0].number.unwrap_or(0.0);
                ordering_holds(
                    positive,
                    v.registered_at
                        .partial_cmp(&x)
                        .unwrap_or(std::cmp::Ordering::Equal),
                )
            }
            Subject::RunningTasksCount => {
                let x = self.args[0].number.unwrap_or(0.0) as i64;
                ordering_holds(positive, v.running_tasks_count.cmp(&x))
            }
        };
        r != negate
    }
}

impl Expr {
    pub fn eval(&self, v: &InstanceView) -> bool {
        match self {
            Expr::And(a, b) => a.eval(v) && b.eval(v),
            Expr::Or(a, b) => a.eval(v) || b.eval(v),
            Expr::Not(e) => !e.eval(v),
            Expr::Pred(p) => p.eval(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> InstanceView {
        let mut attributes = BTreeMap::new();
        for (k, v) in [
            ("ecs.instance-type", Some("t2.small")),
            ("ecs.availability-zone", Some("us-east-1a")),
            ("stack", Some("prod")),
            ("disk", Some("100")),
            ("ecs.capability.flag", None),
        ] {
            attributes.insert(k.to_string(), v.map(str::to_string));
        }
        InstanceView {
            attributes,
            instance_id: "i-abcd1234".into(),
            registered_at: parse_date("2018-06-18T22:28:28Z").unwrap(),
            running_tasks_count: 1,
            task_groups: vec!["service:production".into(), "family:web".into()],
            agent_connected: true,
            agent_version: Some("1.14.5".into()),
        }
    }

    fn eval(s: &str) -> bool {
        parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .eval(&view())
    }

    #[test]
    fn documented_examples_parse_and_evaluate() {
        let cases = [
            ("attribute:ecs.instance-type == t2.small", true),
            ("attribute:ecs.availability-zone in [us-east-1a, us-east-1b]", true),
            (
                "attribute:ecs.instance-type =~ g2.* and attribute:ecs.availability-zone != us-east-1d",
                false,
            ),
            ("task:group == service:production", true),
            ("not(task:group == database)", true),
            ("runningTasksCount == 1", true),
            ("agentVersion < 1.14.5", false),
            ("agentVersion >= 1.14.5", true),
            ("registeredAt < 2018-02-13", false),
            ("registeredAt > 2018-02-13", true),
            ("ec2InstanceId in ['i-abcd1234', 'i-wxyx7890']", true),
            ("attribute:stack == prod", true),
            ("attribute:stack != prod", false),
            ("attribute:ecs.instance-type in [t2.small, t2.medium]", true),
            (
                "attribute:ecs.instance-type =~ t2.* and attribute:ecs.availability-zone == us-east-1a",
                true,
            ),
            ("attribute:ecs.gpu exists", false),
            ("attribute:ecs.capability.flag exists", true),
            ("attribute:ecs.gpu !exists", true),
            ("attribute:ecs.gpu not_exists", true),
        ];
        for (s, want) in cases {
            assert_eq!(eval(s), want, "{s}");
        }
    }

    #[test]
    fn every_operator_and_word_form() {
        let cases = [
            ("attribute:disk > 99", true),
            ("attribute:disk >= 100", true),
            ("attribute:disk < 100", false),
            ("attribute:disk <= 100", true),
            ("attribute:disk greater_than 20", true), // numeric, not lexical
            ("attribute:disk less_than_equal 99", false),
            ("attribute:stack equals prod", true),
            ("attribute:stack not_equals prod", false),
            ("attribute:stack matches pr.*", true),
            ("attribute:stack !~ pr.*", false),
            ("attribute:stack not_matches dev", true),
            ("attribute:stack !in [dev, test]", true),
            ("attribute:stack not_in [prod]", false),
            ("attribute:stack not in (dev, test)", true),
            ("attribute:stack in (prod)", true),
            ("attribute:stack not exists", false),
            ("ec2InstanceId == i-abcd1234", true),
            ("ec2InstanceId =~ 'i-.*'", true),
            ("ec2InstanceId != \"i-abcd1234\"", false),
            ("agentConnected == true", true),
            ("agentConnected != true", false),
            ("runningTasksCount > 0", true),
            ("runningTasksCount <= 0", false),
            ("registeredAt == 2018-06-18T22:28:28+00:00", true),
            ("registeredAt == 2018-06-19T00:28:28+02:00", true),
            ("registeredAt >= 2018-06-18T22:28:28", true),
            ("registeredAt < 2018-06-19", true),
            ("task:group != database", true),
            ("task:group != family:web", false),
            ("task:group in [x, family:web]", true),
            ("task:group =~ service:.*", true),
            ("task:group !in [family:web]", false),
            // a missing attribute: positives false, negatives true
            ("attribute:nope == x", false),
            ("attribute:nope != x", true),
            ("attribute:nope in [x]", false),
            ("attribute:nope !in [x]", true),
            ("attribute:nope =~ .*", false),
            ("attribute:nope !~ .*", true),
        ];
        for (s, want) in cases {
            assert_eq!(eval(s), want, "{s}");
        }
    }

    #[test]
    fn boolean_structure_and_precedence() {
        let cases = [
            ("attribute:stack == dev or attribute:stack == prod", true),
            ("attribute:stack == dev || attribute:stack == prod", true),
            ("attribute:stack == prod && runningTasksCount == 2", false),
            // AND binds tighter than OR
            (
                "attribute:stack == prod or runningTasksCount == 2 and attribute:stack == dev",
                true,
            ),
            (
                "(attribute:stack == prod or runningTasksCount == 2) and attribute:stack == dev",
                false,
            ),
            ("!(attribute:stack == prod)", false),
            ("! attribute:stack == dev", true),
            ("not not attribute:stack == prod", true),
            (
                "not (task:group == family:web) and attribute:stack == prod",
                false,
            ),
            ("((attribute:stack == prod))", true),
        ];
        for (s, want) in cases {
            assert_eq!(eval(s), want, "{s}");
        }
    }

    fn bad(s: &str) -> CqlError {
        match parse(s) {
            Ok(e) => panic!("{s} parsed as {e:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn bad_expressions_name_the_problem_and_position() {
        let e = bad("");
        assert!(e.message.contains("empty"), "{e}");
        let e = bad("foo == bar");
        assert_eq!(e.position, 0);
        assert!(e.message.contains("unknown subject 'foo'"), "{e}");
        let e = bad("attribute:stack === prod");
        assert_eq!(e.position, 16);
        assert!(e.message.contains("unknown operator '==='"), "{e}");
        let e = bad("attribute:stack ==");
        assert!(e.message.contains("end of expression"), "{e}");
        let e = bad("attribute:stack == prod and");
        assert!(e.message.contains("end of expression"), "{e}");
        let e = bad("(attribute:stack == prod");
        assert!(e.message.contains("')'"), "{e}");
        let e = bad("attribute:stack == prod)");
        assert_eq!(e.position, 23);
        let e = bad("attribute:stack in [a, b");
        assert!(e.message.contains("','"), "{e}");
        let e = bad("attribute:stack in a");
        assert!(e.message.contains("list"), "{e}");
        let e = bad("attribute:stack == 'prod");
        assert!(e.message.contains("unterminated"), "{e}");
        let e = bad("attribute:stack =~ 't2.('");
        assert!(e.message.contains("invalid pattern"), "{e}");
        let e = bad("registeredAt < yesterday");
        assert!(e.message.contains("invalid date 'yesterday'"), "{e}");
        let e = bad("runningTasksCount > many");
        assert!(e.message.contains("whole number"), "{e}");
        let e = bad("registeredAt exists");
        assert!(
            e.message.contains("cannot be used with registeredAt"),
            "{e}"
        );
        let e = bad("ec2InstanceId > 3");
        assert!(e.message.contains("cannot be used"), "{e}");
        let e = bad("attribute: == x");
        assert!(e.message.contains("invalid attribute name"), "{e}");
        let e = bad("attribute:stack == prod attribute:x == y");
        assert!(e.message.contains("'and', 'or'"), "{e}");
        let e = bad("agentConnected == maybe");
        assert!(e.message.contains("true or false"), "{e}");
        let e = bad(&format!("attribute:a == {}", "x".repeat(2000)));
        assert!(e.message.contains("2000"), "{e}");
        // Display carries the position
        assert!(bad("foo").to_string().contains("position 0"));
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-01"), Some(0.0));
        assert_eq!(parse_date("2018-02-13"), Some(1518480000.0));
        assert_eq!(parse_date("2018-06-18T22:28:28Z"), Some(1529360908.0));
        assert_eq!(parse_date("2018-06-18T22:28:28-01:00"), Some(1529364508.0));
        assert_eq!(parse_date("2018-13-01"), None);
        assert_eq!(parse_date("2018-06-18T25:00:00"), None);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "[ -~]{0,60}") {
            let _ = parse(&s);
        }

        #[test]
        fn in_list_agrees_with_or_of_equals(vals in proptest::collection::vec(
            // Values, not the language's words (`or`, `in`, …), which the parser takes
            // as operators in this unquoted position.
            proptest::strategy::Strategy::prop_filter("[a-z0-9]{1,5}", "a keyword", |v: &String| {
                !matches!(v.as_str(), "and" | "or" | "not" | "in" | "exists" | "like" | "not_in")
            }),
            1..5,
        )) {
            let list = format!("attribute:stack in [{}]", vals.join(", "));
            let ors = vals.iter().map(|v| format!("attribute:stack == {v}")).collect::<Vec<_>>().join(" or ");
            proptest::prop_assert_eq!(parse(&list).unwrap().eval(&view()), parse(&ors).unwrap().eval(&view()));
        }
    }
}
