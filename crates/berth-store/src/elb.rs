//! ELBv2 state: load balancers, listeners, rules, target groups and targets, and the
//! ECS wiring that registers a service's tasks as targets and drains them when they stop.
//!
//! The API layer checks syntax and value ranges and fills defaults; `apply` here checks
//! everything that depends on state (names, ports, priorities, references, limits) and
//! either writes the whole command or nothing.
//!
//! Keys (all under `elb\0`):
//! * `elb\0lb\0{arn}` → [`LoadBalancerRecord`] (records from before attributes are a bare
//!   `LoadBalancer`; their attributes read as ALB's defaults)
//! * `elb\0tg\0{arn}` → [`TargetGroupRecord`] (`LoadBalancerArns` is derived on read)
//! * `elb\0ls\0{arn}` → [`Listener`]
//! * `elb\0ru\0{arn}` → [`RuleRecord`] (every listener has one default rule)
//! * `elb\0tt\0{tg arn}\0{id}\0{port u16 be}` → [`TargetRecord`]
//! * `elb\0tk\0{cluster}\0{task id}\0{target key}` → [`TargetKey`]: a task's targets
//! * `elb\0dr\0{until ms u64 be}{what}` → [`DrainEntry`]: draining targets and tasks by
//!   deadline, so the sweep and [`next_drain_deadline`] never scan everything.
//! * `elb\0nd\0{node}` → [`LbNodeRecord`]: the load balancer nodes that reported lately
//!   (`ElbDrainReport`), whose word ends a drain before its deadline.

use std::collections::{BTreeMap, BTreeSet};

use berth_model::elb::{
    merge_attributes, Action, Attribute as ElbAttribute, DrainIdle, Listener, LoadBalancer,
    LoadBalancerRecord, Rule, RuleCondition, RuleRecord, TargetDescription, TargetGroupPatch,
    TargetGroupRecord, TargetHealth, TargetHealthUpdate, TargetRecord, TargetTask,
};
use berth_model::{ApiError, ErrorKind, Tag, TaskRecord};
use serde::{Deserialize, Serialize};

use crate::command::{err, Change, Command, Response};
use crate::keys;
use crate::kv::{KvRead, Staged, StoreError};

/// At most this many rules (besides the default one) per listener.
pub const MAX_RULES_PER_LISTENER: usize = 100;
/// At most this many targets per target group.
pub const MAX_TARGETS_PER_GROUP: usize = 1000;
/// At most this many tags per resource.
pub const MAX_TAGS: usize = 50;

const LB: &[u8] = b"elb\0lb\0";
const TG: &[u8] = b"elb\0tg\0";
const LISTENER: &[u8] = b"elb\0ls\0";
const RULE: &[u8] = b"elb\0ru\0";
const TARGET: &[u8] = b"elb\0tt\0";
const TASK_TARGET: &[u8] = b"elb\0tk\0";
const DRAIN: &[u8] = b"elb\0dr\0";
const LB_NODE: &[u8] = b"elb\0nd\0";

/// Load balancer nodes send an `ElbDrainReport` at least this often while they serve
/// listeners, and at once when a draining target goes idle.
pub const LB_NODE_REPORT_SECS: u64 = 20;
/// A node whose last report is older than this no longer counts: a drain ends early
/// without its word (it stopped serving, or died with its requests).
pub const LB_NODE_TTL_SECS: f64 = 75.0;
/// Records of nodes silent this long are deleted.
const LB_NODE_FORGET_SECS: f64 = 3600.0;

fn key(prefix: &[u8], arn: &str) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(arn.as_bytes());
    k
}

fn target_group_prefix(tg: &str) -> Vec<u8> {
    let mut k = key(TARGET, tg);
    k.push(0);
    k
}

/// `{tg}\0{id}\0{port}`: the identity of a target inside its keys.
fn target_suffix(tg: &str, id: &str, port: u16) -> Vec<u8> {
    let mut k = tg.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k.extend_from_slice(&port.to_be_bytes());
    k
}

fn target_key(tg: &str, id: &str, port: u16) -> Vec<u8> {
    let mut k = TARGET.to_vec();
    k.extend_from_slice(&target_suffix(tg, id, port));
    k
}

fn task_targets_prefix(cluster: &str, task_id: &str) -> Vec<u8> {
    let mut k = TASK_TARGET.to_vec();
    k.extend_from_slice(cluster.as_bytes());
    k.push(0);
    k.extend_from_slice(task_id.as_bytes());
    k.push(0);
    k
}

fn task_target_key(task: &TargetTask, tg: &str, id: &str, port: u16) -> Vec<u8> {
    let mut k = task_targets_prefix(&task.cluster, &task.task_id);
    k.extend_from_slice(&target_suffix(tg, id, port));
    k
}

/// Where a target lives: (target group ARN, id, port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetKey {
    pub target_group_arn: String,
    pub id: String,
    pub port: u16,
}

/// A load balancer node, as last heard of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbNodeRecord {
    pub node: String,
    pub last_seen: f64,
}

/// What drains until a deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
enum DrainRef {
    #[serde(rename_all = "camelCase")]
    Target {
        target_group_arn: String,
        id: String,
        port: u16,
    },
    #[serde(rename_all = "camelCase")]
    Task { cluster: String, task_id: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DrainEntry {
    until: f64,
    what: DrainRef,
}

fn millis(t: f64) -> u64 {
    if t.is_finite() && t > 0.0 {
        (t * 1000.0).floor() as u64
    } else {
        0
    }
}

fn drain_key(until: f64, what: &DrainRef) -> Result<Vec<u8>, StoreError> {
    let mut k = DRAIN.to_vec();
    k.extend_from_slice(&millis(until).to_be_bytes());
    k.extend_from_slice(&serde_json::to_vec(what)?);
    Ok(k)
}

fn put_drain<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    until: f64,
    what: DrainRef,
) -> Result<(), StoreError> {
    let k = drain_key(until, &what)?;
    st.put_json(k, &DrainEntry { until, what })
}

fn delete_drain<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    until: f64,
    what: &DrainRef,
) -> Result<(), StoreError> {
    let k = drain_key(until, what)?;
    st.delete(k);
    Ok(())
}

// ---------------------------------------------------------------- generic reads

use crate::kv::{get_json, scan_json};

// ---------------------------------------------------------------- reads (also for StateReader)

pub fn load_balancer<R: KvRead + ?Sized>(
    kv: &R,
    arn: &str,
) -> Result<Option<LoadBalancer>, StoreError> {
    Ok(load_balancer_record(kv, arn)?.map(|r| r.load_balancer))
}

/// Every load balancer, by name.
pub fn load_balancers<R: KvRead + ?Sized>(kv: &R) -> Result<Vec<LoadBalancer>, StoreError> {
    Ok(load_balancer_records(kv)?
        .into_iter()
        .map(|r| r.load_balancer)
        .collect())
}

/// A load balancer with every attribute (defaults for those its record lacks).
pub fn load_balancer_record<R: KvRead + ?Sized>(
    kv: &R,
    arn: &str,
) -> Result<Option<LoadBalancerRecord>, StoreError> {
    let mut rec: Option<LoadBalancerRecord> = get_json(kv, &key(LB, arn))?;
    if let Some(r) = &mut rec {
        r.fill_defaults();
    }
    Ok(rec)
}

