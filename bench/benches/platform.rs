//! The resolver on a synthetic 10,000-module graph, the in-process event bus
//! (publish → deliver throughput) and a module-to-module service call round trip.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RArc, RResult, RString},
};
use async_ffi::{FfiFuture, FutureExt as _};
use modhost::events::{memory::InProcessBus, BusSettings, EventBus};
use modhost::module::manifest::{Dependency, ModuleName};
use modhost::module::resolve::{resolve, ModuleSpec};
use modhost::services::local::ServiceRegistry;
use modhost_plugin_api::ffi::{
    FfiCallError, FfiEvent, FfiEventHandler, FfiEventHandler_TO, FfiServiceHandler,
    FfiServiceHandler_TO, FfiUnitResult,
};

fn main() {
    divan::main();
}

/// A random DAG: every module depends on up to three earlier ones.
fn graph(
    n: usize,
) -> (
    Vec<String>,
    semver::Version,
    Vec<BTreeMap<ModuleName, Dependency>>,
    PathBuf,
) {
    let names: Vec<String> = (0..n).map(|i| format!("m{i:05}")).collect();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let deps = (0..n)
        .map(|i| {
            let mut d = BTreeMap::new();
            if i > 0 {
                for _ in 0..(next() % 4) {
                    let j = (next() as usize) % i;
                    let name = ModuleName::parse(&names[j]).expect("valid name");
                    d.insert(
                        name,
                        Dependency {
                            version: semver::VersionReq::parse(">=1.0").expect("req"),
                            optional: false,
                        },
                    );
                }
            }
            d
        })
        .collect();
    (
        names,
        semver::Version::new(1, 0, 0),
        deps,
        PathBuf::from("/bench"),
    )
}

#[divan::bench]
fn resolve_10000_modules(bencher: divan::Bencher) {
    let (names, version, deps, origin) = graph(10_000);
    let specs: Vec<ModuleSpec<'_>> = names
        .iter()
        .zip(&deps)
        .map(|(name, dependencies)| ModuleSpec {
            name,
            version: &version,
            dependencies,
            origin: &origin,
        })
        .collect();
    bencher.bench_local(|| {
        let r = resolve(&specs);
        assert_eq!(r.order.len(), 10_000);
        r
    });
}

struct Count(Arc<AtomicU64>);

impl FfiEventHandler for Count {
    fn handle(&self, _event: FfiEvent) -> FfiFuture<FfiUnitResult> {
        self.0.fetch_add(1, Ordering::Relaxed);
        async { RResult::ROk(()) }.into_ffi()
    }
}

const EVENTS: u64 = 100_000;

/// Publishes 100,000 small events and waits until the subscriber has them all.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn bus_publish_deliver_100k(bencher: divan::Bencher) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    bencher
        .counter(divan::counter::ItemsCount::new(EVENTS))
        .bench_local(|| {
            rt.block_on(async {
                let settings = BusSettings {
                    queue_capacity: EVENTS as usize,
                    ..BusSettings::default()
                };
                let bus = InProcessBus::new(settings, Arc::new(|_| {}));
                let seen = Arc::new(AtomicU64::new(0));
                let handler =
                    FfiEventHandler_TO::from_ptr(RArc::new(Count(seen.clone())), TD_Opaque);
                bus.subscribe("sub", "bench.item.*", Arc::new(handler));
                for _ in 0..EVENTS {
                    bus.publish("pub", "bench.item.created", "{\"n\":1}".to_string())
                        .await
                        .expect("publish");
                }
                while seen.load(Ordering::Relaxed) < EVENTS {
                    tokio::task::yield_now().await;
                }
            })
        });
}

/// One event from publish to the subscriber's handler, one at a time.
#[divan::bench]
fn bus_publish_deliver_latency(bencher: divan::Bencher) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let bus = rt.block_on(async { InProcessBus::new(BusSettings::default(), Arc::new(|_| {})) });
    let seen = Arc::new(AtomicU64::new(0));
    let handler = FfiEventHandler_TO::from_ptr(RArc::new(Count(seen.clone())), TD_Opaque);
    rt.block_on(async { bus.subscribe("sub", "bench.item.*", Arc::new(handler)) });
    bencher.bench_local(|| {
        rt.block_on(async {
            let before = seen.load(Ordering::Relaxed);
            bus.publish("pub", "bench.item.created", "{\"n\":1}".to_string())
                .await
                .expect("publish");
            while seen.load(Ordering::Relaxed) == before {
                tokio::task::yield_now().await;
            }
        })
    });
}

struct Echo;

impl FfiServiceHandler for Echo {
    fn call(
        &self,
        _caller: RString,
        request: RString,
    ) -> FfiFuture<RResult<RString, FfiCallError>> {
        async move { RResult::ROk(request) }.into_ffi()
    }
}

#[divan::bench]
fn service_call_round_trip(bencher: divan::Bencher) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let registry = ServiceRegistry::default();
    registry.register(
        "billing",
        "billing.subscription.get",
        Arc::new(FfiServiceHandler_TO::from_ptr(RArc::new(Echo), TD_Opaque)),
    );
    bencher.bench_local(|| {
        rt.block_on(registry.call(
            "blog",
            "billing.subscription.get",
            "{\"user_id\":\"u1\"}".into(),
            Duration::from_secs(1),
            None,
        ))
        .expect("call")
    });
}
