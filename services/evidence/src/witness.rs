//! Witnesses: every checkpoint the active replica signs is submitted to the configured witnesses
//! with the C2SP `tlog-witness` protocol (`POST <url>/add-checkpoint`), and their cosignatures
//! (C2SP `tlog-cosignature`) are kept with it.
//!
//! Witnesses verify RFC 6962 consistency proofs, which are SHA-256; the ledger's tree is BLAKE3.
//! So what they are sent is the checkpoint's *witnessed checkpoint*
//! ([`gatehouse_proof::cosignature`]): the same leaves in an RFC 6962 tree, under the origin
//! `<origin>/rfc6962`, signed by the checkpoint key under that name, naming the BLAKE3 root in
//! an extension line. Each witness must know that origin and key (`runbooks/witnesses.md`).
//!
//! Kept in the ledger (`witness/…` records in `meta`, written durably):
//! - `tree`: the RFC 6962 tree's peaks at the last witnessed size;
//! - `cosigned/<witness>`: the peaks at the size that witness last cosigned, so a restart
//!   proves from there, not from 0;
//! - `checkpoint/<size, 20 digits>`: the witnessed checkpoint with every cosignature received.
//!
//! A witness that refuses (inconsistent, unknown log, a size it cannot be brought to) or cannot
//! be reached raises an alarm: an ERROR log line with `alarm="witness.refused"`, and
//! `gatehouse_evidence_witness_refusals_total{witness,reason}`, and a `witness.refused` event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gatehouse_proof::checkpoint::{Checkpoint, NoteSigner};
use gatehouse_proof::cosignature::{CosignatureVerifier, merge_signature_lines, witnessed_body};
use gatehouse_proof::rfc6962::{self, Peaks};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::metrics::Metrics;
use crate::store::{Ledger, LedgerError};

/// `witnesses:` in the evidence configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessesConfig {
    /// How long one `add-checkpoint` request may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    pub list: Vec<WitnessConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// Names the witness in logs and metrics (default: its key's name).
    #[serde(default)]
    pub name: Option<String>,
    /// The submission prefix: `add-checkpoint` is posted to `<url>/add-checkpoint`.
    pub url: String,
    /// Its cosignature/v1 verifier key: `<name>+<id>+<base64(0x04 ‖ Ed25519 key)>`.
    pub vkey: String,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl WitnessesConfig {
    pub fn validate(&self) -> Result<(), String> {
        // A checkpoint round (and `POST /checkpoint`, which `gatehouse checkpoint sign` waits
        // 60 s for) waits for the witnesses: at most two requests each.
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(20) {
            return Err("witnesses.timeout must be between 100ms and 20s".into());
        }
        let mut names = Vec::new();
        for w in &self.list {
            let witness = Witness::new(w)?;
            if names.contains(&witness.name) {
                return Err(format!("witness {:?} is configured twice", witness.name));
            }
            names.push(witness.name);
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Witness {
    name: String,
    url: String,
    verifier: CosignatureVerifier,
}

impl Witness {
    fn new(config: &WitnessConfig) -> Result<Self, String> {
        let verifier = CosignatureVerifier::from_vkey(&config.vkey)
            .map_err(|e| format!("witness {}: {e}", config.url))?;
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| verifier.name().to_owned());
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_whitespace) {
            return Err(format!(
                "witness name {name:?} must be 1 to 128 characters without spaces"
            ));
        }
        let url = config.url.trim_end_matches('/').to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "witness {name}: url {url:?} must be http:// or https://"
            ));
        }
        Ok(Self {
            name,
            url,
            verifier,
        })
    }
}

type HttpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<bytes::Bytes>,
>;

/// The configured witnesses and a client to reach them.
pub struct Witnesses {
    witnesses: Vec<Witness>,
    timeout: Duration,
    client: HttpClient,
    metrics: Metrics,
    bus: Option<gatehouse_bus::Bus>,
    /// One submission round at a time: a witness must see sizes in order.
    round: tokio::sync::Mutex<()>,
    /// The largest checkpoint size whose submission round has finished (whatever each
    /// witness answered): the archive seals no segment past it (`archive::round`).
    submitted_through: AtomicU64,
}