/// Every load balancer with its attributes, by name.
pub fn load_balancer_records<R: KvRead + ?Sized>(
    kv: &R,
) -> Result<Vec<LoadBalancerRecord>, StoreError> {
    let mut v: Vec<LoadBalancerRecord> = scan_json(kv, LB)?;
    for r in &mut v {
        r.fill_defaults();
    }
    v.sort_by(|a, b| {
        let (a, b) = (&a.load_balancer, &b.load_balancer);
        (&a.load_balancer_name, &a.load_balancer_arn)
            .cmp(&(&b.load_balancer_name, &b.load_balancer_arn))
    });
    Ok(v)
}

/// A target group as stored (`LoadBalancerArns` empty).
fn target_group_raw<R: KvRead + ?Sized>(
    kv: &R,
    arn: &str,
) -> Result<Option<TargetGroupRecord>, StoreError> {
    get_json(kv, &key(TG, arn))
}

/// A target group with `LoadBalancerArns` filled in.
pub fn target_group<R: KvRead + ?Sized>(
    kv: &R,
    arn: &str,
) -> Result<Option<TargetGroupRecord>, StoreError> {
    let Some(mut rec) = target_group_raw(kv, arn)? else {
        return Ok(None);
    };
    let usage = usage(kv, &BTreeSet::new())?;
    fill(&mut rec, &usage);
    Ok(Some(rec))
}

/// Every target group, by name, with `LoadBalancerArns` filled in.
pub fn target_groups<R: KvRead + ?Sized>(kv: &R) -> Result<Vec<TargetGroupRecord>, StoreError> {
    let usage = usage(kv, &BTreeSet::new())?;
    let mut v: Vec<TargetGroupRecord> = scan_json(kv, TG)?;
    for rec in &mut v {
        fill(rec, &usage);
    }
    v.sort_by(|a, b| {
        (
            &a.target_group.target_group_name,
            &a.target_group.target_group_arn,
        )
            .cmp(&(
                &b.target_group.target_group_name,
                &b.target_group.target_group_arn,
            ))
    });
    Ok(v)
}

fn fill(rec: &mut TargetGroupRecord, usage: &Usage) {
    rec.target_group.load_balancer_arns = usage
        .get(&rec.target_group.target_group_arn)
        .map(|s| s.iter().cloned().collect())
        .unwrap_or_default();
}

pub fn listener<R: KvRead + ?Sized>(kv: &R, arn: &str) -> Result<Option<Listener>, StoreError> {
    get_json(kv, &key(LISTENER, arn))
}

/// Listeners (of one load balancer, or all), by port.
pub fn listeners<R: KvRead + ?Sized>(
    kv: &R,
    load_balancer_arn: Option<&str>,
) -> Result<Vec<Listener>, StoreError> {
    let mut v: Vec<Listener> = scan_json(kv, LISTENER)?;
    if let Some(lb) = load_balancer_arn {
        v.retain(|l| l.load_balancer_arn == lb);
    }
    v.sort_by(|a, b| (a.port, &a.listener_arn).cmp(&(b.port, &b.listener_arn)));
    Ok(v)
}

pub fn rule<R: KvRead + ?Sized>(kv: &R, arn: &str) -> Result<Option<RuleRecord>, StoreError> {
    get_json(kv, &key(RULE, arn))
}

/// Every rule of every listener, by listener then evaluation order.
pub fn all_rules<R: KvRead + ?Sized>(kv: &R) -> Result<Vec<RuleRecord>, StoreError> {
    let mut v: Vec<RuleRecord> = scan_json(kv, RULE)?;
    v.sort_by(|a, b| {
        (&a.listener_arn, priority_order(&a.rule), &a.rule.rule_arn).cmp(&(
            &b.listener_arn,
            priority_order(&b.rule),
            &b.rule.rule_arn,
        ))
    });
    Ok(v)
}

/// The rules of a listener in evaluation order: by priority, the default rule last.
pub fn rules<R: KvRead + ?Sized>(kv: &R, listener_arn: &str) -> Result<Vec<Rule>, StoreError> {
    Ok(all_rules(kv)?
        .into_iter()
        .filter(|r| r.listener_arn == listener_arn)
        .map(|r| r.rule)
        .collect())
}

/// Sort key of a rule: its priority, the default rule after every numbered one.
fn priority_order(r: &Rule) -> u64 {
    if r.is_default {
        u64::MAX
    } else {
        r.priority.parse::<u64>().unwrap_or(u64::MAX - 1)
    }
}

/// A target group's targets, by id then port.
pub fn targets<R: KvRead + ?Sized>(
    kv: &R,
    target_group_arn: &str,
) -> Result<Vec<TargetRecord>, StoreError> {
    scan_json(kv, &target_group_prefix(target_group_arn))
}

/// Every target, by target group, id, port.
pub fn all_targets<R: KvRead + ?Sized>(kv: &R) -> Result<Vec<TargetRecord>, StoreError> {
    scan_json(kv, TARGET)
}

fn load_target<R: KvRead + ?Sized>(
    kv: &R,
    tg: &str,
    id: &str,
    port: u16,
) -> Result<Option<TargetRecord>, StoreError> {
    get_json(kv, &target_key(tg, id, port))
}

/// The targets registered for a task (by its service), draining ones included.
pub fn targets_of_task<R: KvRead + ?Sized>(
    kv: &R,
    cluster: &str,
    task_id: &str,
) -> Result<Vec<TargetRecord>, StoreError> {
    let mut out = Vec::new();
    for k in scan_json::<_, TargetKey>(kv, &task_targets_prefix(cluster, task_id))? {
        if let Some(t) = load_target(kv, &k.target_group_arn, &k.id, k.port)? {
            out.push(t);
        }
    }
    Ok(out)
}

/// The earliest time at which an `ElbSweep` has something to do (a draining target to
/// remove or a task whose draining ends), if any.
pub fn next_drain_deadline<R: KvRead + ?Sized>(kv: &R) -> Result<Option<f64>, StoreError> {
    // Keys order by whole milliseconds; the exact minimum is among the first millisecond.
    let mut best: Option<(u64, f64)> = None;
    for (k, v) in kv.scan_prefix(DRAIN)? {
        let ms = k
            .get(DRAIN.len()..DRAIN.len() + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        if let Some((first, _)) = best {
            if ms != first {
                break;
            }
        }
        let e: DrainEntry = serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
            key: String::from_utf8_lossy(&k).into_owned(),
            source,
        })?;
        best = Some(match best {
            Some((m, u)) => (m, u.min(e.until)),
            None => (ms, e.until),
        });
    }
    Ok(best.map(|(_, u)| u))
}

/// Target group ARN → the load balancers whose listeners or rules forward to it.
type Usage = BTreeMap<String, BTreeSet<String>>;

/// Which load balancers use which target groups, from every rule (default rules carry
/// their listener's default actions) except the rules in `exclude`.
fn usage<R: KvRead + ?Sized>(kv: &R, exclude: &BTreeSet<String>) -> Result<Usage, StoreError> {
    let lbs: BTreeMap<String, String> = scan_json::<_, Listener>(kv, LISTENER)?
        .into_iter()
        .map(|l| (l.listener_arn, l.load_balancer_arn))
        .collect();
    let mut out = Usage::new();
    for r in scan_json::<_, RuleRecord>(kv, RULE)? {
        if exclude.contains(&r.rule.rule_arn) {
            continue;
        }
        let Some(lb) = lbs.get(&r.listener_arn) else {
            continue;
        };
        for a in &r.rule.actions {
            for (tg, _) in a.forward_targets() {
                out.entry(tg).or_default().insert(lb.clone());
            }
        }
    }
    Ok(out)
}

