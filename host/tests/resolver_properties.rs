//! The resolver's invariants over random dependency graphs (proptest):
//! - on a graph without cycles, every module starts and the load order puts every
//!   dependency before its dependents;
//! - a cycle is always reported, on every module of it, with its path: a closed walk
//!   along "depends on" edges that passes through the cycle's modules;
//! - one module that cannot start fails exactly itself and its transitive dependents.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use modhost::module::{
    manifest::{Dependency, ModuleName},
    resolve::{resolve, ModuleSpec, ResolveError},
};
use proptest::prelude::*;
use semver::{Version, VersionReq};

/// `n` modules `m0`… and their dependencies: `deps[i]` lists indices `i` depends on.
#[derive(Debug, Clone)]
struct Graph {
    deps: Vec<BTreeSet<usize>>,
}

impl Graph {
    fn name(i: usize) -> String {
        format!("m{i}")
    }

    /// The manifests' dependency maps, with `extra` names added to some modules.
    fn maps(&self, extra: &BTreeMap<usize, &str>) -> Vec<BTreeMap<ModuleName, Dependency>> {
        self.deps
            .iter()
            .enumerate()
            .map(|(i, ds)| {
                let mut map: BTreeMap<ModuleName, Dependency> = ds
                    .iter()
                    .map(|&d| (ModuleName::parse(&Self::name(d)).unwrap(), dep()))
                    .collect();
                if let Some(name) = extra.get(&i) {
                    map.insert(ModuleName::parse(name).unwrap(), dep());
                }
                map
            })
            .collect()
    }

    /// Who depends on `i`, directly or not.
    fn dependents_of(&self, i: usize) -> BTreeSet<usize> {
        let mut found = BTreeSet::new();
        let mut todo = vec![i];
        while let Some(x) = todo.pop() {
            for (j, ds) in self.deps.iter().enumerate() {
                if ds.contains(&x) && found.insert(j) {
                    todo.push(j);
                }
            }
        }
        found
    }
}

fn dep() -> Dependency {
    Dependency {
        version: VersionReq::parse(">=1").unwrap(),
        optional: false,
    }
}

/// A random DAG: module `i` may depend on any module with a smaller index.
fn dag() -> impl Strategy<Value = Graph> {
    (2usize..14).prop_flat_map(|n| {
        proptest::collection::vec(proptest::collection::vec(any::<bool>(), n), n).prop_map(
            move |picks| Graph {
                deps: (0..n)
                    .map(|i| (0..i).filter(|&j| picks[i][j]).collect())
                    .collect(),
            },
        )
    })
}

fn run(graph: &Graph, extra: &BTreeMap<usize, &str>) -> modhost::module::resolve::Resolution {
    let version = Version::new(1, 0, 0);
    let names: Vec<String> = (0..graph.deps.len()).map(Graph::name).collect();
    let maps = graph.maps(extra);
    let origin = PathBuf::from("modules");
    let specs: Vec<ModuleSpec<'_>> = names
        .iter()
        .zip(&maps)
        .map(|(name, deps)| ModuleSpec {
            name,
            version: &version,
            dependencies: deps,
            origin: &origin,
        })
        .collect();
    resolve(&specs)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_order_respects_every_edge(graph in dag()) {
        let r = run(&graph, &BTreeMap::new());
        prop_assert!(r.failed.is_empty(), "{:?}", r.failed);
        prop_assert_eq!(r.order.len(), graph.deps.len());
        let position: BTreeMap<usize, usize> =
            r.order.iter().enumerate().map(|(pos, &i)| (i, pos)).collect();
        for (i, ds) in graph.deps.iter().enumerate() {
            for d in ds {
                prop_assert!(position[d] < position[&i], "m{} loads before its dependency m{}", i, d);
            }
        }
    }

    #[test]
    fn a_cycle_is_always_reported_with_its_path(
        mut graph in dag(),
        a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(),
    ) {
        let n = graph.deps.len();
        let (x, y) = (a.index(n), b.index(n));
        prop_assume!(x != y);
        let (high, low) = (x.max(y), x.min(y));
        // high depends on low, and low on high: a cycle.
        graph.deps[high].insert(low);
        graph.deps[low].insert(high);
        let r = run(&graph, &BTreeMap::new());
        for i in [high, low] {
            match r.failed.get(&i) {
                Some(ResolveError::Cycle { path }) => {
                    prop_assert!(path.len() >= 3, "{:?}", path);
                    prop_assert_eq!(path.first(), path.last());
                    for pair in path.windows(2) {
                        let from: usize = pair[0][1..].parse().unwrap();
                        let to: usize = pair[1][1..].parse().unwrap();
                        prop_assert!(graph.deps[from].contains(&to), "{} does not depend on {}: {:?}", pair[0], pair[1], path);
                    }
                    prop_assert!(path.contains(&Graph::name(high)) || path.contains(&Graph::name(low)));
                }
                other => prop_assert!(false, "m{} on a cycle: {:?}", i, other),
            }
            prop_assert!(!r.order.contains(&i));
        }
    }

    #[test]
    fn a_failure_propagates_exactly_to_dependents(
        graph in dag(),
        k in any::<prop::sample::Index>(),
    ) {
        let k = k.index(graph.deps.len());
        // m<k> needs a module that is not there.
        let extra = BTreeMap::from([(k, "ghost")]);
        let r = run(&graph, &extra);
        let mut expected = graph.dependents_of(k);
        expected.insert(k);
        let failed: BTreeSet<usize> = r.failed.keys().copied().collect();
        prop_assert_eq!(&failed, &expected);
        let missing_ghost = matches!(
            r.failed.get(&k),
            Some(ResolveError::Missing { dependency, .. }) if dependency == "ghost"
        );
        prop_assert!(missing_ghost, "m{}: {:?}", k, r.failed.get(&k));
        for i in expected.iter().filter(|&&i| i != k) {
            let is_dependency_failed = matches!(r.failed.get(i), Some(ResolveError::DependencyFailed { .. }));
            prop_assert!(is_dependency_failed, "m{}: {:?}", i, r.failed.get(i));
        }
        prop_assert_eq!(r.order.len() + failed.len(), graph.deps.len());
    }
}
