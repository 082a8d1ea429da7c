//! Gatehouse on a three-node JetStream cluster (real nats-server processes, Gatehouse's NATS
//! users and permissions, the stream and buckets at three replicas), with nodes SIGKILLed and
//! restarted under steady load through two proxies:
//!
//! 1. one node down, then back: requests are refused (503) while leaders are elected, then
//!    go through again, and a delete held while the node is down is released once approved;
//! 2. another node down, then back, with another held delete released;
//! 3. two nodes down (no quorum): every request the proxies answer is a 503 and none reaches the
//!    cluster; after the nodes return, both proxies forward again.
//!
//! Then: every answered-200 request's `request.received` is in the ledger exactly once, no
//! event id is doubled, nothing refused reached the API server, and (`TestBed::finish`) the
//! ledger equals the stream byte for byte and matches the API server's audit log.
//! `GATEHOUSE_WRITE_RESULTS=1` writes the figures to `tests/bench/results/jetstream-cluster.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse::nats_server::NatsKeys;
use gatehouse_events::Ballot;
use gatehouse_tests::nats_cluster::NatsCluster;
use gatehouse_tests::{BedOptions, DEADLINE, TestBed, eventually};
use tokio_util::sync::CancellationToken;

type Result = anyhow::Result<()>;

/// Load: this many clients per proxy, each sending a request every `PACE` (or as soon as the
/// last is answered, if that took longer): a steady rate, bounded so the run stays short.
const CLIENTS_PER_PROXY: usize = 2;
const PACE: Duration = Duration::from_millis(40);
/// How long each phase runs under load.
const PHASE: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
struct Answer {
    proxy: usize,
    started: Instant,
    finished: Instant,
    status: u16,
    request_id: Option<String>,
    message: String,
}

async fn run_load(
    bed: Arc<TestBed>,
    proxies: Vec<String>,
    token: String,
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: CancellationToken,
) {
    let mut clients = Vec::new();
    for (proxy, url) in proxies.iter().enumerate() {
        for _ in 0..CLIENTS_PER_PROXY {
            let (bed, url, token, answers, stop) = (
                bed.clone(),
                url.clone(),
                token.clone(),
                answers.clone(),
                stop.clone(),
            );
            clients.push(tokio::spawn(async move {
                let auth = format!("Bearer {token}");
                let mut pace = tokio::time::interval(PACE);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.is_cancelled() {
                    pace.tick().await;
                    let started = Instant::now();
                    let reply = bed
                        .request_via(
                            &url,
                            "GET",
                            "/api/v1/namespaces/apps/configmaps",
                            &[("authorization", auth.as_str())],
                            None,
                        )
                        .await;
                    let finished = Instant::now();
                    let answer = match reply {
                        Ok(reply) => Answer {
                            proxy,
                            started,
                            finished,
                            status: reply.status,
                            request_id: reply.request_id,
                            message: reply.body["message"].as_str().unwrap_or("").to_owned(),
                        },
                        Err(e) => Answer {
                            proxy,
                            started,
                            finished,
                            status: 0,
                            request_id: None,
                            message: e.to_string(),
                        },
                    };
                    if let Ok(mut all) = answers.lock() {
                        all.push(answer);
                    }
                }
            }));
        }
    }
    for client in clients {
        let _ = client.await;
    }
}