/// The ARN of a listener's default rule (derived from the listener's id, so that every
/// server computes the same).
pub fn default_rule_arn(listener_arn: &str) -> String {
    let id = listener_arn.rsplit('/').next().unwrap_or(listener_arn);
    berth_model::elb::rule_arn(listener_arn, id)
}

// ---------------------------------------------------------------- writes

fn e(kind: ErrorKind, message: impl Into<String>) -> Response {
    err(ApiError::new(kind, message))
}

/// Records that ELB state changed (once per command).
fn touched<R: KvRead + ?Sized>(st: &mut Staged<'_, R>) {
    if !st.changes.contains(&Change::Elb) {
        st.changes.push(Change::Elb);
    }
}

fn put_tags<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    arn: &str,
    tags: &[Tag],
) -> Result<(), StoreError> {
    if tags.is_empty() {
        st.delete(keys::tags(arn));
    } else {
        st.put_json(keys::tags(arn), &tags)?;
    }
    st.changes.push(Change::Tags {
        arn: arn.to_string(),
    });
    Ok(())
}

fn drop_tags<R: KvRead + ?Sized>(st: &mut Staged<'_, R>, arn: &str) -> Result<(), StoreError> {
    if st.get(&keys::tags(arn))?.is_some() {
        st.delete(keys::tags(arn));
        st.changes.push(Change::Tags {
            arn: arn.to_string(),
        });
    }
    Ok(())
}

/// Writes a target, keeping the task and drain indexes in step with `old`.
fn put_target<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    old: Option<&TargetRecord>,
    new: &TargetRecord,
) -> Result<(), StoreError> {
    if let Some(old) = old {
        unindex_target(st, old)?;
    }
    let tg = &new.target_group_arn;
    if let Some(task) = &new.task {
        st.put_json(
            task_target_key(task, tg, &new.id, new.port),
            &TargetKey {
                target_group_arn: tg.clone(),
                id: new.id.clone(),
                port: new.port,
            },
        )?;
    }
    if let Some(until) = new.drain_until {
        put_drain(st, until, target_ref(new))?;
    }
    st.put_json(target_key(tg, &new.id, new.port), new)?;
    touched(st);
    Ok(())
}

fn target_ref(t: &TargetRecord) -> DrainRef {
    DrainRef::Target {
        target_group_arn: t.target_group_arn.clone(),
        id: t.id.clone(),
        port: t.port,
    }
}

fn unindex_target<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    t: &TargetRecord,
) -> Result<(), StoreError> {
    if let Some(task) = &t.task {
        st.delete(task_target_key(task, &t.target_group_arn, &t.id, t.port));
    }
    if let Some(until) = t.drain_until {
        delete_drain(st, until, &target_ref(t))?;
    }
    Ok(())
}

fn delete_target<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    t: &TargetRecord,
) -> Result<(), StoreError> {
    unindex_target(st, t)?;
    st.delete(target_key(&t.target_group_arn, &t.id, t.port));
    touched(st);
    Ok(())
}

/// Deregisters a live target: it drains until `at` + the group's deregistration delay,
/// or goes at once when that delay is 0. Returns the drain deadline, if it drains.
fn deregister<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    t: &TargetRecord,
    delay_secs: u32,
    at: f64,
) -> Result<Option<f64>, StoreError> {
    if delay_secs == 0 {
        delete_target(st, t)?;
        return Ok(None);
    }
    let until = at + f64::from(delay_secs);
    let mut new = t.clone();
    new.drain_until = Some(until);
    new.health = TargetHealth::draining();
    new.idle_on.clear();
    put_target(st, Some(t), &new)?;
    Ok(Some(until))
}

fn delete_rule_record<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    arn: &str,
) -> Result<(), StoreError> {
    st.delete(key(RULE, arn));
    drop_tags(st, arn)
}

/// Deletes a listener with its rules (the default one included).
fn delete_listener_record<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    arn: &str,
) -> Result<(), StoreError> {
    for r in scan_json::<_, RuleRecord>(st, RULE)? {
        if r.listener_arn == arn {
            delete_rule_record(st, &r.rule.rule_arn)?;
        }
    }
    st.delete(key(LISTENER, arn));
    drop_tags(st, arn)?;
    touched(st);
    Ok(())
}

/// The error for a listener port that another listener (on any load balancer) already
/// uses: every berth load balancer node binds every listener.
fn port_taken<R: KvRead + ?Sized>(
    st: &Staged<'_, R>,
    port: u16,
    except: Option<&str>,
) -> Result<Option<ApiError>, StoreError> {
    for l in scan_json::<_, Listener>(st, LISTENER)? {
        if l.port == port && Some(l.listener_arn.as_str()) != except {
            let lb = load_balancer(st, &l.load_balancer_arn)?
                .map(|lb| lb.load_balancer_name)
                .unwrap_or(l.load_balancer_arn);
            return Ok(Some(ApiError::new(
                ErrorKind::DuplicateListener,
                format!("A listener already exists on port {port} (load balancer {lb})"),
            )));
        }
    }
    Ok(None)
}

/// Checks the target groups that `actions` forward to: each must exist, and must not be
/// used by another load balancer than `lb_arn` (ignoring the rules in `replacing`).
fn check_actions<R: KvRead + ?Sized>(
    st: &Staged<'_, R>,
    lb_arn: &str,
    actions: &[Action],
    replacing: &BTreeSet<String>,
) -> Result<Option<ApiError>, StoreError> {
    let groups: BTreeSet<String> = actions
        .iter()
        .flat_map(|a| a.forward_targets())
        .map(|(tg, _)| tg)
        .collect();
    let mut missing = Vec::new();
    for tg in &groups {
        if target_group_raw(st, tg)?.is_none() {
            missing.push(format!("'{tg}'"));
        }
    }
    if !missing.is_empty() {
        return Ok(Some(ApiError::new(
            ErrorKind::TargetGroupNotFound,
            format!("Target groups {} not found", missing.join(", ")),
        )));
    }
    let usage = usage(st, replacing)?;
    let taken: Vec<&str> = groups
        .iter()
        .filter(|tg| {
            usage
                .get(*tg)
                .is_some_and(|lbs| lbs.iter().any(|l| l != lb_arn))
        })
        .map(String::as_str)
        .collect();
    if !taken.is_empty() {
        return Ok(Some(ApiError::new(
            ErrorKind::TargetGroupAssociationLimit,
            format!(
                "The following target groups cannot be associated with more than one load balancer: {}",
                taken.join(", ")
            ),
        )));
    }
    Ok(None)
}

fn parse_priority(rule: &Rule) -> Option<u32> {
    rule.priority.parse().ok()
}

