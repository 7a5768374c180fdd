//! `berth token create|list|revoke`: the cluster's join tokens, through the signed API
//! (the endpoint and credentials as `berth logs` finds them).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Create a join token and print it (its secret is shown this once).
    Create(CreateArgs),
    /// List the join tokens (never their secrets).
    List(ApiArgs),
    /// Revoke a join token: it admits nothing from now on, and the agent sessions it
    /// admitted end within a heartbeat interval.
    Revoke {
        /// The token's id (the part before the dot), or `legacy` for the servers' own.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Args)]
pub struct ApiArgs {
    /// AWS CLI profile with the endpoint and credentials (default: $AWS_PROFILE, else
    /// `berth`, else `default`).
    #[arg(long)]
    pub profile: Option<String>,
    /// The API endpoint (default: $AWS_ENDPOINT_URL_ECS, $AWS_ENDPOINT_URL, the profile's
    /// endpoint_url, else https://127.0.0.1:7700).
    #[arg(long)]
    pub endpoint_url: Option<String>,
}

#[derive(Args)]
pub struct CreateArgs {
    /// Who presents it: `agent` (berth agent), `lb` (berth lb edge nodes) or `server`
    /// (berth server --join: it receives the cluster CA).
    #[arg(long)]
    pub kind: String,
    /// How long it admits new machines: `30m`, `24h`, `7d`, or seconds (default: no
    /// expiry). A machine that joined keeps reconnecting with it until it is revoked.
    #[arg(long)]
    pub ttl: Option<String>,
    /// How many machines it may admit (agent tokens).
    #[arg(long)]
    pub max_uses: Option<u32>,
    #[arg(long)]
    pub description: Option<String>,
    /// Print only the token (for scripts).
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `90`, `90s`, `30m`, `24h`, `7d` → a duration.
pub fn parse_ttl(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| {
        anyhow::anyhow!("--ttl must be a number with s, m, h or d (like 24h), not '{s}'")
    })?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("--ttl must be a number with s, m, h or d (like 24h), not '{s}'"),
    };
    let secs = n
        .checked_mul(scale)
        .ok_or_else(|| anyhow::anyhow!("--ttl '{s}' is too long"))?;
    if secs == 0 {
        bail!("--ttl must be more than zero");
    }
    Ok(Duration::from_secs(secs))
}

fn when(epoch: Option<f64>) -> String {
    let Some(e) = epoch else {
        return "-".into();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let d = e - now;
    let (v, past) = (d.abs(), d < 0.0);
    let text = if v < 120.0 {
        format!("{v:.0}s")
    } else if v < 7200.0 {
        format!("{:.0}m", v / 60.0)
    } else if v < 172_800.0 {
        format!("{:.0}h", v / 3600.0)
    } else {
        format!("{:.0}d", v / 86400.0)
    };
    if past {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

pub async fn run(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create(a) => {
            let client = crate::client::Client::from_env(
                a.api.profile.as_deref(),
                a.api.endpoint_url.as_deref(),
            )?;
            let mut body = json!({"kind": a.kind});
            if let Some(t) = &a.ttl {
                body["ttlSeconds"] = parse_ttl(t)?.as_secs().into();
            }
            if let Some(n) = a.max_uses {
                body["maxUses"] = n.into();
            }
            if let Some(d) = &a.description {
                body["description"] = d.clone().into();
            }
            let v = client.call("CreateJoinToken", &body).await?;
            let token = v["token"].as_str().unwrap_or_default();
            if a.quiet {
                println!("{token}");
                return Ok(());
            }
            let t = &v["joinToken"];
            println!("{token}");
            eprintln!(
                "join token {} ({} nodes), expires: {}, uses: {}",
                t["id"].as_str().unwrap_or_default(),
                t["kind"].as_str().unwrap_or_default(),
                when(t["expiresAt"].as_f64()),
                t["maxUses"]
                    .as_u64()
                    .map(|m| format!("at most {m}"))
                    .unwrap_or_else(|| "no limit".into()),
            );
            eprintln!("the secret is shown this once; the cluster keeps only its SHA-256");
            Ok(())
        }
        TokenCmd::List(api) => {
            let client = crate::client::Client::from_env(
                api.profile.as_deref(),
                api.endpoint_url.as_deref(),
            )?;
            let v = client.call("ListJoinTokens", &json!({})).await?;
            println!(
                "{:<10} {:<6} {:<12} {:<10} {:<12} DESCRIPTION",
                "ID", "KIND", "EXPIRES", "USES", "REVOKED"
            );
            for t in v["joinTokens"].as_array().cloned().unwrap_or_default() {
                let uses = match t["maxUses"].as_u64() {
                    Some(m) => format!("{}/{m}", t["uses"].as_u64().unwrap_or(0)),
                    None => t["uses"].as_u64().unwrap_or(0).to_string(),
                };
                println!(
                    "{:<10} {:<6} {:<12} {:<10} {:<12} {}",
                    t["id"].as_str().unwrap_or_default(),
                    t["kind"].as_str().unwrap_or_default(),
                    when(t["expiresAt"].as_f64()),
                    uses,
                    when(t["revokedAt"].as_f64()),
                    t["description"].as_str().unwrap_or_default(),
                );
            }
            Ok(())
        }
        TokenCmd::Revoke { id, api } => {
            let client = crate::client::Client::from_env(
                api.profile.as_deref(),
                api.endpoint_url.as_deref(),
            )?;
            let v: Value = client.call("RevokeJoinToken", &json!({"id": id})).await?;
            println!(
                "join token {} revoked",
                v["joinToken"]["id"].as_str().unwrap_or_default()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1w").unwrap_err().to_string().contains("'1w'"));
        assert!(parse_ttl("h").is_err());
    }
}