impl std::fmt::Debug for Witnesses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witnesses")
            .field("witnesses", &self.witnesses)
            .finish_non_exhaustive()
    }
}

/// Why a witness did not cosign (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 422: the consistency proof did not verify against what it saw, or the same size with
    /// another root: a fork, or a witness that saw another log under this origin.
    Inconsistent,
    /// 409 with a size larger than the checkpoint's, or larger than this ledger: its state is
    /// ahead of this log.
    Ahead,
    /// 409 again after proving from the size it named.
    Conflict,
    /// 404: it does not know the origin.
    UnknownLog,
    /// 403: it does not trust the key that signed the checkpoint.
    Forbidden,
    /// 400.
    BadRequest,
    /// 200 without a valid cosignature by its configured key.
    BadCosignature,
    /// No answer within the timeout, or no connection.
    Unreachable,
    /// Any other status.
    Error,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Inconsistent => "inconsistent",
            Refusal::Ahead => "ahead",
            Refusal::Conflict => "conflict",
            Refusal::UnknownLog => "unknown_log",
            Refusal::Forbidden => "forbidden",
            Refusal::BadRequest => "bad_request",
            Refusal::BadCosignature => "bad_cosignature",
            Refusal::Unreachable => "unreachable",
            Refusal::Error => "error",
        }
    }
}

/// What one witness did with one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Cosigned { witness: String, size: u64 },
    Refused { witness: String, reason: Refusal },
}

const TREE: &str = "tree";

fn cosigned_record(witness: &str) -> String {
    format!("cosigned/{witness}")
}

pub(crate) fn checkpoint_record(size: u64) -> String {
    format!("checkpoint/{size:020}")
}

fn read_peaks(ledger: &Ledger, record: &str) -> Result<Option<Peaks>, String> {
    let Some(bytes) = ledger.witness_record(record).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let peaks: Peaks = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the witness record {record} does not parse: {e}"))?;
    peaks
        .check()
        .map_err(|e| format!("the witness record {record}: {e}"))?;
    Ok(Some(peaks))
}

fn peaks_record(peaks: &Peaks) -> Vec<u8> {
    serde_json::to_vec(peaks).unwrap_or_default()
}

/// The RFC 6962 leaf hashes of indexes `start .. end`.
fn rfc6962_leaves(
    ledger: &Ledger,
    start: u64,
    end: u64,
) -> Result<Vec<gatehouse_proof::entry::Hash>, LedgerError> {
    Ok(ledger
        .leaf_hashes(start, end)?
        .iter()
        .map(rfc6962::leaf_hash)
        .collect())
}

pub use gatehouse_proof::cosignature::witnessed_origin;

/// The verifier key witnesses must trust for `origin`'s witnessed checkpoints: the checkpoint
/// key under the witnessed origin's name.
pub fn witnessed_vkey(signer: &NoteSigner, origin: &str) -> String {
    signer
        .with_name(&witnessed_origin(origin))
        .map(|s| s.verifier().to_vkey())
        .unwrap_or_default()
}

/// `peaks` grown to `end` leaves, reading the leaves in chunks (a first run over a large ledger
/// never holds all of them).
fn grow(ledger: &Ledger, mut peaks: Peaks, end: u64) -> Result<Peaks, String> {
    const CHUNK: u64 = 1 << 16;
    while peaks.size < end {
        let to = end.min(peaks.size + CHUNK);
        for leaf in rfc6962_leaves(ledger, peaks.size, to).map_err(|e| e.to_string())? {
            peaks.push(leaf);
        }
    }
    Ok(peaks)
}

