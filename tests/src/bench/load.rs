//! The load generator: HTTP/1.1 over TLS on keep-alive connections, open loop (a fixed rate,
//! latency corrected for coordinated omission) or closed loop (as fast as answers come).
//!
//! Open loop: request `k` is due at `start + k / rate`, on connection `k mod connections`. A
//! request that could not go out when due because its connection was still busy with an
//! earlier answer is timed from when it was due (what wrk2 does), so a slow answer costs every
//! request queued behind it. A request whose connection was free is timed from when it was
//! actually written, so the timer's own wake-up slack is not charged to the server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

/// Where requests go and as whom.
#[derive(Clone)]
pub struct Target {
    /// `direct`, `nginx`, `gatehouse`.
    pub name: String,
    pub addr: SocketAddr,
    /// The name the server's certificate is checked against.
    pub server_name: String,
    /// The whole `Authorization` header value (never printed).
    pub authorization: String,
    pub tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish()
    }
}

/// One answered (or failed) request, for runs that check every answer afterwards.
#[derive(Clone, Debug)]
pub struct Record {
    /// When it was sent, from the start of the run.
    pub sent: Duration,
    /// `None`: no answer (connection refused, reset, timed out).
    pub status: Option<u16>,
    /// The proxy's `x-gatehouse-request-id`, when it sent one.
    pub request_id: Option<String>,
}

/// What a run saw.
#[derive(Debug)]
pub struct Outcome {
    /// Microseconds, of the requests due after the warm-up.
    pub latency: Histogram<u64>,
    /// Answers of any status, warm-up included.
    pub answered: u64,
    /// Requests that got no answer.
    pub failed: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// Answers after the warm-up, and the time they took.
    pub measured: u64,
    pub measured_for: Duration,
    /// Bytes of response bodies after the warm-up.
    pub body_bytes: u64,
    /// Every request, when asked for.
    pub records: Vec<Record>,
}

impl Outcome {
    fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds"),
            answered: 0,
            failed: 0,
            statuses: BTreeMap::new(),
            measured: 0,
            measured_for: Duration::ZERO,
            body_bytes: 0,
            records: Vec::new(),
        }
    }

    fn merge(&mut self, other: Outcome) {
        let _ = self.latency.add(&other.latency);
        self.answered += other.answered;
        self.failed += other.failed;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.measured += other.measured;
        self.body_bytes += other.body_bytes;
        self.records.extend(other.records);
    }

    /// Percentile `q` (0–100) in microseconds.
    pub fn percentile_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q / 100.0) as f64
    }

    /// Answers per second after the warm-up.
    pub fn rate(&self) -> f64 {
        self.measured as f64 / self.measured_for.as_secs_f64().max(1e-9)
    }

    /// Answers with a status outside 2xx.
    pub fn non_2xx(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| !(200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }
}

/// How a run sends.
#[derive(Clone, Debug)]
pub struct Plan {
    pub method: http::Method,
    pub path: String,
    pub connections: usize,
    /// `Some(rate)`: open loop at this many requests per second in all; `None`: closed loop.
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    /// Keep a [`Record`] of every request.
    pub record: bool,
}

/// A keep-alive connection; reconnects after a failure.
struct Connection {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Connection {
    async fn open(target: &Target) -> Result<SendRequest<Full<Bytes>>> {
        let tcp = tokio::net::TcpStream::connect(target.addr)
            .await
            .with_context(|| format!("connecting to {} ({})", target.name, target.addr))?;
        tcp.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::try_from(target.server_name.clone())?;
        let tls = tokio_rustls::TlsConnector::from(target.tls.clone())
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS with {}", target.name))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// Sends one request; `None` if there was no answer (the connection is reopened next time).
    async fn send(
        &mut self,
        method: &http::Method,
        path: &str,
    ) -> Option<(u16, Option<String>, u64)> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.sender = Connection::open(&self.target).await.ok();
        }
        let sender = self.sender.as_mut()?;
        if sender.ready().await.is_err() {
            self.sender = None;
            return None;
        }
        let request = http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, &self.target.server_name)
            .header(http::header::AUTHORIZATION, &self.target.authorization)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .ok()?;
        let answer = tokio::time::timeout(Duration::from_secs(60), async {
            let response = sender.send_request(request).await.ok()?;
            let status = response.status().as_u16();
            let request_id = response
                .headers()
                .get(gatehouse_proxy::rescue::REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some((status, request_id, body.len() as u64))
        })
        .await
        .ok()
        .flatten();
        if answer.is_none() {
            self.sender = None;
        }
        answer
    }
}