fn answers_between(answers: &Mutex<Vec<Answer>>, from: Instant, to: Instant) -> Vec<Answer> {
    answers
        .lock()
        .map(|a| {
            a.iter()
                .filter(|a| a.started >= from && a.finished <= to)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn count(answers: &[Answer], status: u16) -> usize {
    answers.iter().filter(|a| a.status == status).count()
}

/// Waits (at most 60 s) until each proxy has given an answer `wanted` to a request that started
/// after `since`; returns how long after `since` that was.
async fn each_proxy(
    answers: &Mutex<Vec<Answer>>,
    since: Instant,
    proxies: usize,
    wanted: impl Fn(&Answer) -> bool,
) -> Duration {
    let deadline = since + Duration::from_secs(60);
    loop {
        let done: BTreeSet<usize> = answers_between(answers, since, Instant::now())
            .iter()
            .filter(|a| wanted(a))
            .map(|a| a.proxy)
            .collect();
        if done.len() == proxies || Instant::now() > deadline {
            return since.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until each proxy has answered a request with 200 that started after `since`.
async fn both_forwarding(answers: &Mutex<Vec<Answer>>, since: Instant, proxies: usize) -> Duration {
    each_proxy(answers, since, proxies, |a| a.status == 200).await
}

/// Waits until each proxy has answered, whatever the status, a request that started after
/// `since`: without a quorum each refusal may wait out the publish timeout first, so a fixed
/// phase can end before any request started in it is answered.
async fn each_answered(answers: &Mutex<Vec<Answer>>, since: Instant, proxies: usize) {
    each_proxy(answers, since, proxies, |_| true).await;
}

/// The demo policy without a grant window, so every delete in `prod` is held (an approval
/// opens no grant that would admit the next one).
fn policy_without_grants() -> (String, String) {
    let text = gatehouse_up::demo::POLICY_YAML.replace(
        "      hold_timeout: 10m\n      grant_window: 15m\n",
        "      hold_timeout: 10m\n",
    );
    assert_ne!(text, gatehouse_up::demo::POLICY_YAML);
    ("policy.yaml".into(), text)
}

/// Deletes ConfigMap `name` in `prod` as `ci-deployer`: the delete is held, bob approves, and
/// kubectl must succeed. Returns how long the release took after the vote was counted.
async fn held_delete_released(bed: &TestBed, name: &str) -> anyhow::Result<Duration> {
    let out = bed
        .admin_kubectl(&["create", "configmap", name, "-n", "prod"], None)
        .await?;
    anyhow::ensure!(out.success, "creating configmap {name}: {}", out.stderr);
    let kubectl = bed.kubectl_spawn("ci-deployer", &["delete", "configmap", name, "-n", "prod"])?;
    let bob = bed.approvals_as("bob@example.com")?;
    let hold = eventually(&format!("the delete of {name} held"), DEADLINE, || async {
        bob.list(false)
            .await
            .ok()?
            .into_iter()
            .find(|h| h.name == name)
    })
    .await?;
    eventually(
        &format!("bob's vote on {name} counted"),
        DEADLINE,
        || async {
            let vote = bob
                .vote(&hold.approval_id, Ballot::Approve, None)
                .await
                .ok()?;
            vote.counted.then_some(())
        },
    )
    .await?;
    let voted = Instant::now();
    let out = tokio::time::timeout(DEADLINE, kubectl.wait_with_output())
        .await
        .map_err(|_| {
            anyhow::anyhow!("the approved delete of {name} was not released within {DEADLINE:?}")
        })??;
    let released = voted.elapsed();
    anyhow::ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .contains(&format!("configmap \"{name}\" deleted")),
        "the approved delete of {name}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(released)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_ride_out_node_losses_and_refuse_everything_without_a_quorum() -> Result {
    // Every request refused while a leader is elected logs a line; thousands of them would bury
    // the assertion that failed. The answers themselves are checked below.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(
            |_| "warn,async_nats=error,gatehouse_bus=error,gatehouse_proxy::pipeline=off,gatehouse_proxy::record=off".into(),
        ))
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir()?;
    let keys = NatsKeys::generate(&dir.path().join("nats-keys"))?;
    let env = gatehouse::nats_server::NatsRole::ALL
        .iter()
        .map(|r| (r.env().to_owned(), keys.public_key(*r).to_owned()))
        .collect();
    let mut cluster = NatsCluster::start(
        &dir.path().join("cluster"),
        3,
        gatehouse::nats_server::GATEHOUSE_CONF,
        env,
    )
    .await?;
    let bed = Arc::new(
        TestBed::start_with(BedOptions {
            nats_url: Some(cluster.url()),
            nats_keys: Some(keys),
            nats_replicas: 3,
            config_files: vec![policy_without_grants()],
            ..BedOptions::default()
        })
        .await?,
    );
    let stack = bed.stack();

    // A second proxy replica on the same cluster.
    let stop_proxy_2 = CancellationToken::new();
    let text = std::fs::read_to_string(stack.dir.join("config/proxy.yaml"))?
        .replace("replica: up", "replica: up-2");
    let mut config: gatehouse_proxy::ProxyConfig = yaml_serde::from_str(&text)?;
    config.listen = "127.0.0.1:0".parse()?;
    let proxy_2 = gatehouse_proxy::Proxy::build(config).await?;
    let proxies = vec![
        stack.proxy_url(),
        format!("https://{}", proxy_2.local_addr()),
    ];
    let proxy_2 = tokio::spawn(proxy_2.serve(stop_proxy_2.clone()));

    let answers = Arc::new(Mutex::new(Vec::new()));
    let stop_load = CancellationToken::new();
    let load = tokio::spawn(run_load(
        bed.clone(),
        proxies.clone(),
        bed.mint("ci-deployer")?,
        answers.clone(),
        stop_load.clone(),
    ));
    let began = Instant::now();
    tokio::time::sleep(PHASE).await;

    // Every stream and bucket is replicated three times. The first node lost leads the approval
    // bucket where it can (not the `GATEHOUSE` stream: see below); the second leads the
    // `GATEHOUSE` stream, so every request waits for its new leader.
    let admin = gatehouse_bus::Bus::connect(
        &stack.nats_config(gatehouse::nats_server::NatsRole::Admin),
        "cluster-test-admin",
    )
    .await?;
    let mut leaders = BTreeMap::new();
    for name in [
        "GATEHOUSE",
        "KV_gatehouse_approvals",
        "KV_gatehouse_deliveries",
        "KV_gatehouse_grants",
        "KV_gatehouse_evidence",
        "KV_gatehouse_evidence_checkpoints",
    ] {
        let info = admin
            .jetstream()
            .get_stream(name)
            .await?
            .info()
            .await?
            .clone();
        assert_eq!(
            info.config.num_replicas, 3,
            "{name} is not replicated three times"
        );
        let leader = info.cluster.and_then(|c| c.leader).unwrap_or_default();
        leaders.insert(name, leader);
    }
    let index_of = |stream: &str| {
        (0..cluster.size())
            .find(|i| leaders.get(stream).map(String::as_str) == Some(cluster.name(*i)))
    };
    let second = index_of("GATEHOUSE").unwrap_or(0);
    let first = index_of("KV_gatehouse_approvals")
        .filter(|i| *i != second)
        .unwrap_or((second + 1) % cluster.size());
    let third = (0..cluster.size())
        .find(|i| *i != first && *i != second)
        .unwrap_or(0);
    println!(
        "stream leaders: {leaders:?}; killing {} first",
        cluster.name(first)
    );

    // 1. One node down: the others keep a quorum. A held delete is still released.
    let t1 = Instant::now();
    cluster.kill(first).await?;
    // While the streams it led elect new leaders, requests are refused (503); then both
    // proxies forward again.
    let one_lost_recovery = both_forwarding(&answers, Instant::now(), proxies.len()).await;
    println!("phase 1: forwarding again after {one_lost_recovery:?}");
    let one_lost_release = held_delete_released(&bed, "first").await?;
    tokio::time::sleep(PHASE).await;
    cluster.restart(first).await?;
    let back_1 = Instant::now();
    tokio::time::sleep(PHASE).await;

    // 2. Another node down, then back.
    let t2 = Instant::now();
    cluster.kill(second).await?;
    let other_lost_recovery = both_forwarding(&answers, Instant::now(), proxies.len()).await;
    println!("phase 2: forwarding again after {other_lost_recovery:?}");
    let other_lost_release = held_delete_released(&bed, "second").await?;
    tokio::time::sleep(PHASE).await;
    cluster.restart(second).await?;
    let back_2 = Instant::now();
    tokio::time::sleep(PHASE).await;

    // 3. Two nodes down: no quorum, nothing may be forwarded.
    let t3 = Instant::now();
    cluster.kill(second).await?;
    cluster.kill(third).await?;
    let quorum_lost = Instant::now();
    tokio::time::sleep(PHASE).await;
    each_answered(&answers, quorum_lost, proxies.len()).await;
    let restarting = Instant::now();
    cluster.restart(second).await?;
    cluster.restart(third).await?;
    let restarted = Instant::now();
    let recovery = both_forwarding(&answers, restarted, proxies.len()).await;
    println!("phase 3: forwarding again {recovery:?} after the quorum returned");
    tokio::time::sleep(PHASE).await;
    stop_load.cancel();
    load.await?;
    let ended = Instant::now();

    let all = answers_between(&answers, began, ended);
    let phase = |from, to| answers_between(&answers, from, to);
    let (one_down, two_down, no_quorum) = (
        phase(t1, back_1),
        phase(t2, back_2),
        phase(quorum_lost, restarting),
    );
    // A node lost with a quorum left: requests are forwarded again once leaders are elected.
    assert!(
        one_lost_recovery < Duration::from_secs(60),
        "the proxies did not forward again within 60 s of losing a node"
    );
    assert!(
        other_lost_recovery < Duration::from_secs(60),
        "the proxies did not forward again within 60 s of losing another node"
    );
    assert!(
        count(&one_down, 200) > 0,
        "nothing forwarded with node 1 down"
    );
    assert!(
        count(&two_down, 200) > 0,
        "nothing forwarded with node 2 down"
    );
    // Without a quorum, every answer is the audit trail's 503; nothing else got through.
    assert!(
        !no_quorum.is_empty(),
        "no request was answered without a quorum"
    );
    for answer in &no_quorum {
        assert_eq!(answer.status, 503, "without a quorum: {answer:?}");
        assert!(
            answer.message.contains("audit trail"),
            "a 503 that does not say why: {answer:?}"
        );
    }
    assert!(
        recovery < Duration::from_secs(60),
        "the proxies did not forward again within 60 s of the quorum's return"
    );
    let unexpected: Vec<&Answer> = all
        .iter()
        .filter(|a| a.status != 200 && a.status != 503)
        .collect();
    assert!(
        unexpected.is_empty(),
        "answers other than 200 and 503: {unexpected:?}"
    );

    stop_proxy_2.cancel();
    proxy_2.await?;
    let upstream: BTreeSet<String> = bed
        .upstream_requests()
        .await?
        .into_iter()
        .filter_map(|r| r.audit_id)
        .collect();
    let bed =
        Arc::into_inner(bed).ok_or_else(|| anyhow::anyhow!("the load still holds the bed"))?;
    let finished = bed.finish().await?;

    // Every request answered 200 was received, acked, recorded once and forwarded once; none
    // answered 503 reached the cluster; no event is in the ledger twice.
    let mut received: BTreeMap<&str, usize> = BTreeMap::new();
    for event in finished
        .events
        .iter()
        .filter(|e| e.name() == "request.received")
    {
        *received.entry(event.subject()).or_default() += 1;
    }
    let mut ok_ids = 0;
    for answer in all.iter().filter(|a| a.status == 200) {
        let id = answer.request_id.as_deref().unwrap_or("");
        assert_eq!(
            received.get(id),
            Some(&1),
            "answered 200 but recorded otherwise: {answer:?}"
        );
        assert!(
            upstream.contains(id),
            "answered 200 but not in the API server's log: {id}"
        );
        ok_ids += 1;
    }
    for answer in all.iter().filter(|a| a.status == 503) {
        if let Some(id) = &answer.request_id {
            assert!(
                !upstream.contains(id),
                "answered 503 but forwarded: {answer:?}"
            );
        }
    }
    let ids: BTreeSet<&str> = finished
        .events
        .iter()
        .map(|e| e.value["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        ids.len(),
        finished.events.len(),
        "an event id is in the ledger twice"
    );

    let figures = serde_json::json!({
        "nodes": 3,
        "replicas": 3,
        "proxies": proxies.len(),
        "clients_per_proxy": CLIENTS_PER_PROXY,
        "pace_ms_per_client": PACE.as_millis() as u64,
        "phase_seconds": PHASE.as_secs(),
        "requests": all.len(),
        "forwarded_200": ok_ids,
        "refused_503": count(&all, 503),
        "one_node_down": { "requests": one_down.len(), "ok": count(&one_down, 200), "refused_503": count(&one_down, 503) },
        "another_node_down": { "requests": two_down.len(), "ok": count(&two_down, 200), "refused_503": count(&two_down, 503) },
        "no_quorum": { "requests": no_quorum.len(), "refused_503": count(&no_quorum, 503), "seconds": restarting.duration_since(quorum_lost).as_secs_f64() },
        "seconds_to_forward_again_after_quorum_returned": (recovery.as_millis() as f64) / 1000.0,
        "seconds_to_forward_again_after_losing_the_first_node": (one_lost_recovery.as_millis() as f64) / 1000.0,
        "seconds_to_forward_again_after_losing_the_second_node": (other_lost_recovery.as_millis() as f64) / 1000.0,
        "second_node_killed_led": leaders.iter().filter(|(_, l)| l.as_str() == cluster.name(second)).map(|(s, _)| *s).collect::<Vec<_>>(),
        "first_node_killed_led": leaders.iter().filter(|(_, l)| l.as_str() == cluster.name(first)).map(|(s, _)| *s).collect::<Vec<_>>(),
        "seconds_from_vote_to_release_with_the_first_node_down": (one_lost_release.as_millis() as f64) / 1000.0,
        "seconds_from_vote_to_release_with_the_second_node_down": (other_lost_release.as_millis() as f64) / 1000.0,
        "seconds_to_restart_two_nodes": restarted.duration_since(restarting).as_secs_f64(),
        "ledger_events": finished.events.len(),
        "ledger_request_received": received.len(),
        "answers_other_than_200_503": unexpected.len(),
        "load_seconds": ended.duration_since(began).as_secs_f64(),
        "t3_to_quorum_lost_ms": quorum_lost.duration_since(t3).as_millis() as u64,
    });
    println!("{}", serde_json::to_string_pretty(&figures)?);
    if std::env::var_os("GATEHOUSE_WRITE_RESULTS").is_some() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("bench/results/jetstream-cluster.json");
        std::fs::write(path, serde_json::to_string_pretty(&figures)? + "\n")?;
    }
    Ok(())
}