/// Applies one ELBv2 command.
pub(crate) fn apply<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cmd: &Command,
) -> Result<Response, StoreError> {
    match cmd {
        Command::CreateLoadBalancer {
            load_balancer,
            tags,
        } => create_load_balancer(st, load_balancer, tags),
        Command::DeleteLoadBalancer { arn } => {
            let Some(rec) = load_balancer_record(st, arn)? else {
                return Ok(Response::Ok);
            };
            if rec.settings().deletion_protection {
                return Ok(e(
                    ErrorKind::OperationNotPermitted,
                    format!(
                        "Load balancer '{arn}' cannot be deleted because deletion protection is enabled"
                    ),
                ));
            }
            for l in listeners(st, Some(arn))? {
                delete_listener_record(st, &l.listener_arn)?;
            }
            st.delete(key(LB, arn));
            drop_tags(st, arn)?;
            touched(st);
            Ok(Response::Ok)
        }
        Command::ModifyLoadBalancerAttributes { arn, attributes } => {
            let Some(mut rec) = load_balancer_record(st, arn)? else {
                return Ok(lb_not_found(arn));
            };
            rec.attributes = merge_attributes(&rec.attributes, attributes);
            st.put_json(key(LB, arn), &rec)?;
            touched(st);
            Ok(Response::LoadBalancerAttributes {
                attributes: rec.attributes,
            })
        }
        Command::CreateTargetGroup { record, tags } => create_target_group(st, record, tags),
        Command::ModifyTargetGroup { arn, patch } => modify_target_group(st, arn, patch),
        Command::ModifyTargetGroupAttributes { arn, attributes } => {
            modify_target_group_attributes(st, arn, attributes)
        }
        Command::DeleteTargetGroup { arn } => {
            if target_group_raw(st, arn)?.is_none() {
                return Ok(Response::Ok);
            }
            if usage(st, &BTreeSet::new())?.contains_key(arn) {
                return Ok(e(
                    ErrorKind::ResourceInUse,
                    format!("Target group '{arn}' is currently in use by a listener or a rule"),
                ));
            }
            for t in targets(st, arn)? {
                delete_target(st, &t)?;
            }
            st.delete(key(TG, arn));
            drop_tags(st, arn)?;
            touched(st);
            Ok(Response::Ok)
        }
        Command::CreateListener { listener, tags } => create_listener(st, listener, tags),
        Command::ModifyListener {
            arn,
            port,
            protocol,
            default_actions,
        } => modify_listener(
            st,
            arn,
            *port,
            protocol.as_deref(),
            default_actions.as_deref(),
        ),
        Command::DeleteListener { arn } => {
            if listener(st, arn)?.is_none() {
                return Ok(listener_not_found(arn));
            }
            delete_listener_record(st, arn)?;
            Ok(Response::Ok)
        }
        Command::CreateRule { record, tags } => create_rule(st, record, tags),
        Command::ModifyRule {
            arn,
            conditions,
            actions,
        } => modify_rule(st, arn, conditions.as_deref(), actions.as_deref()),
        Command::SetRulePriorities { priorities } => set_rule_priorities(st, priorities),
        Command::DeleteRule { arn } => {
            let Some(r) = rule(st, arn)? else {
                return Ok(rule_not_found(arn));
            };
            if r.rule.is_default {
                return Ok(e(
                    ErrorKind::OperationNotPermitted,
                    format!("The default rule '{arn}' cannot be deleted"),
                ));
            }
            delete_rule_record(st, arn)?;
            touched(st);
            Ok(Response::Ok)
        }
        Command::RegisterTargets {
            target_group_arn,
            targets,
            at,
        } => register_targets(st, target_group_arn, targets, *at),
        Command::DeregisterTargets {
            target_group_arn,
            targets,
            at,
        } => deregister_targets(st, target_group_arn, targets, *at),
        Command::SetTargetHealth { updates } => set_target_health(st, updates),
        Command::ElbSweep { at } => sweep(st, *at),
        Command::ElbDrainReport { node, idle, at } => drain_report(st, node, idle, *at),
        Command::AddElbTags { arn, tags } => {
            if let Some(r) = tag_resource_missing(st, arn)? {
                return Ok(r);
            }
            let mut current: Vec<Tag> = st.get_json(&keys::tags(arn))?.unwrap_or_default();
            for t in tags {
                match current.iter_mut().find(|c| c.key == t.key) {
                    Some(c) => c.value = t.value.clone(),
                    None => current.push(t.clone()),
                }
            }
            if current.len() > MAX_TAGS {
                return Ok(e(
                    ErrorKind::TooManyTags,
                    format!(
                        "Resource '{arn}' would have {} tags; at most {MAX_TAGS} are allowed",
                        current.len()
                    ),
                ));
            }
            put_tags(st, arn, &current)?;
            Ok(Response::Ok)
        }
        Command::RemoveElbTags {
            arn,
            keys: tag_keys,
        } => {
            if let Some(r) = tag_resource_missing(st, arn)? {
                return Ok(r);
            }
            let mut current: Vec<Tag> = st.get_json(&keys::tags(arn))?.unwrap_or_default();
            current.retain(|t| !tag_keys.contains(&t.key));
            put_tags(st, arn, &current)?;
            Ok(Response::Ok)
        }
        other => Ok(err(ApiError::server(format!(
            "{} is not an ELBv2 command",
            other.name()
        )))),
    }
}

/// The NotFound answer for a tagged ARN that names no load balancer, target group,
/// listener or rule (the kind follows the ARN's resource type).
fn tag_resource_missing<R: KvRead + ?Sized>(
    st: &Staged<'_, R>,
    arn: &str,
) -> Result<Option<Response>, StoreError> {
    Ok(if arn.contains(":listener-rule/") {
        rule(st, arn)?.is_none().then(|| rule_not_found(arn))
    } else if arn.contains(":listener/") {
        listener(st, arn)?
            .is_none()
            .then(|| listener_not_found(arn))
    } else if arn.contains(":targetgroup/") {
        target_group_raw(st, arn)?
            .is_none()
            .then(|| tg_not_found(arn))
    } else {
        load_balancer(st, arn)?.is_none().then(|| lb_not_found(arn))
    })
}

fn lb_not_found(arn: &str) -> Response {
    e(
        ErrorKind::LoadBalancerNotFound,
        format!("Load balancer '{arn}' not found"),
    )
}

fn tg_not_found(arn: &str) -> Response {
    e(
        ErrorKind::TargetGroupNotFound,
        format!("Target groups '{arn}' not found"),
    )
}

fn listener_not_found(arn: &str) -> Response {
    e(
        ErrorKind::ListenerNotFound,
        format!("Listener '{arn}' not found"),
    )
}

fn rule_not_found(arn: &str) -> Response {
    e(ErrorKind::RuleNotFound, format!("Rule '{arn}' not found"))
}

/// The settings that make two load balancers "the same" for an idempotent create.
fn lb_settings(lb: &LoadBalancer) -> LoadBalancer {
    LoadBalancer {
        load_balancer_arn: String::new(),
        dns_name: String::new(),
        canonical_hosted_zone_id: None,
        created_time: 0.0,
        state: Default::default(),
        ..lb.clone()
    }
}