/// Runs `plan` against `target` and returns what it saw.
pub async fn run(target: &Target, plan: &Plan) -> Result<Outcome> {
    // Connect first, so that connection set-up is not part of the measurement.
    let mut connections = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        connections.push(Connection {
            target: target.clone(),
            sender: Some(Connection::open(target).await?),
        });
    }
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let mut tasks = Vec::new();
    for (c, mut connection) in connections.into_iter().enumerate() {
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcome = Outcome::new();
            let mut previous_done = start;
            let mut k: u64 = 0;
            loop {
                let due = match plan.rate {
                    Some(rate) => {
                        let n = k * plan.connections as u64 + c as u64;
                        start + Duration::from_secs_f64(n as f64 / rate)
                    }
                    None => previous_done,
                };
                if due >= end {
                    break;
                }
                k += 1;
                if Instant::now() < due {
                    tokio::time::sleep_until(due).await;
                }
                let sent = Instant::now();
                // Queued behind a slow answer: timed from when it was due.
                let began = if plan.rate.is_some() && previous_done > due {
                    due
                } else {
                    sent
                };
                let answer = connection.send(&plan.method, &plan.path).await;
                let done = Instant::now();
                previous_done = done;
                if plan.record {
                    outcome.records.push(Record {
                        sent: sent.duration_since(start),
                        status: answer.as_ref().map(|a| a.0),
                        request_id: answer.as_ref().and_then(|a| a.1.clone()),
                    });
                }
                let Some((status, _, bytes)) = answer else {
                    outcome.failed += 1;
                    continue;
                };
                outcome.answered += 1;
                *outcome.statuses.entry(status).or_default() += 1;
                let counted = match plan.rate {
                    Some(_) => due >= measure_from,
                    None => sent >= measure_from && done <= end,
                };
                if counted {
                    outcome.measured += 1;
                    outcome.body_bytes += bytes;
                    let micros = done.duration_since(began).as_micros().max(1);
                    let _ = outcome
                        .latency
                        .record(u64::try_from(micros).unwrap_or(u64::MAX));
                }
            }
            outcome
        }));
    }
    let mut outcome = Outcome::new();
    for task in tasks {
        outcome.merge(task.await.context("a load connection panicked")?);
    }
    outcome.measured_for = plan.duration;
    outcome.records.sort_by_key(|r| r.sent);
    Ok(outcome)
}

/// A keep-alive connection for set-up work (creating objects), outside any measurement.
pub struct Client {
    target: Target,
    sender: SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(target: &Target) -> Result<Self> {
        Ok(Self {
            target: target.clone(),
            sender: Connection::open(target).await?,
        })
    }

    pub async fn request(
        &mut self,
        method: http::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, Bytes)> {
        if self.sender.is_closed() {
            self.sender = Connection::open(&self.target).await?;
        }
        self.sender.ready().await?;
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.target.server_name)
            .header(http::header::AUTHORIZATION, &self.target.authorization)
            .header(http::header::ACCEPT, "application/json");
        let body = match body {
            Some(b) => {
                request = request.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(b)?)
            }
            None => Bytes::new(),
        };
        let response = self
            .sender
            .send_request(request.body(Full::new(body))?)
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.into_body().collect().await?.to_bytes()))
    }
}

/// One request, outside any measurement (set-up and checks).
pub async fn once(target: &Target, method: http::Method, path: &str) -> Result<(u16, Bytes)> {
    Client::connect(target)
        .await?
        .request(method, path, None)
        .await
}

/// One request with a JSON body (set-up: creating objects).
pub async fn send_json(
    target: &Target,
    method: http::Method,
    path: &str,
    body: &serde_json::Value,
) -> Result<(u16, Bytes)> {
    Client::connect(target)
        .await?
        .request(method, path, Some(body))
        .await
}
