//! Join tokens (see `berth_model::token`): created and revoked by operators, consumed
//! when a new machine registers with one. Only the SHA-256 of a token's secret is here.

use berth_model::token::{split_token, JoinToken, TokenKind, TokenRefusal, LEGACY_TOKEN_ID};
use berth_model::{ApiError, ErrorKind};
use sha2::{Digest, Sha256};

use crate::command::{err, Change, Response};
use crate::keys;
use crate::kv::{KvRead, Staged, StoreError};

pub(crate) fn load<R: KvRead + ?Sized>(kv: &R, id: &str) -> Result<Option<JoinToken>, StoreError> {
    crate::kv::get_json(kv, &keys::join_token(id))
}

/// Every token, by id.
pub(crate) fn list<R: KvRead + ?Sized>(kv: &R) -> Result<Vec<JoinToken>, StoreError> {
    crate::kv::scan_json(kv, keys::JOIN_TOKEN)
}

fn put<R: KvRead + ?Sized>(st: &mut Staged<'_, R>, t: &JoinToken) -> Result<(), StoreError> {
    st.put_json(keys::join_token(&t.id), t)?;
    st.changes.push(Change::JoinToken { id: t.id.clone() });
    Ok(())
}

pub(crate) fn create_join_token<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    token: &JoinToken,
) -> Result<Response, StoreError> {
    if token.id == LEGACY_TOKEN_ID || load(st, &token.id)?.is_some() {
        return Ok(err(ApiError::new(
            ErrorKind::ConflictException,
            format!("A join token with id {} exists already.", token.id),
        )));
    }
    put(st, token)?;
    Ok(Response::JoinToken {
        token: Box::new(token.clone()),
    })
}

pub(crate) fn revoke_join_token<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    id: &str,
    at: f64,
) -> Result<Response, StoreError> {
    let mut t = match load(st, id)? {
        Some(t) => t,
        // The servers' own token is not stored until it is revoked.
        None if id == LEGACY_TOKEN_ID => JoinToken {
            id: id.to_string(),
            kind: TokenKind::Agent,
            description: "the servers' --join-token".into(),
            secret_sha256: String::new(),
            created_at: at,
            expires_at: None,
            max_uses: None,
            uses: 0,
            revoked_at: None,
        },
        None => {
            return Ok(err(ApiError::new(
                ErrorKind::ResourceNotFoundException,
                format!("Join token {id} was not found."),
            )))
        }
    };
    if t.revoked_at.is_none() {
        t.revoked_at = Some(at);
        put(st, &t)?;
    }
    Ok(Response::JoinToken { token: Box::new(t) })
}

/// Machines registered before join tokens had ids joined with the servers' own token.
pub fn joined_with(rec: &berth_model::ContainerInstanceRecord) -> &str {
    rec.join_token_id.as_deref().unwrap_or(LEGACY_TOKEN_ID)
}

/// A new machine joins with token `id` at `at`: counts the use, or says why not.
pub(crate) fn consume<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    id: &str,
    kind: TokenKind,
    at: f64,
) -> Result<Result<(), String>, StoreError> {
    let t = match load(st, id)? {
        Some(t) => t,
        None if id == LEGACY_TOKEN_ID => return Ok(Ok(())),
        None => return Ok(Err(format!("join token {id} is not known to this cluster"))),
    };
    if let Err(e) = t.admits(kind, at, true) {
        return Ok(Err(e.to_string()));
    }
    if id != LEGACY_TOKEN_ID {
        let mut t = t;
        t.uses += 1;
        put(st, &t)?;
    }
    Ok(Ok(()))
}

/// A new `berth lb` edge node or server joined with token `id`: counts the use (agents'
/// uses are counted as they register).
pub(crate) fn use_join_token<R: KvRead + ?Sized>(
    st: &mut Staged<'_, R>,
    id: &str,
    kind: TokenKind,
    at: f64,
) -> Result<Response, StoreError> {
    Ok(match consume(st, id, kind, at)? {
        Ok(()) => Response::Ok,
        Err(e) => err(ApiError::new(ErrorKind::AccessDeniedException, e)),
    })
}

