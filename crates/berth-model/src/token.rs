//! Join tokens: what a new machine presents to join the cluster (as kubeadm's bootstrap
//! tokens and k3s's join tokens). A token is `<id>.<secret>`; the cluster keeps its id,
//! kind, limits and the SHA-256 of its secret, never the secret itself. The token a
//! server generates into `<data-dir>/join-token` (or is given with `--join-token`) keeps
//! working as a non-expiring agent token, [`LEGACY_TOKEN_ID`], until it is revoked.
//!
//! Pure: the caller supplies the time and the random secret.

use serde::{Deserialize, Serialize};

/// The id under which the server's own `--join-token` (round 1's token) is listed and
/// revoked.
pub const LEGACY_TOKEN_ID: &str = "legacy";

/// Length of a token id and of its secret (lowercase letters and digits).
pub const TOKEN_ID_LEN: usize = 8;
pub const TOKEN_SECRET_LEN: usize = 32;

/// Who may present a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// `berth agent`: registers its machine as a container instance.
    Agent,
    /// `berth lb` edge nodes: read the load balancer feed and report drains.
    Lb,
    /// `berth server --join`: a new server (it receives the cluster CA).
    Server,
}

impl TokenKind {
    pub fn parse(s: &str) -> Result<TokenKind, String> {
        match s {
            "agent" => Ok(TokenKind::Agent),
            "lb" => Ok(TokenKind::Lb),
            "server" => Ok(TokenKind::Server),
            other => Err(format!(
                "token kind must be agent, lb or server, not '{other}'"
            )),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            TokenKind::Agent => "agent",
            TokenKind::Lb => "lb",
            TokenKind::Server => "server",
        }
    }
}

/// A join token as the cluster stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinToken {
    pub id: String,
    pub kind: TokenKind,
    #[serde(default)]
    pub description: String,
    /// Hex SHA-256 of the secret (empty for [`LEGACY_TOKEN_ID`], whose secret the servers
    /// hold in their configuration).
    #[serde(default)]
    pub secret_sha256: String,
    pub created_at: f64,
    /// Epoch seconds after which the token admits no new machine.
    #[serde(default)]
    pub expires_at: Option<f64>,
    /// How many machines it may admit at most.
    #[serde(default)]
    pub max_uses: Option<u32>,
    /// How many machines it admitted.
    #[serde(default)]
    pub uses: u32,
    #[serde(default)]
    pub revoked_at: Option<f64>,
}

/// Why a token does not admit a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefusal {
    Malformed,
    Unknown(String),
    WrongSecret(String),
    Revoked(String),
    Expired(String),
    UsedUp(String, u32),
    WrongKind {
        id: String,
        is: TokenKind,
        wanted: TokenKind,
    },
}

impl std::fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenRefusal::Malformed => write!(f, "the join token is not a berth join token (<id>.<secret>, or the servers' --join-token)"),
            TokenRefusal::Unknown(id) => write!(f, "join token {id} is not known to this cluster"),
            TokenRefusal::WrongSecret(id) => write!(f, "the secret of join token {id} is wrong"),
            TokenRefusal::Revoked(id) => write!(f, "join token {id} was revoked"),
            TokenRefusal::Expired(id) => write!(f, "join token {id} has expired"),
            TokenRefusal::UsedUp(id, n) => write!(f, "join token {id} was already used {n} times, its limit"),
            TokenRefusal::WrongKind { id, is, wanted } => write!(
                f,
                "join token {id} is for {} nodes, not {} nodes",
                is.as_str(),
                wanted.as_str()
            ),
        }
    }
}

/// Splits a presented token into (id, secret); `None` if it is not of that shape.
pub fn split_token(s: &str) -> Option<(&str, &str)> {
    let (id, secret) = s.split_once('.')?;
    let ok = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (ok(id, TOKEN_ID_LEN) && ok(secret, TOKEN_SECRET_LEN)).then_some((id, secret))
}

impl JoinToken {
    /// Whether this token may be presented by a `wanted` node at `now`. `new_machine`:
    /// the machine is not registered yet, so expiry and the use limit apply (a machine
    /// that joined keeps reconnecting with the token it joined with until it is revoked).
    pub fn admits(
        &self,
        wanted: TokenKind,
        now: f64,
        new_machine: bool,
    ) -> Result<(), TokenRefusal> {
        if self.revoked_at.is_some() {
            return Err(TokenRefusal::Revoked(self.id.clone()));
        }
        if self.kind != wanted {
            return Err(TokenRefusal::WrongKind {
                id: self.id.clone(),
                is: self.kind,
                wanted,
            });
        }
        if new_machine {
            if self.expires_at.is_some_and(|e| now >= e) {
                return Err(TokenRefusal::Expired(self.id.clone()));
            }
            if self.max_uses.is_some_and(|m| self.uses >= m) {
                return Err(TokenRefusal::UsedUp(self.id.clone(), self.uses));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> JoinToken {
        JoinToken {
            id: "abcd1234".into(),
            kind: TokenKind::Agent,
            description: String::new(),
            secret_sha256: String::new(),
            created_at: 100.0,
            expires_at: Some(200.0),
            max_uses: Some(2),
            uses: 1,
            revoked_at: None,
        }
    }

    #[test]
    fn shape() {
        let s = format!("abcd1234.{}", "a".repeat(32));
        assert_eq!(split_token(&s), Some(("abcd1234", "a".repeat(32).as_str())));
        assert_eq!(split_token("abcd1234"), None);
        assert_eq!(split_token(&format!("ABCD1234.{}", "a".repeat(32))), None);
        assert_eq!(split_token(&format!("abcd123.{}", "a".repeat(32))), None);
        assert_eq!(split_token(&format!("abcd1234.{}", "a".repeat(31))), None);
    }

    #[test]
    fn admission() {
        let t = token();
        assert_eq!(t.admits(TokenKind::Agent, 150.0, true), Ok(()));
        assert_eq!(
            t.admits(TokenKind::Agent, 200.0, true),
            Err(TokenRefusal::Expired("abcd1234".into()))
        );
        // A machine that joined with it reconnects after expiry.
        assert_eq!(t.admits(TokenKind::Agent, 900.0, false), Ok(()));
        assert!(matches!(
            t.admits(TokenKind::Lb, 150.0, true),
            Err(TokenRefusal::WrongKind { .. })
        ));
        let used = JoinToken { uses: 2, ..token() };
        assert_eq!(
            used.admits(TokenKind::Agent, 150.0, true),
            Err(TokenRefusal::UsedUp("abcd1234".into(), 2))
        );
        let revoked = JoinToken {
            revoked_at: Some(120.0),
            ..token()
        };
        assert_eq!(
            revoked.admits(TokenKind::Agent, 150.0, false),
            Err(TokenRefusal::Revoked("abcd1234".into()))
        );
        assert_eq!(TokenKind::parse("agent"), Ok(TokenKind::Agent));
        assert_eq!(TokenKind::parse("server"), Ok(TokenKind::Server));
        assert!(TokenKind::parse("admin").unwrap_err().contains("'admin'"));
    }
}
