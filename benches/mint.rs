//! Interception leaves: a cold mint (a new host each time: key generation, signing and the server config, on the
//! blocking pool) and a cache hit (a host minted before).
//!
//! `cargo bench --bench mint`.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use tollgate::intercept::ca::Minter;
use tollgate::target::Host;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn mint(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (minter, _) = Minter::load_or_create(&dir.path().join("ca.pem"), &dir.path().join("ca.key"), DAY, 1000)
        .expect("interception CA");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().expect("runtime");

    let mut next = 0u64;
    c.bench_function("mint: cold (new host each time, cache of 1000 full)", |b| {
        b.iter(|| {
            next += 1;
            let host = Host::Name(format!("host{next}.bench.test").into());
            black_box(runtime.block_on(minter.server_config(&host)).expect("minted"))
        })
    });

    let host = Host::Name("api.anthropic.com".into());
    runtime.block_on(minter.server_config(&host)).expect("minted");
    c.bench_function("mint: cache hit", |b| {
        b.iter(|| black_box(runtime.block_on(minter.server_config(black_box(&host))).expect("cached")))
    });
}

criterion_group!(benches, mint);
criterion_main!(benches);
