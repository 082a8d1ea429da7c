//! `gatehouse approvals list|vote` and `gatehouse grants list|revoke`: the approval service's
//! API from the command line, for approvers without a chat account.
//!
//! Where to connect and as whom: `--server URL --token-file FILE` (or the environment
//! variables `GATEHOUSE_APPROVAL_URL`, `GATEHOUSE_TOKEN_FILE`), or, against `gatehouse up
//! --sandbox`, `--data-dir DIR --as IDENTITY`, which reads the URL and that demo approver's
//! token from the data directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use gatehouse_approval::api::HoldSummary;
use gatehouse_approval::client::{ApprovalClient, ClientError};
use gatehouse_events::Ballot;

/// Where the approval service is and who is calling.
#[derive(Debug, Args)]
pub struct Connection {
    /// The approval service's URL.
    #[arg(long, env = "GATEHOUSE_APPROVAL_URL", value_name = "URL")]
    server: Option<String>,
    /// A file holding a bearer token from one of the service's API issuers.
    #[arg(long, env = "GATEHOUSE_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// CA bundle for the service's certificate, if privately issued.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// A `gatehouse up --sandbox` data directory: the URL and demo tokens come from it.
    #[arg(long, env = "GATEHOUSE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// With --data-dir: act as this demo approver (its token is DIR/tokens/IDENTITY.jwt).
    #[arg(long = "as", value_name = "IDENTITY")]
    as_identity: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Holds waiting for votes (with --all, decided ones too).
    List {
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Vote on a hold. Exits 1 if the vote was refused, saying why.
    Vote {
        approval_id: String,
        #[arg(long, conflicts_with_all = ["deny", "withdraw"], required_unless_present_any = ["deny", "withdraw"])]
        approve: bool,
        #[arg(long, conflicts_with = "withdraw")]
        deny: bool,
        /// Take back your earlier vote (before the decision).
        #[arg(long)]
        withdraw: bool,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Make the Ed25519 key that signs decisions and grants: the private key goes to --out
    /// (mode 0600; the approval service's `signing_key_file`), the verifier key to standard
    /// output (a line of the proxies' `approval_keys` file).
    Keygen {
        /// The key's name, e.g. `approval.gatehouse.example.com`.
        #[arg(long)]
        name: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// Active grants.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// End a grant now.
    Revoke {
        grant_id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
}

impl Connection {
    fn client(&self) -> anyhow::Result<ApprovalClient> {
        let (server, token) = match (&self.data_dir, &self.as_identity) {
            (Some(dir), Some(identity)) => {
                let server = match &self.server {
                    Some(s) => s.clone(),
                    None => read_trimmed(&dir.join("approval.url")).context(
                        "the data directory has no approval.url: is `gatehouse up --sandbox` running there?",
                    )?,
                };
                let token = read_trimmed(&dir.join("tokens").join(format!("{identity}.jwt")))
                    .with_context(|| {
                        format!("{identity} is not a demo approver of this data directory")
                    })?;
                (server, token)
            }
            (_, Some(_)) => bail!("--as needs --data-dir (a `gatehouse up --sandbox` directory)"),
            (_, None) => {
                let Some(server) = &self.server else {
                    bail!(
                        "say where the approval service is: --server URL (or --data-dir DIR --as IDENTITY)"
                    );
                };
                let Some(file) = &self.token_file else {
                    bail!("say who you are: --token-file FILE (or --data-dir DIR --as IDENTITY)");
                };
                (server.clone(), read_trimmed(file)?)
            }
        };
        Ok(ApprovalClient::new(
            &server,
            &token,
            self.ca_file.as_deref(),
        )?)
    }
}

fn read_trimmed(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.trim().to_owned())
}

pub async fn approvals(command: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ApprovalsCommand::Keygen { name, out } => crate::checkpoint_cmd::keygen(&name, &out),
        ApprovalsCommand::List {
            all,
            json,
            connection,
        } => {
            let holds = connection.client()?.list(all).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&holds)?);
            } else if holds.is_empty() {
                println!("no {}holds", if all { "" } else { "pending " });
            } else {
                print_holds(&holds);
            }
            Ok(ExitCode::SUCCESS)
        }
        ApprovalsCommand::Vote {
            approval_id,
            approve,
            deny,
            withdraw,
            comment,
            connection,
        } => {
            let ballot = match (approve, deny, withdraw) {
                (true, _, _) => Ballot::Approve,
                (_, true, _) => Ballot::Deny,
                _ => Ballot::Withdraw,
            };
            let result = match connection
                .client()?
                .vote(&approval_id, ballot, comment.as_deref())
                .await
            {
                Ok(result) => result,
                // Not an approver at all: as refused as a vote that does not count.
                Err(ClientError::Refused {
                    status: 403,
                    message,
                }) => {
                    eprintln!("refused: {message}");
                    return Ok(ExitCode::from(1));
                }
                Err(e) => return Err(e.into()),
            };
            if !result.counted {
                eprintln!(
                    "refused: {}",
                    result.refusal.as_deref().unwrap_or("no reason given")
                );
                return Ok(ExitCode::from(1));
            }
            let state = result
                .hold
                .as_ref()
                .map(|h| h.state.clone())
                .unwrap_or_default();
            if result.repeat {
                println!("{approval_id}: your vote was already counted; it is {state}");
            } else {
                println!("{approval_id}: vote counted; it is {state}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn grants(command: GrantsCommand) -> anyhow::Result<ExitCode> {
    match command {
        GrantsCommand::List { json, connection } => {
            let grants = connection.client()?.grants().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&grants)?);
            } else if grants.is_empty() {
                println!("no active grants");
            } else {
                println!(
                    "{:<26}  {:<28}  {:<8}  {:<24}  {:<12}  {:<20}  APPROVED BY",
                    "GRANT", "PRINCIPAL", "VERB", "RESOURCE", "NAMESPACE", "EXPIRES"
                );
                for g in grants {
                    let resource = if g.api_group.is_empty() {
                        g.resource.clone()
                    } else {
                        format!("{}/{}", g.api_group, g.resource)
                    };
                    println!(
                        "{:<26}  {:<28}  {:<8}  {:<24}  {:<12}  {:<20}  {}",
                        g.grant_id,
                        g.principal,
                        g.verb,
                        resource,
                        g.namespace,
                        short_time(&g.expires_at),
                        g.approved_by.join(", ")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        GrantsCommand::Revoke {
            grant_id,
            reason,
            connection,
        } => {
            let grant = connection
                .client()?
                .revoke(&grant_id, reason.as_deref())
                .await?;
            println!(
                "revoked {} ({} may no longer {} {} in {} without approval)",
                grant.grant_id, grant.principal, grant.verb, grant.resource, grant.namespace
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_holds(holds: &[HoldSummary]) {
    println!(
        "{:<26}  {:<9}  {:<28}  {:<8}  {:<28}  {:<10}  {:<7}  {:<20}  REASON",
        "APPROVAL", "STATE", "PRINCIPAL", "VERB", "RESOURCE", "NAMESPACE", "VOTES", "EXPIRES"
    );
    for h in holds {
        let resource = if h.name.is_empty() {
            h.resource.clone()
        } else {
            format!("{}/{}", h.resource, h.name)
        };
        let approvals = h.votes.iter().filter(|v| v.vote == Ballot::Approve).count();
        println!(
            "{:<26}  {:<9}  {:<28}  {:<8}  {:<28}  {:<10}  {:<7}  {:<20}  {}",
            h.approval_id,
            h.state,
            h.principal,
            h.verb,
            resource,
            h.namespace,
            format!("{approvals}/{}", h.quorum),
            short_time(&h.expires_at),
            h.reason.as_deref().unwrap_or("-")
        );
    }
}

/// `2026-11-22T15:04:05.123456Z` → `2026-11-22 15:04:05Z`.
fn short_time(rfc3339: &str) -> String {
    let mut t = rfc3339.replacen('T', " ", 1);
    if let Some(dot) = t.find('.') {
        t.truncate(dot);
        t.push('Z');
    }
    t
}
