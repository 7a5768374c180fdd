//! Clusters: the apply functions of CreateCluster, UpdateCluster and DeleteCluster. (What
//! runs in a cluster lives in [`crate::tasks`] and [`crate::services`]; DeleteCluster asks
//! both whether the cluster is empty.)

use berth_model::{ApiError, Cluster, ClusterSetting, Tag};

use crate::command::{err, inactive_cluster, Change, Response};
use crate::keys;
use crate::kv::{KvRead, Staged, StoreError};

/// Creates a cluster, or answers with the existing ACTIVE one of that name.
pub(crate) fn create_cluster<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    cluster: &Cluster,
    tags: &[Tag],
) -> Result<Response, StoreError> {
    let key = keys::cluster(&cluster.cluster_name.clone().unwrap_or_default());
    if let Some(existing) = st.get_json::<Cluster>(&key)? {
        if existing.status.as_deref() == Some("ACTIVE") {
            // The answer carries the cluster's tags, read here so that it is right
            // whichever server the request came through.
            let mut existing = existing;
            let arn = existing.cluster_arn.clone().unwrap_or_default();
            let tags: Vec<Tag> = st.get_json(&keys::tags(&arn))?.unwrap_or_default();
            existing.tags = (!tags.is_empty()).then_some(tags);
            return Ok(Response::Cluster {
                cluster: Box::new(existing),
            });
        }
    }
    let arn = cluster.cluster_arn.clone().unwrap_or_default();
    st.put_json(key, cluster)?;
    // A re-created cluster starts with exactly the tags given now.
    if tags.is_empty() {
        st.delete(keys::tags(&arn));
    } else {
        st.put_json(keys::tags(&arn), &tags)?;
    }
    st.changes.push(Change::Cluster {
        name: cluster.cluster_name.clone().unwrap_or_default(),
    });
    st.changes.push(Change::Tags { arn });
    let mut answer = cluster.clone();
    answer.tags = (!tags.is_empty()).then(|| tags.to_vec());
    Ok(Response::Cluster {
        cluster: Box::new(answer),
    })
}

/// Merges settings by name; replaces the configuration and Service Connect defaults given.
pub(crate) fn update_cluster<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    name: &str,
    settings: Option<&[ClusterSetting]>,
    configuration: Option<&serde_json::Value>,
    service_connect_defaults: Option<&serde_json::Value>,
) -> Result<Response, StoreError> {
    let key = keys::cluster(name);
    let Some(mut c) = st.get_json::<Cluster>(&key)? else {
        return Ok(err(ApiError::cluster_not_found()));
    };
    if c.status.as_deref() != Some("ACTIVE") {
        return Ok(err(inactive_cluster()));
    }
    if let Some(s) = settings {
        let mut merged = c.settings.clone().unwrap_or_default();
        for new in s {
            match merged.iter_mut().find(|old| old.name == new.name) {
                Some(old) => old.value = new.value.clone(),
                None => merged.push(new.clone()),
            }
        }
        c.settings = Some(merged);
    }
    if let Some(v) = configuration {
        c.configuration = Some(v.clone());
    }
    if let Some(v) = service_connect_defaults {
        c.service_connect_defaults = Some(v.clone());
    }
    st.put_json(key, &c)?;
    st.changes.push(Change::Cluster {
        name: name.to_string(),
    });
    Ok(Response::Cluster {
        cluster: Box::new(c),
    })
}