/// The witnessed checkpoint (with every cosignature received) of the checkpoint at `size`.
pub fn witnessed_checkpoint(ledger: &Ledger, size: u64) -> Result<Option<String>, LedgerError> {
    Ok(ledger
        .witness_record(&checkpoint_record(size))?
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
}

impl Witnesses {
    /// `bus`: where `witness.refused` events go (none in tools that only read).
    pub fn new(
        config: &WitnessesConfig,
        metrics: Metrics,
        bus: Option<gatehouse_bus::Bus>,
    ) -> Result<Self, String> {
        config.validate()?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            witnesses: config
                .list
                .iter()
                .map(Witness::new)
                .collect::<Result<_, _>>()?,
            timeout: config.timeout,
            client: Client::builder(TokioExecutor::new()).build(connector),
            metrics,
            bus,
            round: tokio::sync::Mutex::new(()),
            submitted_through: AtomicU64::new(0),
        })
    }

    /// Submits the ledger's latest checkpoint (see [`Witnesses::cosign`]); failures are
    /// alarms, logged and counted.
    pub async fn cosign_latest(&self, ledger: &Arc<Mutex<Ledger>>, signer: &NoteSigner) {
        let latest = {
            let ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
            ledger.latest_checkpoint()
        };
        let checkpoint = match latest {
            Ok(Some((_, note))) => match Checkpoint::from_note_unverified(&note) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(alarm = "witness.refused", error = %e, "the latest checkpoint does not parse; not submitted to witnesses");
                    return;
                }
            },
            Ok(None) => return,
            Err(e) => {
                tracing::error!(alarm = "witness.refused", error = %e, "the latest checkpoint could not be read; not submitted to witnesses");
                return;
            }
        };
        if let Err(e) = self.cosign(ledger, signer, &checkpoint).await {
            tracing::error!(alarm = "witness.refused", size = checkpoint.size, error = %e, "the witnessed checkpoint could not be made");
        }
        // Done with this checkpoint, cosigned or not: a witness that is down holds up no
        // archive beyond its timeout.
        self.submitted_through
            .fetch_max(checkpoint.size, Ordering::SeqCst);
    }

    /// The largest checkpoint size whose submission round has finished since start-up.
    pub fn submitted_through(&self) -> u64 {
        self.submitted_through.load(Ordering::SeqCst)
    }

    /// Makes and stores the witnessed checkpoint of `checkpoint` (the ledger's, just signed),
    /// submits it to every witness at once, and stores the cosignatures they return.
    pub async fn cosign(
        &self,
        ledger: &Arc<Mutex<Ledger>>,
        signer: &NoteSigner,
        checkpoint: &Checkpoint,
    ) -> Result<Vec<Outcome>, String> {
        let _round = self.round.lock().await;
        let (note, peaks) = {
            let (ledger, signer, checkpoint) = (ledger.clone(), signer.clone(), checkpoint.clone());
            tokio::task::spawn_blocking(move || {
                let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
                prepare(&mut ledger, &signer, &checkpoint)
            })
            .await
            .map_err(|e| e.to_string())??
        };
        let outcomes = futures::future::join_all(
            self.witnesses
                .iter()
                .map(|w| self.submit(w, ledger, &note, &peaks)),
        )
        .await;
        Ok(outcomes)
    }

    async fn submit(
        &self,
        witness: &Witness,
        ledger: &Arc<Mutex<Ledger>>,
        note: &str,
        peaks: &Peaks,
    ) -> Outcome {
        let size = peaks.size;
        let known = {
            let (ledger, record) = (ledger.clone(), cosigned_record(&witness.name));
            tokio::task::spawn_blocking(move || {
                read_peaks(&ledger.lock().unwrap_or_else(|p| p.into_inner()), &record)
            })
            .await
        };
        let mut old = match known {
            Ok(Ok(Some(p))) => p,
            Ok(Ok(None)) => Peaks::default(),
            Ok(Err(e)) => return self.refuse(witness, size, Refusal::Error, e).await,
            Err(e) => {
                return self
                    .refuse(witness, size, Refusal::Error, e.to_string())
                    .await;
            }
        };
        if old == *peaks && witness.verifier.verify(note).is_ok_and(|t| t.is_some()) {
            return Outcome::Cosigned {
                witness: witness.name.clone(),
                size,
            };
        }
        // One retry: a 409 names the size the witness holds; prove from there.
        for attempt in 0..2 {
            if old.size > size {
                return self
                    .refuse(
                        witness,
                        size,
                        Refusal::Ahead,
                        format!(
                            "the witness cosigned size {} of this log, beyond this checkpoint",
                            old.size
                        ),
                    )
                    .await;
            }
            let proof = {
                let (ledger, old) = (ledger.clone(), old.clone());
                let target = peaks.clone();
                let proved = tokio::task::spawn_blocking(move || {
                    if old.size == 0 {
                        // From the empty tree no proof is sent (nor are the leaves read).
                        return Ok((Vec::new(), target));
                    }
                    let ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
                    let leaves =
                        rfc6962_leaves(&ledger, old.size, size).map_err(|e| e.to_string())?;
                    old.extend(&leaves).map_err(|e| e.to_string())
                })
                .await;
                match proved {
                    Ok(Ok((proof, after))) if &after == peaks => proof,
                    Ok(Ok(_)) => {
                        return self
                            .refuse(
                                witness,
                                size,
                                Refusal::Error,
                                "the stored peaks do not lead to this checkpoint's tree".into(),
                            )
                            .await;
                    }
                    Ok(Err(e)) => return self.refuse(witness, size, Refusal::Error, e).await,
                    Err(e) => {
                        return self
                            .refuse(witness, size, Refusal::Error, e.to_string())
                            .await;
                    }
                }
            };
            let mut body = format!("old {}\n", old.size);
            for hash in &proof {
                body.push_str(&STANDARD.encode(hash));
                body.push('\n');
            }
            body.push('\n');
            body.push_str(note);
            let (status, answer) = match self.post(witness, body).await {
                Ok(answer) => answer,
                Err(e) => return self.refuse(witness, size, Refusal::Unreachable, e).await,
            };
            match status {
                200 => return self.accept(witness, ledger, note, peaks, &answer).await,
                409 if attempt == 0 => {
                    let Some(theirs) = answer
                        .strip_suffix('\n')
                        .and_then(|s| s.parse::<u64>().ok())
                    else {
                        return self
                            .refuse(
                                witness,
                                size,
                                Refusal::Error,
                                format!("409 without a tree size: {}", clip(&answer)),
                            )
                            .await;
                    };
                    if theirs > size {
                        let why = format!("the witness holds size {theirs}, beyond {size}");
                        return self.refuse(witness, size, Refusal::Ahead, why).await;
                    }
                    tracing::info!(
                        witness = %witness.name,
                        stored = old.size,
                        theirs,
                        "the witness holds another size of this log; proving from it"
                    );
                    let from = {
                        let ledger = ledger.clone();
                        tokio::task::spawn_blocking(move || {
                            let ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
                            grow(&ledger, Peaks::default(), theirs)
                        })
                        .await
                    };
                    old = match from {
                        Ok(Ok(p)) => p,
                        Ok(Err(e)) => return self.refuse(witness, size, Refusal::Error, e).await,
                        Err(e) => {
                            return self
                                .refuse(witness, size, Refusal::Error, e.to_string())
                                .await;
                        }
                    };
                }
                other => {
                    let reason = match other {
                        409 => Refusal::Conflict,
                        422 => Refusal::Inconsistent,
                        404 => Refusal::UnknownLog,
                        403 => Refusal::Forbidden,
                        400 => Refusal::BadRequest,
                        _ => Refusal::Error,
                    };
                    let detail = format!("{other}: {}", clip(&answer));
                    return self.refuse(witness, size, reason, detail).await;
                }
            }
        }
        self.refuse(
            witness,
            size,
            Refusal::Conflict,
            "still in conflict after one retry".into(),
        )
        .await
    }

    /// The alarm for a witness that did not cosign: an ERROR log line, the refusals metric,
    /// and a `witness.refused` event (into the ledger, like every event).
    async fn refuse(
        &self,
        witness: &Witness,
        size: u64,
        reason: Refusal,
        detail: String,
    ) -> Outcome {
        self.metrics.witness_refused(&witness.name, reason.label());
        let detail = clip(&detail);
        tracing::error!(
            alarm = "witness.refused",
            witness = %witness.name,
            url = %witness.url,
            reason = reason.label(),
            size,
            detail = %detail,
            "the witness did not cosign the checkpoint"
        );
        if let Some(bus) = &self.bus {
            // Its own subject: a refusal belongs to no request.
            let subject = gatehouse_events::EventId::new().to_string();
            let event = gatehouse_events::Envelope::new(
                &gatehouse_events::envelope::source("evidence", "witness"),
                &subject,
                gatehouse_events::WitnessRefused {
                    witness: witness.name.clone(),
                    reason: reason.label().to_owned(),
                    size,
                    detail,
                },
            );
            if let Err(e) = bus.publish(&event).await {
                tracing::error!(error = %e, witness = %witness.name, "the witness.refused event could not be published");
            }
        }
        Outcome::Refused {
            witness: witness.name.clone(),
            reason,
        }
    }

    /// Checks a 200 answer's cosignature and keeps it.
    async fn accept(
        &self,
        witness: &Witness,
        ledger: &Arc<Mutex<Ledger>>,
        note: &str,
        peaks: &Peaks,
        answer: &str,
    ) -> Outcome {
        let size = peaks.size;
        let lines: String = answer
            .lines()
            .filter(|l| l.starts_with('\u{2014}'))
            .map(|l| format!("{l}\n"))
            .collect();
        let cosigned = merge_signature_lines(note, &lines);
        match witness.verifier.verify(&cosigned) {
            Ok(Some(_)) => {}
            result => {
                let detail = match result {
                    Err(e) => e.to_string(),
                    _ => format!("no cosignature by {}", witness.verifier.to_vkey()),
                };
                return self
                    .refuse(witness, size, Refusal::BadCosignature, detail)
                    .await;
            }
        }
        // Only this witness's lines are kept; the stored note is re-read so answers arriving
        // together all land.
        let own: String = lines
            .lines()
            .filter(|l| l.split(' ').nth(1) == Some(witness.verifier.name()))
            .map(|l| format!("{l}\n"))
            .collect();
        let stored = {
            let (ledger, peaks, name) = (ledger.clone(), peaks.clone(), witness.name.clone());
            tokio::task::spawn_blocking(move || {
                let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
                let current = witnessed_checkpoint(&ledger, peaks.size)?.unwrap_or_default();
                let merged = merge_signature_lines(&current, &own);
                ledger.put_witness_records(&[
                    (checkpoint_record(peaks.size), merged.into_bytes()),
                    (cosigned_record(&name), peaks_record(&peaks)),
                ])
            })
            .await
        };
        if let Err(e) = stored
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            tracing::error!(alarm = "witness.unrecorded", witness = %witness.name, size, error = %e, "a cosignature was received but not stored");
        }
        self.metrics.witness_cosigned(&witness.name);
        tracing::info!(witness = %witness.name, size, "checkpoint cosigned");
        Outcome::Cosigned {
            witness: witness.name.clone(),
            size,
        }
    }

    async fn post(&self, witness: &Witness, body: String) -> Result<(u16, String), String> {
        let request = hyper::Request::post(format!("{}/add-checkpoint", witness.url))
            .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            // A cosignature response is a few lines; more is not read.
            let body = http_body_util::Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}