fn create_load_balancer<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    lb: &LoadBalancer,
    tags: &[Tag],
) -> Result<Response, StoreError> {
    if let Some(existing) = load_balancers(st)?
        .into_iter()
        .find(|l| l.load_balancer_name == lb.load_balancer_name)
    {
        if lb_settings(&existing) == lb_settings(lb) {
            return Ok(Response::LoadBalancer {
                load_balancer: Box::new(existing),
            });
        }
        return Ok(e(
            ErrorKind::DuplicateLoadBalancerName,
            format!(
                "A load balancer with the same name '{}' exists, but with different settings",
                lb.load_balancer_name
            ),
        ));
    }
    if load_balancer(st, &lb.load_balancer_arn)?.is_some() {
        return Ok(err(ApiError::server(format!(
            "load balancer ARN {} is already taken; retry the request",
            lb.load_balancer_arn
        ))));
    }
    st.put_json(
        key(LB, &lb.load_balancer_arn),
        &LoadBalancerRecord::new(lb.clone()),
    )?;
    if !tags.is_empty() {
        put_tags(st, &lb.load_balancer_arn, tags)?;
    }
    touched(st);
    Ok(Response::LoadBalancer {
        load_balancer: Box::new(lb.clone()),
    })
}

fn tg_settings(rec: &TargetGroupRecord) -> berth_model::elb::TargetGroup {
    berth_model::elb::TargetGroup {
        target_group_arn: String::new(),
        load_balancer_arns: vec![],
        ..rec.target_group.clone()
    }
}

fn create_target_group<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    record: &TargetGroupRecord,
    tags: &[Tag],
) -> Result<Response, StoreError> {
    let name = &record.target_group.target_group_name;
    if let Some(existing) = target_groups(st)?
        .into_iter()
        .find(|t| &t.target_group.target_group_name == name)
    {
        if tg_settings(&existing) == tg_settings(record) {
            return Ok(Response::TargetGroup {
                record: Box::new(existing),
            });
        }
        return Ok(e(
            ErrorKind::DuplicateTargetGroupName,
            format!(
                "A target group with the same name '{name}' exists, but with different settings"
            ),
        ));
    }
    let arn = &record.target_group.target_group_arn;
    if target_group_raw(st, arn)?.is_some() {
        return Ok(err(ApiError::server(format!(
            "target group ARN {arn} is already taken; retry the request"
        ))));
    }
    let mut rec = record.clone();
    rec.target_group.load_balancer_arns.clear();
    st.put_json(key(TG, arn), &rec)?;
    if !tags.is_empty() {
        put_tags(st, arn, tags)?;
    }
    touched(st);
    Ok(Response::TargetGroup {
        record: Box::new(rec),
    })
}

fn answer_tg<R: KvRead + ?Sized>(
    st: &Staged<'_, R>,
    mut rec: TargetGroupRecord,
) -> Result<Response, StoreError> {
    fill(&mut rec, &usage(st, &BTreeSet::new())?);
    Ok(Response::TargetGroup {
        record: Box::new(rec),
    })
}

fn modify_target_group<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    arn: &str,
    patch: &TargetGroupPatch,
) -> Result<Response, StoreError> {
    let Some(mut rec) = target_group_raw(st, arn)? else {
        return Ok(tg_not_found(arn));
    };
    patch.apply_to(&mut rec.target_group);
    let tg = &rec.target_group;
    if tg.health_check_timeout_seconds >= tg.health_check_interval_seconds {
        return Ok(e(
            ErrorKind::ValidationError,
            format!(
                "Health check interval '{}' must be greater than the timeout '{}'",
                tg.health_check_interval_seconds, tg.health_check_timeout_seconds
            ),
        ));
    }
    st.put_json(key(TG, arn), &rec)?;
    touched(st);
    answer_tg(st, rec)
}

fn modify_target_group_attributes<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    arn: &str,
    attributes: &[ElbAttribute],
) -> Result<Response, StoreError> {
    let Some(mut rec) = target_group_raw(st, arn)? else {
        return Ok(tg_not_found(arn));
    };
    rec.attributes = merge_attributes(&rec.attributes, attributes);
    st.put_json(key(TG, arn), &rec)?;
    touched(st);
    answer_tg(st, rec)
}

fn create_listener<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    listener: &Listener,
    tags: &[Tag],
) -> Result<Response, StoreError> {
    let lb_arn = &listener.load_balancer_arn;
    if load_balancer(st, lb_arn)?.is_none() {
        return Ok(lb_not_found(lb_arn));
    }
    if let Some(error) = port_taken(st, listener.port, None)? {
        return Ok(err(error));
    }
    if let Some(error) = check_actions(st, lb_arn, &listener.default_actions, &BTreeSet::new())? {
        return Ok(err(error));
    }
    let arn = &listener.listener_arn;
    if self::listener(st, arn)?.is_some() {
        return Ok(err(ApiError::server(format!(
            "listener ARN {arn} is already taken; retry the request"
        ))));
    }
    st.put_json(key(LISTENER, arn), listener)?;
    let default = RuleRecord {
        listener_arn: arn.clone(),
        rule: Rule {
            rule_arn: default_rule_arn(arn),
            priority: "default".into(),
            conditions: vec![],
            actions: listener.default_actions.clone(),
            is_default: true,
        },
    };
    st.put_json(key(RULE, &default.rule.rule_arn), &default)?;
    if !tags.is_empty() {
        put_tags(st, arn, tags)?;
    }
    touched(st);
    Ok(Response::Listener {
        listener: Box::new(listener.clone()),
    })
}

fn modify_listener<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    arn: &str,
    port: Option<u16>,
    protocol: Option<&str>,
    default_actions: Option<&[Action]>,
) -> Result<Response, StoreError> {
    let Some(mut l) = listener(st, arn)? else {
        return Ok(listener_not_found(arn));
    };
    if let Some(p) = port {
        if p != l.port {
            if let Some(error) = port_taken(st, p, Some(arn))? {
                return Ok(err(error));
            }
        }
        l.port = p;
    }
    if let Some(p) = protocol {
        l.protocol = p.to_string();
    }
    let default_arn = default_rule_arn(arn);
    if let Some(actions) = default_actions {
        let replacing = BTreeSet::from([default_arn.clone()]);
        if let Some(error) = check_actions(st, &l.load_balancer_arn, actions, &replacing)? {
            return Ok(err(error));
        }
        l.default_actions = actions.to_vec();
        let mut d = rule(st, &default_arn)?.unwrap_or_else(|| RuleRecord {
            listener_arn: arn.to_string(),
            rule: Rule {
                rule_arn: default_arn.clone(),
                priority: "default".into(),
                conditions: vec![],
                actions: vec![],
                is_default: true,
            },
        });
        d.rule.actions = actions.to_vec();
        st.put_json(key(RULE, &default_arn), &d)?;
    }
    st.put_json(key(LISTENER, arn), &l)?;
    touched(st);
    Ok(Response::Listener {
        listener: Box::new(l),
    })
}

fn priority_in_use(priority: u32, listener_arn: &str) -> Response {
    e(
        ErrorKind::PriorityInUse,
        format!("Priority '{priority}' is currently in use on listener '{listener_arn}'"),
    )
}