/// Marks an empty ACTIVE cluster INACTIVE and drops its tags.
pub(crate) fn delete_cluster<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    name: &str,
) -> Result<Response, StoreError> {
    let key = keys::cluster(name);
    let Some(mut c) = st.get_json::<Cluster>(&key)? else {
        return Ok(err(ApiError::cluster_not_found()));
    };
    if c.status.as_deref() != Some("ACTIVE") {
        // Deleting an INACTIVE cluster again answers with it, as ECS does.
        return Ok(Response::Cluster {
            cluster: Box::new(c),
        });
    }
    if let Some(e) = crate::tasks::delete_cluster_precondition(st, name)? {
        return Ok(err(e));
    }
    if let Some(e) = crate::services::delete_cluster_precondition(st, name)? {
        return Ok(err(e));
    }
    c.status = Some("INACTIVE".to_string());
    st.put_json(key, &c)?;
    // Tags go with the resource (ECS deletes them with it).
    let arn = c.cluster_arn.clone().unwrap_or_default();
    st.delete(keys::tags(&arn));
    st.changes.push(Change::Cluster {
        name: name.to_string(),
    });
    st.changes.push(Change::Tags { arn });
    Ok(Response::Cluster {
        cluster: Box::new(c),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Request, TagTarget, COMMAND_VERSION};
    use crate::test_util::{cluster, ctx, error_of, register, run, Map};

    /// CreateCluster for an existing name, with no tags.
    fn recreate(name: &str) -> Command {
        Command::CreateCluster {
            cluster: Cluster {
                cluster_name: Some(name.into()),
                status: Some("ACTIVE".into()),
                ..Default::default()
            },
            tags: vec![],
        }
    }

    #[test]
    fn create_cluster_is_idempotent_and_keeps_the_first_tags() {
        let mut s = Map::new();
        run(&mut s, cluster("a"));
        let again = recreate("a");
        match run(&mut s, again) {
            Response::Cluster { cluster } => {
                assert_eq!(
                    cluster.cluster_arn.as_deref(),
                    Some(ctx().cluster("a").as_str())
                )
            }
            other => panic!("{other:?}"),
        }
        let tags: Vec<Tag> = Staged::new(&s)
            .get_json(&keys::tags(&ctx().cluster("a")))
            .unwrap()
            .unwrap();
        assert_eq!(tags.len(), 1);
    }

    #[test]
    fn deleted_cluster_is_inactive_and_refuses_updates_and_tags() {
        let mut s = Map::new();
        run(&mut s, cluster("a"));
        match run(&mut s, Command::DeleteCluster { name: "a".into() }) {
            Response::Cluster { cluster } => {
                assert_eq!(cluster.status.as_deref(), Some("INACTIVE"))
            }
            other => panic!("{other:?}"),
        }
        let before = s.clone();
        let e = run(
            &mut s,
            Command::UpdateCluster {
                name: "a".into(),
                settings: Some(vec![]),
                configuration: None,
                service_connect_defaults: None,
            },
        );
        assert!(error_of(&e).message.contains("inactive"));
        let e = run(
            &mut s,
            Command::TagResource {
                arn: ctx().cluster("a"),
                target: TagTarget::Cluster { name: "a".into() },
                tags: vec![Tag {
                    key: "k".into(),
                    value: "v".into(),
                }],
            },
        );
        assert_eq!(
            error_of(&e).kind,
            berth_model::ErrorKind::InvalidParameterException
        );
        assert_eq!(s, before, "a refused command changes nothing");
        let e = run(
            &mut s,
            Command::DeleteCluster {
                name: "nope".into(),
            },
        );
        assert_eq!(
            error_of(&e).kind,
            berth_model::ErrorKind::ClusterNotFoundException
        );
    }

    #[test]
    fn create_cluster_answers_with_its_tags_and_delete_drops_them() {
        let mut s = Map::new();
        let tags_of = |r: &Response| match r {
            Response::Cluster { cluster } => cluster.tags.clone(),
            other => panic!("{other:?}"),
        };
        let expected = Some(vec![Tag {
            key: "env".into(),
            value: "dev".into(),
        }]);
        assert_eq!(tags_of(&run(&mut s, cluster("a"))), expected);
        // Creating it again answers with the stored tags, from the state machine itself.
        let again = recreate("a");
        assert_eq!(tags_of(&run(&mut s, again)), expected);
        run(&mut s, Command::DeleteCluster { name: "a".into() });
        let stored: Option<Vec<Tag>> = Staged::new(&s)
            .get_json(&keys::tags(&ctx().cluster("a")))
            .unwrap();
        assert_eq!(stored, None, "tags go with the deleted cluster");
    }

    #[test]
    fn update_cluster_merges_settings_by_name() {
        let mut s = Map::new();
        run(&mut s, cluster("a"));
        let set = |v: &str| Command::UpdateCluster {
            name: "a".into(),
            settings: Some(vec![ClusterSetting {
                name: Some("containerInsights".into()),
                value: Some(v.into()),
            }]),
            configuration: None,
            service_connect_defaults: None,
        };
        run(&mut s, set("enabled"));
        match run(&mut s, set("disabled")) {
            Response::Cluster { cluster } => {
                let settings = cluster.settings.unwrap();
                assert_eq!(settings.len(), 1);
                assert_eq!(settings[0].value.as_deref(), Some("disabled"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn commands_round_trip_through_the_log_encoding() {
        for c in [
            cluster("a"),
            register("x"),
            Command::DeleteCluster { name: "a".into() },
        ] {
            let req = Request::new(c);
            let bytes = serde_json::to_vec(&req).unwrap();
            let back: Request = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(back, req);
            assert_eq!(back.v, COMMAND_VERSION);
        }
    }
}