/// The witnessed checkpoint of `checkpoint`, made and stored if it is new, and the RFC 6962
/// tree's peaks at its size.
fn prepare(
    ledger: &mut Ledger,
    signer: &NoteSigner,
    checkpoint: &Checkpoint,
) -> Result<(String, Peaks), String> {
    let size = checkpoint.size;
    let tree = match read_peaks(ledger, TREE)? {
        Some(p) if p.size <= size => p,
        // A tree past this checkpoint (a restored ledger): rebuilt from the leaves.
        _ => Peaks::default(),
    };
    tree.check().map_err(|e| e.to_string())?;
    let peaks = grow(ledger, tree, size)?;
    if let Some(note) = witnessed_checkpoint(ledger, size).map_err(|e| e.to_string())? {
        return Ok((note, peaks));
    }
    let body = witnessed_body(checkpoint, &peaks.root());
    let note = signer
        .with_name(&witnessed_origin(&checkpoint.origin))
        .map_err(|e| e.to_string())?
        .sign_note(&body);
    ledger
        .put_witness_records(&[
            (TREE.to_owned(), peaks_record(&peaks)),
            (checkpoint_record(size), note.clone().into_bytes()),
        ])
        .map_err(|e| e.to_string())?;
    Ok((note, peaks))
}

fn clip(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}