fn create_rule<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    record: &RuleRecord,
    tags: &[Tag],
) -> Result<Response, StoreError> {
    let larn = &record.listener_arn;
    let Some(l) = listener(st, larn)? else {
        return Ok(listener_not_found(larn));
    };
    let Some(priority) = parse_priority(&record.rule).filter(|_| !record.rule.is_default) else {
        return Ok(e(
            ErrorKind::ValidationError,
            format!(
                "Priority '{}' is not a valid rule priority",
                record.rule.priority
            ),
        ));
    };
    let existing: Vec<Rule> = rules(st, larn)?
        .into_iter()
        .filter(|r| !r.is_default)
        .collect();
    if existing.len() >= MAX_RULES_PER_LISTENER {
        return Ok(e(
            ErrorKind::TooManyRules,
            format!("Listener '{larn}' already has the maximum of {MAX_RULES_PER_LISTENER} rules"),
        ));
    }
    if existing.iter().any(|r| parse_priority(r) == Some(priority)) {
        return Ok(priority_in_use(priority, larn));
    }
    if let Some(error) = check_actions(
        st,
        &l.load_balancer_arn,
        &record.rule.actions,
        &BTreeSet::new(),
    )? {
        return Ok(err(error));
    }
    let arn = &record.rule.rule_arn;
    if rule(st, arn)?.is_some() {
        return Ok(err(ApiError::server(format!(
            "rule ARN {arn} is already taken; retry the request"
        ))));
    }
    let mut rec = record.clone();
    rec.rule.priority = priority.to_string();
    st.put_json(key(RULE, arn), &rec)?;
    if !tags.is_empty() {
        put_tags(st, arn, tags)?;
    }
    touched(st);
    Ok(Response::Rule {
        rule: Box::new(rec.rule),
    })
}

fn modify_rule<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    arn: &str,
    conditions: Option<&[RuleCondition]>,
    actions: Option<&[Action]>,
) -> Result<Response, StoreError> {
    let Some(mut r) = rule(st, arn)? else {
        return Ok(rule_not_found(arn));
    };
    if r.rule.is_default && conditions.is_some() {
        return Ok(e(
            ErrorKind::OperationNotPermitted,
            format!("The conditions of the default rule '{arn}' cannot be modified"),
        ));
    }
    let Some(mut l) = listener(st, &r.listener_arn)? else {
        return Ok(listener_not_found(&r.listener_arn));
    };
    if let Some(c) = conditions {
        r.rule.conditions = c.to_vec();
    }
    if let Some(a) = actions {
        let replacing = BTreeSet::from([arn.to_string()]);
        if let Some(error) = check_actions(st, &l.load_balancer_arn, a, &replacing)? {
            return Ok(err(error));
        }
        r.rule.actions = a.to_vec();
        if r.rule.is_default {
            l.default_actions = a.to_vec();
            st.put_json(key(LISTENER, &l.listener_arn), &l)?;
        }
    }
    st.put_json(key(RULE, arn), &r)?;
    touched(st);
    Ok(Response::Rule {
        rule: Box::new(r.rule),
    })
}

fn set_rule_priorities<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    priorities: &[(String, u32)],
) -> Result<Response, StoreError> {
    let mut changed: Vec<RuleRecord> = Vec::new();
    for (arn, p) in priorities {
        if changed.iter().any(|r| &r.rule.rule_arn == arn) {
            return Ok(e(
                ErrorKind::ValidationError,
                format!("Rule '{arn}' is given more than one priority"),
            ));
        }
        let Some(mut r) = rule(st, arn)? else {
            return Ok(rule_not_found(arn));
        };
        if r.rule.is_default {
            return Ok(e(
                ErrorKind::OperationNotPermitted,
                format!("The priority of the default rule '{arn}' cannot be changed"),
            ));
        }
        r.rule.priority = p.to_string();
        changed.push(r);
    }
    // The listeners' rules as they would be afterwards: priorities must stay unique.
    let listeners: BTreeSet<&str> = changed.iter().map(|r| r.listener_arn.as_str()).collect();
    for larn in listeners {
        let mut seen = BTreeSet::new();
        for r in rules(st, larn)? {
            if r.is_default {
                continue;
            }
            let r = changed
                .iter()
                .find(|c| c.rule.rule_arn == r.rule_arn)
                .map(|c| c.rule.clone())
                .unwrap_or(r);
            if let Some(p) = parse_priority(&r) {
                if !seen.insert(p) {
                    return Ok(priority_in_use(p, larn));
                }
            }
        }
    }
    for r in &changed {
        st.put_json(key(RULE, &r.rule.rule_arn), r)?;
    }
    if !changed.is_empty() {
        touched(st);
    }
    Ok(Response::Rules {
        rules: changed.into_iter().map(|r| r.rule).collect(),
    })
}

/// A registered instance by its id, looked up in every cluster: (host IP, AZ).
fn find_instance<R: KvRead + ?Sized>(
    st: &Staged<'_, R>,
    id: &str,
) -> Result<Option<(String, Option<String>)>, StoreError> {
    for (k, _) in st.scan_prefix(keys::CLUSTER)? {
        let cluster = String::from_utf8_lossy(&k[keys::CLUSTER.len()..]).into_owned();
        if let Some(rec) = crate::tasks::load_instance(st, &cluster, id)? {
            if rec.status() != "INACTIVE" {
                return Ok(Some((rec.host_ip.clone(), instance_az(&rec))));
            }
        }
    }
    Ok(None)
}

fn instance_az(rec: &berth_model::ContainerInstanceRecord) -> Option<String> {
    rec.instance
        .attribute("ecs.availability-zone")
        .flatten()
        .map(str::to_string)
}

fn register_targets<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    tg_arn: &str,
    descs: &[TargetDescription],
    at: f64,
) -> Result<Response, StoreError> {
    let Some(tg) = target_group_raw(st, tg_arn)? else {
        return Ok(tg_not_found(tg_arn));
    };
    let ip_targets = tg.target_group.target_type == "ip";
    let mut invalid = Vec::new();
    let mut resolved: Vec<TargetRecord> = Vec::new();
    for d in descs {
        let port = d.port.unwrap_or(tg.target_group.port);
        let (address, az) = if ip_targets {
            if d.id.parse::<std::net::Ipv4Addr>().is_err() {
                invalid.push(format!("'{}'", d.id));
                continue;
            }
            (d.id.clone(), d.availability_zone.clone())
        } else {
            match find_instance(st, &d.id)? {
                Some(found) => found,
                None => {
                    invalid.push(format!("'{}'", d.id));
                    continue;
                }
            }
        };
        if resolved.iter().any(|t| t.id == d.id && t.port == port) {
            continue;
        }
        resolved.push(TargetRecord {
            target_group_arn: tg_arn.to_string(),
            id: d.id.clone(),
            port,
            availability_zone: az,
            address,
            task: None,
            registered_at: at,
            drain_until: None,
            health: TargetHealth::initial(),
            idle_on: Vec::new(),
        });
    }
    if !invalid.is_empty() {
        let what = if ip_targets {
            "The following targets are not valid IPv4 addresses"
        } else {
            "The following targets are not valid instances"
        };
        return Ok(e(
            ErrorKind::InvalidTarget,
            format!("{what}: {}", invalid.join(", ")),
        ));
    }
    let existing = targets(st, tg_arn)?;
    let added = resolved
        .iter()
        .filter(|n| !existing.iter().any(|o| o.id == n.id && o.port == n.port))
        .count();
    if existing.len() + added > MAX_TARGETS_PER_GROUP {
        return Ok(e(
            ErrorKind::TooManyTargets,
            format!(
                "Target group '{tg_arn}' would have {} targets; at most {MAX_TARGETS_PER_GROUP} are allowed",
                existing.len() + added
            ),
        ));
    }
    for new in resolved {
        match existing
            .iter()
            .find(|o| o.id == new.id && o.port == new.port)
        {
            // Registered and live: nothing to do (as ALB).
            Some(old) if !old.draining() => {}
            // Draining: registering it again revives it.
            Some(old) => put_target(st, Some(old), &new)?,
            None => put_target(st, None, &new)?,
        }
    }
    Ok(Response::Ok)
}

