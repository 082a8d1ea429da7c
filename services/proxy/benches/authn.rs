//! Token verification, cached vs uncached, ES256 and RS256.
//!
//! `cargo bench -p gatehouse-proxy --bench authn`. "uncached" turns the verified-token cache
//! off, so each iteration parses the token, finds the prepared key and checks the signature;
//! "cached" answers a token seen before from the cache (BLAKE3 of the token + a map lookup).

#[path = "../tests/authn_support/mod.rs"]
mod authn_support;

use std::hint::black_box;

use authn_support::{SigningKey, bearer, claims, issuer_config, write_jwks};
use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse_proxy::authn::{Authenticator, AuthnOptions};

const ISS: &str = "https://issuer.bench";

fn verification(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = dir.path().join("jwks.json");
    let (es, rs) = (SigningKey::es256(), SigningKey::rs256());
    write_jwks(&jwks, &[&es, &rs]);
    let issuer = issuer_config(&format!(
        "issuer: {ISS}\njwks_file: {}\naudiences: [gatehouse]\nalgorithms: [ES256, RS256]\n",
        jwks.display()
    ));
    let build = |cache_capacity| {
        runtime
            .block_on(Authenticator::new(
                std::slice::from_ref(&issuer),
                AuthnOptions {
                    cache_capacity,
                    ..AuthnOptions::default()
                },
            ))
            .expect("authenticator")
    };
    let (uncached, cached) = (build(0), build(10_000));

    let mut group = c.benchmark_group("authn");
    for (name, key) in [("ES256", &es), ("RS256", &rs)] {
        let headers = bearer(&key.sign(&claims(ISS, "bench-bot", 3600)));
        for (mode, authn) in [("uncached", &uncached), ("cached", &cached)] {
            group.bench_function(format!("{name}/{mode}"), |b| {
                // block_on on a current-thread runtime: the same small overhead in every case.
                b.iter(|| {
                    let verified = runtime
                        .block_on(authn.authenticate(black_box(&headers), None))
                        .expect("verifies");
                    black_box(verified)
                })
            });
        }
    }
    group.finish();
    let stats = cached.cache_stats();
    println!(
        "cache: {} hits, {} misses, {} entries",
        stats.hits, stats.misses, stats.entries
    );
}

criterion_group!(benches, verification);
criterion_main!(benches);
