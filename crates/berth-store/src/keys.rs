//! Key layout of the state-machine tree. Binary keys with 0x00 separators so that
//! byte order equals the order ECS lists things in (family lexicographic, then revision).

pub const CLUSTER: &[u8] = b"c\0";
pub const TASK_DEF: &[u8] = b"td\0";
pub const FAMILY: &[u8] = b"tf\0";
pub const TAGS: &[u8] = b"tag\0";
pub const REVISION: &[u8] = b"rev\0";
/// `req\0{id}` -> the responses of an applied proposal (exactly-once retries).
pub const PROPOSAL: &[u8] = b"req\0";
/// `reqidx\0{index}` -> the proposal id applied at that index (for pruning).
pub const PROPOSAL_INDEX: &[u8] = b"reqidx\0";
/// `ci\0{cluster}\0{id}` -> ContainerInstanceRecord
pub const INSTANCE: &[u8] = b"ci\0";
/// `tk\0{cluster}\0{id}` -> TaskRecord
pub const TASK: &[u8] = b"tk\0";
/// `tx\0{cluster}\0{kind}\0{value}\0{task id}` -> empty: task indexes (instance,
/// family, startedBy, desiredStatus, group), so lists never scan every task.
pub const TASK_INDEX: &[u8] = b"tx\0";
/// `tok\0{cluster}\0{clientToken}` -> the task ids a RunTask created.
pub const CLIENT_TOKEN: &[u8] = b"tok\0";
/// `svc\0{cluster}\0{name}` -> ServiceRecord (one per name, any status).
pub const SERVICE: &[u8] = b"svc\0";
pub const JOIN_TOKEN: &[u8] = b"jt\0";
pub const META_LAST_APPLIED: &[u8] = b"m\0last_applied";
pub const META_MEMBERSHIP: &[u8] = b"m\0membership";

fn join(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>());
    k.extend_from_slice(prefix);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

pub fn cluster(name: &str) -> Vec<u8> {
    join(CLUSTER, &[name.as_bytes()])
}

/// All revisions of one family: `td\0{family}\0`.
pub fn task_def_family_prefix(family: &str) -> Vec<u8> {
    let mut k = join(TASK_DEF, &[family.as_bytes()]);
    k.push(0);
    k
}

pub fn task_def(family: &str, revision: u32) -> Vec<u8> {
    let mut k = task_def_family_prefix(family);
    k.extend_from_slice(&revision.to_be_bytes());
    k
}

/// Splits a task-definition key back into (family, revision).
pub fn parse_task_def(key: &[u8]) -> Option<(String, u32)> {
    let rest = key.strip_prefix(TASK_DEF)?;
    if rest.len() < 5 {
        return None;
    }
    let (fam, rev) = rest.split_at(rest.len() - 4);
    let fam = fam.strip_suffix(&[0])?;
    let rev = u32::from_be_bytes(rev.try_into().ok()?);
    Some((String::from_utf8(fam.to_vec()).ok()?, rev))
}

pub fn family(name: &str) -> Vec<u8> {
    join(FAMILY, &[name.as_bytes()])
}

pub fn tags(arn: &str) -> Vec<u8> {
    join(TAGS, &[arn.as_bytes()])
}

/// All container instances of a cluster: `ci\0{cluster}\0`.
pub fn instance_prefix(cluster: &str) -> Vec<u8> {
    let mut k = join(INSTANCE, &[cluster.as_bytes()]);
    k.push(0);
    k
}

pub fn instance(cluster: &str, id: &str) -> Vec<u8> {
    join(INSTANCE, &[cluster.as_bytes(), id.as_bytes()])
}

/// All tasks of a cluster: `tk\0{cluster}\0`.
pub fn task_prefix(cluster: &str) -> Vec<u8> {
    let mut k = join(TASK, &[cluster.as_bytes()]);
    k.push(0);
    k
}

pub fn task(cluster: &str, id: &str) -> Vec<u8> {
    join(TASK, &[cluster.as_bytes(), id.as_bytes()])
}

/// A task index: which property of a task it is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskIndexKind {
    Instance,
    Family,
    StartedBy,
    DesiredStatus,
    /// The task group (`service:<name>` for a service's tasks).
    Group,
}