fn deregister_targets<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    tg_arn: &str,
    descs: &[TargetDescription],
    at: f64,
) -> Result<Response, StoreError> {
    let Some(tg) = target_group_raw(st, tg_arn)? else {
        return Ok(tg_not_found(tg_arn));
    };
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for d in descs {
        let port = d.port.unwrap_or(tg.target_group.port);
        match load_target(st, tg_arn, &d.id, port)? {
            Some(t) => {
                if !found.contains(&t) {
                    found.push(t)
                }
            }
            None => missing.push(format!("'{}' (port {port})", d.id)),
        }
    }
    if !missing.is_empty() {
        return Ok(e(
            ErrorKind::InvalidTarget,
            format!(
                "The following targets are not registered in target group '{tg_arn}': {}",
                missing.join(", ")
            ),
        ));
    }
    let delay = tg.settings().deregistration_delay_secs;
    for t in found.iter().filter(|t| !t.draining()) {
        deregister(st, t, delay, at)?;
    }
    Ok(Response::Ok)
}

fn set_target_health<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    updates: &[TargetHealthUpdate],
) -> Result<Response, StoreError> {
    for u in updates {
        let Some(old) = load_target(st, &u.target_group_arn, &u.id, u.port)? else {
            continue;
        };
        if old.draining() || old.health == u.health {
            continue;
        }
        let mut new = old.clone();
        new.health = u.health.clone();
        st.put_json(target_key(&new.target_group_arn, &new.id, new.port), &new)?;
        if !st.changes.contains(&Change::ElbHealth) {
            st.changes.push(Change::ElbHealth);
        }
    }
    Ok(Response::Ok)
}

/// Removes targets whose draining has ended and lets tasks whose draining has ended stop.
fn sweep<R: KvRead + ?Sized>(st: &mut Staged<'_, R>, at: f64) -> Result<Response, StoreError> {
    let limit = millis(at);
    let mut due = Vec::new();
    for (k, v) in st.scan_prefix(DRAIN)? {
        let ms = k
            .get(DRAIN.len()..DRAIN.len() + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        if ms > limit {
            break;
        }
        let entry: DrainEntry =
            serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                source,
            })?;
        if entry.until <= at {
            due.push((k, entry));
        }
    }
    for (k, entry) in due {
        st.delete(k);
        match entry.what {
            DrainRef::Target {
                target_group_arn,
                id,
                port,
            } => {
                if let Some(t) = load_target(st, &target_group_arn, &id, port)? {
                    if t.drain_until.is_some_and(|u| u <= at) {
                        delete_target(st, &t)?;
                    }
                }
            }
            DrainRef::Task { cluster, task_id } => {
                if let Some(old) = crate::tasks::load_task(st, &cluster, &task_id)? {
                    if old.drain_until.is_some_and(|u| u <= at) {
                        let mut new = old.clone();
                        new.drain_until = None;
                        crate::tasks::put_task(st, &cluster, Some(&old), &new, at)?;
                    }
                }
            }
        }
    }
    Ok(Response::Ok)
}

/// A load balancer node reports in, with the draining targets it found idle. A task whose
/// draining targets every active node found idle stops now instead of at its deadline
/// (ALB completes a deregistration early when nothing is in flight). The targets stay
/// `draining` until the deadline, as on ALB, and still get no requests.
fn drain_report<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    node: &str,
    idle: &[DrainIdle],
    at: f64,
) -> Result<Response, StoreError> {
    // Reports reach the log through any server, stamped by its clock: never go back.
    let seen: Option<LbNodeRecord> = st.get_json(&key(LB_NODE, node))?;
    st.put_json(
        key(LB_NODE, node),
        &LbNodeRecord {
            node: node.to_string(),
            last_seen: seen.map_or(at, |r| r.last_seen.max(at)),
        },
    )?;
    let active = active_lb_nodes(st, at)?;
    let mut tasks = BTreeSet::new();
    for d in idle {
        let Some(t) = load_target(st, &d.target_group_arn, &d.id, d.port)? else {
            continue;
        };
        // Only the drain the node saw: not an earlier one of a target registered again.
        match t.drain_until {
            Some(u) if u > at && (u - d.drain_until).abs() < 0.001 => {}
            _ => continue,
        }
        if let Some(task) = &t.task {
            tasks.insert((task.cluster.clone(), task.task_id.clone()));
        }
        if !t.idle_on.iter().any(|n| n == node) {
            let mut new = t.clone();
            new.idle_on.push(node.to_string());
            new.idle_on.sort();
            // Same key and indexes; nothing any load balancer node routes by changed.
            st.put_json(target_key(&t.target_group_arn, &t.id, t.port), &new)?;
        }
    }
    for (cluster, task_id) in tasks {
        let Some(old) = crate::tasks::load_task(st, &cluster, &task_id)? else {
            continue;
        };
        if old.drain_until.is_none_or(|u| u <= at) {
            continue;
        }
        let drained = targets_of_task(st, &cluster, &task_id)?
            .iter()
            .filter(|t| t.drain_until.is_some_and(|u| u > at))
            .all(|t| active.iter().all(|n| t.idle_on.contains(n)));
        if drained {
            let mut new = old.clone();
            new.drain_until = None;
            crate::tasks::put_task(st, &cluster, Some(&old), &new, at)?;
        }
    }
    Ok(Response::Ok)
}

/// The nodes whose word counts at `at` (silent ones long gone are deleted on the way).
fn active_lb_nodes<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    at: f64,
) -> Result<BTreeSet<String>, StoreError> {
    let mut active = BTreeSet::new();
    let mut forget = Vec::new();
    for (k, v) in st.scan_prefix(LB_NODE)? {
        let r: LbNodeRecord = serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
            key: String::from_utf8_lossy(&k).into_owned(),
            source,
        })?;
        if r.last_seen >= at - LB_NODE_TTL_SECS {
            active.insert(r.node);
        } else if r.last_seen < at - LB_NODE_FORGET_SECS {
            forget.push(k);
        }
    }
    for k in forget {
        st.delete(k);
    }
    Ok(active)
}

/// Every load balancer node on record, with when it last reported.
pub fn lb_nodes<R: KvRead + ?Sized>(kv: &R) -> Result<Vec<LbNodeRecord>, StoreError> {
    scan_json(kv, LB_NODE)
}

// ---------------------------------------------------------------- ECS wiring (tasks)

/// An instance registered again from a new host IP (DHCP, a moved machine): its
/// targets follow, so the load balancer connects to where its tasks now listen (and
/// checks them afresh there).
pub(crate) fn instance_address_changed<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    instance_id: &str,
    address: &str,
) -> Result<(), StoreError> {
    let all: Vec<TargetRecord> = scan_json(st, TARGET)?;
    for t in all {
        if t.id != instance_id || t.address == address {
            continue;
        }
        let mut new = t.clone();
        new.address = address.to_string();
        // Same key and indexes.
        st.put_json(target_key(&t.target_group_arn, &t.id, t.port), &new)?;
        touched(st);
    }
    Ok(())
}