/// Hex SHA-256 of a token's secret: all the cluster keeps of it.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time equality of two byte strings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a token presented by a `kind` node at `now`, against the servers' own token
/// (`legacy`: `--join-token`, an agent token) and the stored ones. `joined_with`: the
/// token the machine is registered with, if it is (an ACTIVE or DRAINING instance); a
/// machine presenting that same token reconnects past its expiry and use limit, any
/// other presentation is a new machine's ([`JoinToken::admits`]). Answers the id of the
/// token that admits it.
pub fn check_presented(
    reader: &crate::StateReader,
    legacy: Option<&str>,
    presented: &str,
    kind: TokenKind,
    now: f64,
    joined_with: Option<&str>,
) -> Result<String, TokenRefusal> {
    let lookup = |id: &str| {
        reader
            .join_token(id)
            .map_err(|_| TokenRefusal::Unknown(id.to_string()))
    };
    if legacy.is_some_and(|l| !l.is_empty() && same(l.as_bytes(), presented.as_bytes())) {
        // The servers' own token: an agent token that never expires. `berth lb` edge
        // nodes have presented it since before tokens had kinds, so it admits them too.
        if let Some(t) = lookup(LEGACY_TOKEN_ID)? {
            if t.revoked_at.is_some() {
                return Err(TokenRefusal::Revoked(LEGACY_TOKEN_ID.into()));
            }
        }
        return Ok(LEGACY_TOKEN_ID.to_string());
    }
    let (id, secret) = split_token(presented).ok_or(TokenRefusal::Malformed)?;
    let t = lookup(id)?.ok_or_else(|| TokenRefusal::Unknown(id.to_string()))?;
    if !same(hash_secret(secret).as_bytes(), t.secret_sha256.as_bytes()) {
        return Err(TokenRefusal::WrongSecret(id.to_string()));
    }
    t.admits(kind, now, joined_with != Some(id))?;
    Ok(t.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::test_util::{run, Map};

    fn token(id: &str, max_uses: Option<u32>, expires_at: Option<f64>) -> JoinToken {
        JoinToken {
            id: id.into(),
            kind: TokenKind::Agent,
            description: String::new(),
            secret_sha256: "00".into(),
            created_at: 1.0,
            expires_at,
            max_uses,
            uses: 0,
            revoked_at: None,
        }
    }

    fn register(id: &str, token: &str, at: f64) -> Command {
        Command::RegisterContainerInstance {
            ctx: crate::test_util::ctx(),
            hello: berth_model::agent::Hello {
                protocol_version: 1,
                cluster: "c".into(),
                instance_id: id.into(),
                ..Default::default()
            },
            at,
            token: Some(token.into()),
        }
    }

    fn refusal(r: Response) -> String {
        match r {
            Response::Error { error } => {
                assert_eq!(error.kind, ErrorKind::AccessDeniedException);
                error.message
            }
            other => panic!("admitted: {other:?}"),
        }
    }

    #[test]
    fn a_token_admits_new_machines_within_its_limits() {
        let mut kv = Map::new();
        run(&mut kv, crate::test_util::cluster("c"));
        let t = token("abcd1234", Some(1), Some(100.0));
        assert!(matches!(
            run(&mut kv, Command::CreateJoinToken { token: t.clone() }),
            Response::JoinToken { .. }
        ));
        assert!(matches!(
            run(&mut kv, Command::CreateJoinToken { token: t }),
            Response::Error { error } if error.kind == ErrorKind::ConflictException
        ));
        assert!(matches!(
            run(&mut kv, register("i1", "abcd1234", 50.0)),
            Response::ContainerInstance { .. }
        ));
        assert_eq!(load(&kv, "abcd1234").unwrap().unwrap().uses, 1);
        assert!(refusal(run(&mut kv, register("i2", "abcd1234", 50.0))).contains("limit"));
        // The machine that joined with it reconnects, past the limit and the expiry.
        assert!(matches!(
            run(&mut kv, register("i1", "abcd1234", 500.0)),
            Response::ContainerInstance { .. }
        ));
        let rec = crate::tasks::load_instance(&kv, "c", "i1")
            .unwrap()
            .unwrap();
        assert_eq!(rec.join_token_id.as_deref(), Some("abcd1234"));
        run(
            &mut kv,
            Command::CreateJoinToken {
                token: token("efgh5678", None, Some(100.0)),
            },
        );
        assert!(refusal(run(&mut kv, register("i3", "efgh5678", 100.0))).contains("expired"));
        // Another token is no way back in for a registered machine: it joins anew.
        assert!(refusal(run(&mut kv, register("i1", "efgh5678", 100.0))).contains("expired"));
        assert!(refusal(run(&mut kv, register("i3", "zzzz0000", 10.0))).contains("not known"));
        assert!(crate::tasks::load_instance(&kv, "c", "i3")
            .unwrap()
            .is_none());
    }

    #[test]
    fn revoking() {
        let mut kv = Map::new();
        run(&mut kv, crate::test_util::cluster("c"));
        assert!(matches!(
            run(&mut kv, Command::RevokeJoinToken { id: "nope0000".into(), at: 5.0 }),
            Response::Error { error } if error.kind == ErrorKind::ResourceNotFoundException
        ));
        // The servers' own token works until it is revoked, then admits no new machine.
        assert!(matches!(
            run(&mut kv, register("i1", LEGACY_TOKEN_ID, 1.0)),
            Response::ContainerInstance { .. }
        ));
        run(
            &mut kv,
            Command::RevokeJoinToken {
                id: LEGACY_TOKEN_ID.into(),
                at: 5.0,
            },
        );
        assert_eq!(
            load(&kv, LEGACY_TOKEN_ID).unwrap().unwrap().revoked_at,
            Some(5.0)
        );
        assert!(refusal(run(&mut kv, register("i2", LEGACY_TOKEN_ID, 6.0))).contains("revoked"));
        assert_eq!(list(&kv).unwrap().len(), 1);
    }
}