impl TaskIndexKind {
    fn tag(self) -> &'static [u8] {
        match self {
            TaskIndexKind::Instance => b"i",
            TaskIndexKind::Family => b"f",
            TaskIndexKind::StartedBy => b"s",
            TaskIndexKind::DesiredStatus => b"d",
            TaskIndexKind::Group => b"g",
        }
    }
}

/// The ids of tasks whose `kind` equals `value`: `tx\0{cluster}\0{kind}\0{value}\0`.
pub fn task_index_prefix(cluster: &str, kind: TaskIndexKind, value: &str) -> Vec<u8> {
    let mut k = join(
        TASK_INDEX,
        &[cluster.as_bytes(), kind.tag(), value.as_bytes()],
    );
    k.push(0);
    k
}

pub fn task_index(cluster: &str, kind: TaskIndexKind, value: &str, task_id: &str) -> Vec<u8> {
    let mut k = task_index_prefix(cluster, kind, value);
    k.extend_from_slice(task_id.as_bytes());
    k
}

/// Client tokens of a cluster: `tok\0{cluster}\0`.
pub fn client_token_prefix(cluster: &str) -> Vec<u8> {
    let mut k = join(CLIENT_TOKEN, &[cluster.as_bytes()]);
    k.push(0);
    k
}

pub fn client_token(cluster: &str, token: &str) -> Vec<u8> {
    join(CLIENT_TOKEN, &[cluster.as_bytes(), token.as_bytes()])
}

/// All services of a cluster: `svc\0{cluster}\0`.
pub fn join_token(id: &str) -> Vec<u8> {
    [JOIN_TOKEN, id.as_bytes()].concat()
}

pub fn service_prefix(cluster: &str) -> Vec<u8> {
    let mut k = join(SERVICE, &[cluster.as_bytes()]);
    k.push(0);
    k
}

pub fn service(cluster: &str, name: &str) -> Vec<u8> {
    join(SERVICE, &[cluster.as_bytes(), name.as_bytes()])
}

pub fn proposal(id: &str) -> Vec<u8> {
    join(PROPOSAL, &[id.as_bytes()])
}

pub fn proposal_index(index: u64) -> Vec<u8> {
    let mut k = PROPOSAL_INDEX.to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k
}

pub fn revision(index: u64) -> Vec<u8> {
    let mut k = REVISION.to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_def_keys_sort_by_family_then_revision() {
        let mut keys = [
            task_def("auth-x", 1),
            task_def("auth", 10),
            task_def("auth", 2),
            task_def("auth_", 1),
        ];
        keys.sort();
        let parsed: Vec<_> = keys.iter().map(|k| parse_task_def(k).unwrap()).collect();
        assert_eq!(
            parsed,
            vec![
                ("auth".to_string(), 2),
                ("auth".to_string(), 10),
                ("auth-x".to_string(), 1),
                ("auth_".to_string(), 1)
            ]
        );
    }

    #[test]
    fn cluster_prefixes_do_not_overlap() {
        // "a" must not see "ab"'s instances or tasks.
        assert!(!instance("ab", "x").starts_with(&instance_prefix("a")));
        assert!(instance("a", "x").starts_with(&instance_prefix("a")));
        assert!(!task("ab", "x").starts_with(&task_prefix("a")));
        assert!(!service("ab", "x").starts_with(&service_prefix("a")));
        assert!(service("a", "x").starts_with(&service_prefix("a")));
        assert!(!service("a", "x").starts_with(TASK));
        let i = task_index("a", TaskIndexKind::Family, "web", "t1");
        assert!(i.starts_with(&task_index_prefix("a", TaskIndexKind::Family, "web")));
        assert!(!i.starts_with(&task_index_prefix("a", TaskIndexKind::Family, "we")));
        // no new prefix collides with the cluster prefix
        assert!(!instance("a", "x").starts_with(CLUSTER));
    }

    #[test]
    fn revision_keys_sort_numerically() {
        assert!(revision(9) < revision(10));
        assert!(revision(255) < revision(256));
    }
}