/// Called for every task write (before it is stored): registers a service task's targets
/// when it reaches RUNNING, drains a task's targets at once when it reaches STOPPED (and
/// ends its own draining), and keeps the drain index of tasks in step.
pub(crate) fn on_task_write<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    old: Option<&TaskRecord>,
    new: &mut TaskRecord,
    at: f64,
) -> Result<(), StoreError> {
    let old_last = old.map(|o| o.task.last_status()).unwrap_or("");
    let running = berth_model::task_status_rank("RUNNING");
    let was_before_running = berth_model::task_status_rank(old_last) < running;
    if was_before_running
        && new.task.last_status() == "RUNNING"
        && new.task.desired_status() == "RUNNING"
    {
        register_task_targets(st, cluster, new, at)?;
    }
    if old_last != "STOPPED" && new.task.last_status() == "STOPPED" {
        drain_task_targets(st, cluster, new.task.id(), at)?;
        new.drain_until = None;
    }
    let old_until = old.and_then(|o| o.drain_until);
    if old_until != new.drain_until {
        let what = DrainRef::Task {
            cluster: cluster.to_string(),
            task_id: new.task.id().to_string(),
        };
        if let Some(u) = old_until {
            delete_drain(st, u, &what)?;
        }
        if let Some(u) = new.drain_until {
            put_drain(st, u, what)?;
        }
    }
    Ok(())
}

/// Called by StopTask (and the service controller's stops) for a task whose instance is
/// still there: its live targets start draining. Returns when the last of them is done
/// (`None` when nothing drains: no targets, or only groups with no deregistration delay).
pub(crate) fn begin_task_drain<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    task_id: &str,
    at: f64,
) -> Result<Option<f64>, StoreError> {
    let until = drain_task_targets(st, cluster, task_id, at)?;
    if until.is_some() {
        if let Some(service) = targets_of_task(st, cluster, task_id)?
            .into_iter()
            .find_map(|t| t.task.map(|t| t.service_name))
        {
            service_event(
                st,
                cluster,
                &service,
                format!("(service {service}) has begun draining connections on 1 tasks."),
                at,
            )?;
        }
    }
    Ok(until)
}

/// Adds an event to a service (as ECS does for its load balancer wiring). The record's
/// version moves, so a controller decision computed before it is recomputed.
fn service_event<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    service: &str,
    message: String,
    at: f64,
) -> Result<(), StoreError> {
    if let Some(mut rec) = crate::services::load_service(st, cluster, service)? {
        rec.push_event(message, at);
        rec.version += 1;
        crate::services::put_service(st, cluster, &rec)?;
    }
    Ok(())
}

fn drain_task_targets<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    task_id: &str,
    at: f64,
) -> Result<Option<f64>, StoreError> {
    let mut last: Option<f64> = None;
    for t in targets_of_task(st, cluster, task_id)? {
        if let Some(u) = t.drain_until {
            // Deregistered earlier (by hand): the task still waits for that drain.
            if u > at {
                last = Some(last.map_or(u, |l: f64| l.max(u)));
            }
            continue;
        }
        let delay = target_group_raw(st, &t.target_group_arn)?
            .map(|g| g.settings().deregistration_delay_secs)
            .unwrap_or(0);
        if let Some(u) = deregister(st, &t, delay, at)? {
            last = Some(last.map_or(u, |l: f64| l.max(u)));
        }
        if let Some(task) = &t.task {
            let service = &task.service_name;
            service_event(
                st,
                cluster,
                service,
                format!(
                    "(service {service}) deregistered 1 targets in (target-group {})",
                    t.target_group_arn
                ),
                at,
            )?;
        }
    }
    Ok(last)
}

/// The task's IPv4 address (awsvpc): from its ENI attachment or its containers.
fn task_ip(rec: &TaskRecord) -> Option<String> {
    let from_attachment = rec.task.attachments.iter().flatten().find_map(|a| {
        a.details.iter().flatten().find_map(|d| {
            (d.name.as_deref() == Some("privateIPv4Address"))
                .then(|| d.value.clone())
                .flatten()
        })
    });
    from_attachment.or_else(|| {
        rec.task.containers.iter().find_map(|c| {
            c.network_interfaces
                .iter()
                .flatten()
                .find_map(|n| n.private_ipv4_address.clone())
        })
    })
}

/// Registers a service task with the target groups of its service's `loadBalancers`.
fn register_task_targets<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &str,
    rec: &TaskRecord,
    at: f64,
) -> Result<(), StoreError> {
    let Some(name) = rec
        .task
        .group
        .as_deref()
        .and_then(|g| g.strip_prefix("service:"))
    else {
        return Ok(());
    };
    let Some(svc) = crate::services::load_service(st, cluster, name)? else {
        return Ok(());
    };
    if svc.service.load_balancers.is_empty() {
        return Ok(());
    }
    let instance = crate::tasks::load_instance(st, cluster, &rec.instance_id)?;
    let awsvpc = rec.network_mode.as_deref() == Some("awsvpc");
    for lb in &svc.service.load_balancers {
        let (Some(tg_arn), Some(cname), Some(cport)) = (
            lb.target_group_arn.as_deref(),
            lb.container_name.as_deref(),
            lb.container_port,
        ) else {
            continue;
        };
        let Some(tg) = target_group_raw(st, tg_arn)? else {
            continue;
        };
        let Some(container) = rec
            .task
            .containers
            .iter()
            .find(|c| c.name.as_deref() == Some(cname))
        else {
            continue;
        };
        let az = instance.as_ref().and_then(instance_az);
        let (id, address, port) = if awsvpc {
            let Some(ip) = task_ip(rec) else { continue };
            let Ok(port) = u16::try_from(cport) else {
                continue;
            };
            (ip.clone(), ip, port)
        } else {
            let Some(inst) = &instance else { continue };
            let Some(host_port) = container
                .network_bindings
                .iter()
                .flatten()
                .find(|b| b.container_port == Some(cport) && b.host_port.is_some())
                .and_then(|b| b.host_port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            (rec.instance_id.clone(), inst.host_ip.clone(), host_port)
        };
        let old = load_target(st, tg_arn, &id, port)?;
        if old.is_none() && targets(st, tg_arn)?.len() >= MAX_TARGETS_PER_GROUP {
            continue;
        }
        // Another live task already is this target (awsvpc tasks on two machines with
        // the same private IP): never take it over, its task would lose its traffic.
        if let Some(o) = &old {
            if !o.draining() && o.task.as_ref().is_some_and(|t| t.task_id != rec.task.id()) {
                continue;
            }
        }
        let new = TargetRecord {
            target_group_arn: tg.target_group.target_group_arn.clone(),
            id,
            port,
            availability_zone: az,
            address,
            task: Some(TargetTask {
                cluster: cluster.to_string(),
                task_id: rec.task.id().to_string(),
                service_name: name.to_string(),
            }),
            registered_at: at,
            drain_until: None,
            health: TargetHealth::initial(),
            idle_on: Vec::new(),
        };
        put_target(st, old.as_ref(), &new)?;
        service_event(
            st,
            cluster,
            name,
            format!("(service {name}) registered 1 targets in (target-group {tg_arn})"),
            at,
        )?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "elb_tests.rs"]
mod tests;
