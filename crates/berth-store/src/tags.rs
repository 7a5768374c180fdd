//! ECS tags (TagResource, UntagResource) of clusters, task definitions and services, kept
//! under the tag key of the resource's ARN. (ELBv2's AddTags and RemoveTags are in
//! [`crate::elb`].)

use berth_model::{ApiError, Cluster, Tag, TaskDefinition};

use crate::command::{err, inactive_cluster, Change, Response, TagTarget};
use crate::keys;
use crate::kv::{KvRead, Staged, StoreError};

/// Merges `tags` by key into the resource's tags (at most 50).
pub(crate) fn tag_resource<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    arn: &str,
    target: &TagTarget,
    tags: &[Tag],
) -> Result<Response, StoreError> {
    if let Some(e) = check_tag_target(st, target)? {
        return Ok(err(e));
    }
    let key = keys::tags(arn);
    let mut current: Vec<Tag> = st.get_json(&key)?.unwrap_or_default();
    for t in tags {
        match current.iter_mut().find(|c| c.key == t.key) {
            Some(c) => c.value = t.value.clone(),
            None => current.push(t.clone()),
        }
    }
    if current.len() > 50 {
        return Ok(err(ApiError::invalid(format!(
            "Resource {arn} would have {} tags; at most 50 are allowed.",
            current.len()
        ))));
    }
    st.put_json(key, &current)?;
    st.changes.push(Change::Tags {
        arn: arn.to_string(),
    });
    Ok(Response::Ok)
}

/// Removes the tags with these keys from the resource.
pub(crate) fn untag_resource<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    arn: &str,
    target: &TagTarget,
    tag_keys: &[String],
) -> Result<Response, StoreError> {
    if let Some(e) = check_tag_target(st, target)? {
        return Ok(err(e));
    }
    let key = keys::tags(arn);
    let mut current: Vec<Tag> = st.get_json(&key)?.unwrap_or_default();
    current.retain(|t| !tag_keys.contains(&t.key));
    if current.is_empty() {
        st.delete(key);
    } else {
        st.put_json(key, &current)?;
    }
    st.changes.push(Change::Tags {
        arn: arn.to_string(),
    });
    Ok(Response::Ok)
}

fn check_tag_target<R: KvRead + ?Sized>(
    st: &Staged<'_, R>,
    target: &TagTarget,
) -> Result<Option<ApiError>, StoreError> {
    Ok(match target {
        TagTarget::Cluster { name } => match st.get_json::<Cluster>(&keys::cluster(name))? {
            None => Some(ApiError::cluster_not_found()),
            Some(c) if c.status.as_deref() != Some("ACTIVE") => Some(inactive_cluster()),
            Some(_) => None,
        },
        TagTarget::TaskDefinition { family, revision } => {
            match st.get_json::<TaskDefinition>(&keys::task_def(family, *revision))? {
                Some(td) if td.status.as_deref() != Some("DELETE_IN_PROGRESS") => None,
                _ => Some(ApiError::new(
                    berth_model::ErrorKind::ResourceNotFoundException,
                    format!(
                        "The specified resource was not found: task-definition/{family}:{revision}"
                    ),
                )),
            }
        }
        TagTarget::Service { cluster, name } => {
            match crate::services::load_service(st, cluster, name)? {
                Some(s) if s.service.status != "INACTIVE" => None,
                _ => Some(ApiError::new(
                    berth_model::ErrorKind::ResourceNotFoundException,
                    format!("The specified resource was not found: service/{cluster}/{name}"),
                )),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::test_util::{ctx, error_of, register, run, Map};

    #[test]
    fn tags_merge_overwrite_and_untag() {
        let mut s = Map::new();
        run(&mut s, register("a"));
        let arn = ctx().task_definition("a", 1);
        let target = TagTarget::TaskDefinition {
            family: "a".into(),
            revision: 1,
        };
        let tag = |k: &str, v: &str| Tag {
            key: k.into(),
            value: v.into(),
        };
        run(
            &mut s,
            Command::TagResource {
                arn: arn.clone(),
                target: target.clone(),
                tags: vec![tag("a", "1"), tag("b", "2")],
            },
        );
        run(
            &mut s,
            Command::TagResource {
                arn: arn.clone(),
                target: target.clone(),
                tags: vec![tag("a", "9")],
            },
        );
        run(
            &mut s,
            Command::UntagResource {
                arn: arn.clone(),
                target: target.clone(),
                keys: vec!["b".into()],
            },
        );
        let tags: Vec<Tag> = Staged::new(&s)
            .get_json(&keys::tags(&arn))
            .unwrap()
            .unwrap();
        assert_eq!(tags, vec![tag("a", "9")]);
        let too_many: Vec<Tag> = (0..50).map(|i| tag(&format!("k{i}"), "v")).collect();
        let e = run(
            &mut s,
            Command::TagResource {
                arn: arn.clone(),
                target: target.clone(),
                tags: too_many,
            },
        );
        assert!(error_of(&e).message.contains("51"));
        let missing = TagTarget::TaskDefinition {
            family: "a".into(),
            revision: 2,
        };
        let e = run(
            &mut s,
            Command::TagResource {
                arn,
                target: missing,
                tags: vec![tag("x", "y")],
            },
        );
        assert_eq!(
            error_of(&e).kind,
            berth_model::ErrorKind::ResourceNotFoundException
        );
    }
}
