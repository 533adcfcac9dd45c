//! Dependency resolution: which modules can start, and in what order.
//!
//! Builds the dependency graph with petgraph, refuses duplicates, missing or mismatched
//! dependencies and cycles, and orders the rest topologically with ties broken by name,
//! so the order is the same on every run. A module whose dependency failed fails too.
//! Pure computation: no I/O, no loading.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    path::{Path, PathBuf},
};

use petgraph::{algo::tarjan_scc, graph::NodeIndex, Direction, Graph};
use semver::{Version, VersionReq};

use crate::module::manifest::{Dependency, ModuleName};

/// What the resolver needs to know about one module.
#[derive(Debug, Clone, Copy)]
pub struct ModuleSpec<'a> {
    pub name: &'a str,
    pub version: &'a Version,
    pub dependencies: &'a BTreeMap<ModuleName, Dependency>,
    /// Where it came from (its folder), for error messages.
    pub origin: &'a Path,
}

/// Why a module cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("two or more modules are named `{name}`: {}; remove or rename all but one", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and "))]
    Duplicate { name: String, paths: Vec<PathBuf> },
    #[error("module `{module}` needs `{dependency}` {requirement}, but no module named `{dependency}` is present; add it to the modules directory")]
    Missing {
        module: String,
        dependency: String,
        requirement: VersionReq,
    },
    #[error("module `{module}` needs `{dependency}` {requirement}, but `{dependency}` {found} is present; install a matching version")]
    VersionMismatch {
        module: String,
        dependency: String,
        requirement: VersionReq,
        found: Version,
    },
    #[error("dependency cycle: {}; break the cycle by removing one of these dependencies", path.join(" -> "))]
    Cycle { path: Vec<String> },
    #[error("module `{module}` depends on `{dependency}`, which failed")]
    DependencyFailed { module: String, dependency: String },
}

/// The resolver's verdict.
#[derive(Debug, Default)]
pub struct Resolution {
    /// Indices into the input, in load order, of the modules that may start.
    pub order: Vec<usize>,
    /// Indices into the input of the modules that may not, with the reason.
    pub failed: BTreeMap<usize, ResolveError>,
}

/// Whether a dependency edge must be satisfied for its dependent to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    Required,
    Optional,
}

/// Nodes are indices into the modules; an edge runs from a dependency to its dependent.
type DependencyGraph = Graph<usize, Need>;

/// Resolves `modules`: see the file's doc comment.
pub fn resolve(modules: &[ModuleSpec<'_>]) -> Resolution {
    resolve_with(modules, Absent::Fails)
}

/// What a required dependency that is not among the modules means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {
    /// Its dependent fails (one host alone).
    Fails,
    /// It may run on another host of the cluster: the host checks that when the
    /// dependent starts, against the registry.
    MayBeRemote,
}

/// Resolves `modules`, with `absent` deciding what a missing dependency means.
pub fn resolve_with(modules: &[ModuleSpec<'_>], absent: Absent) -> Resolution {
    let mut failed: BTreeMap<usize, ResolveError> = BTreeMap::new();
    let by_name = index_by_name(modules);
    fail_duplicates(modules, &by_name, &mut failed);
    let (graph, nodes) = dependency_graph(modules, &by_name, absent, &mut failed);
    let on_cycle = fail_cycles(&graph, modules, &mut failed);
    let (order, reached) = load_order(&graph, &nodes, modules, &on_cycle, &mut failed);
    // Dependents of modules on a cycle were never reached by the ordering.
    for (i, m) in modules.iter().enumerate() {
        if !on_cycle[i] && !failed.contains_key(&i) && !reached[i] {
            let dep = m
                .dependencies
                .keys()
                .find(|d| {
                    by_name
                        .get(d.as_str())
                        .is_some_and(|t| t.iter().any(|&t| failed.contains_key(&t)))
                })
                .map(|d| d.to_string())
                .unwrap_or_default();
            failed.insert(
                i,
                ResolveError::DependencyFailed {
                    module: m.name.to_string(),
                    dependency: dep,
                },
            );
        }
    }
    Resolution { order, failed }
}

/// Module indices by name (several for a duplicated name).
fn index_by_name<'a>(modules: &[ModuleSpec<'a>]) -> HashMap<&'a str, Vec<usize>> {
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, m) in modules.iter().enumerate() {
        by_name.entry(m.name).or_default().push(i);
    }
    by_name
}

/// Every module sharing a name fails, naming all their folders.
fn fail_duplicates(
    modules: &[ModuleSpec<'_>],
    by_name: &HashMap<&str, Vec<usize>>,
    failed: &mut BTreeMap<usize, ResolveError>,
) {
    for (name, idxs) in by_name {
        if idxs.len() < 2 {
            continue;
        }
        let mut paths: Vec<PathBuf> = idxs
            .iter()
            .map(|&i| modules[i].origin.to_path_buf())
            .collect();
        paths.sort();
        for &i in idxs {
            failed.insert(
                i,
                ResolveError::Duplicate {
                    name: name.to_string(),
                    paths: paths.clone(),
                },
            );
        }
    }
}

/// An edge dependency → dependent for every present, matching dependency; a missing
/// (required), ambiguous or mismatched one fails its dependent instead.
fn dependency_graph(
    modules: &[ModuleSpec<'_>],
    by_name: &HashMap<&str, Vec<usize>>,
    absent: Absent,
    failed: &mut BTreeMap<usize, ResolveError>,
) -> (DependencyGraph, Vec<NodeIndex>) {
    let mut graph = DependencyGraph::with_capacity(modules.len(), modules.len());
    let nodes: Vec<NodeIndex> = (0..modules.len()).map(|i| graph.add_node(i)).collect();
    for (i, m) in modules.iter().enumerate() {
        for (dep_name, dep) in m.dependencies {
            let Some(targets) = by_name.get(dep_name.as_str()) else {
                if !dep.optional && absent == Absent::Fails {
                    failed.entry(i).or_insert(ResolveError::Missing {
                        module: m.name.to_string(),
                        dependency: dep_name.to_string(),
                        requirement: dep.version.clone(),
                    });
                }
                continue;
            };
            let target = targets[0];
            if targets.len() > 1 {
                failed.entry(i).or_insert(ResolveError::DependencyFailed {
                    module: m.name.to_string(),
                    dependency: dep_name.to_string(),
                });
                continue;
            }
            let found = modules[target].version;
            if !dep.version.matches(found) {
                failed.entry(i).or_insert(ResolveError::VersionMismatch {
                    module: m.name.to_string(),
                    dependency: dep_name.to_string(),
                    requirement: dep.version.clone(),
                    found: found.clone(),
                });
                continue;
            }
            let need = match dep.optional {
                true => Need::Optional,
                false => Need::Required,
            };
            graph.add_edge(nodes[target], nodes[i], need);
        }
    }
    (graph, nodes)
}

/// Every module on a cycle fails, with the cycle spelled out; returns who is on one.
fn fail_cycles(
    graph: &DependencyGraph,
    modules: &[ModuleSpec<'_>],
    failed: &mut BTreeMap<usize, ResolveError>,
) -> Vec<bool> {
    let mut on_cycle = vec![false; modules.len()];
    for scc in tarjan_scc(graph) {
        let is_cycle = scc.len() > 1 || graph.contains_edge(scc[0], scc[0]);
        if !is_cycle {
            continue;
        }
        let path = cycle_path(graph, &scc, modules);
        for n in scc {
            let i = graph[n];
            on_cycle[i] = true;
            failed.insert(i, ResolveError::Cycle { path: path.clone() });
        }
    }
    on_cycle
}

/// Kahn's algorithm over the modules off cycles, smallest name first among the ready
/// ones, so the order is the same on every run. A module whose required dependency
/// failed fails too. Returns the order and which modules were reached.
fn load_order(
    graph: &DependencyGraph,
    nodes: &[NodeIndex],
    modules: &[ModuleSpec<'_>],
    on_cycle: &[bool],
    failed: &mut BTreeMap<usize, ResolveError>,
) -> (Vec<usize>, Vec<bool>) {
    let mut indegree: Vec<usize> = vec![0; modules.len()];
    for e in graph.edge_indices() {
        if let Some((from, to)) = graph.edge_endpoints(e) {
            if !on_cycle[graph[from]] {
                indegree[graph[to]] += 1;
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<(&str, usize)>> = BinaryHeap::new();
    for (i, m) in modules.iter().enumerate() {
        if !on_cycle[i] && indegree[i] == 0 {
            ready.push(Reverse((m.name, i)));
        }
    }
    let mut order = Vec::with_capacity(modules.len());
    let mut reached = vec![false; modules.len()];
    while let Some(Reverse((name, i))) = ready.pop() {
        reached[i] = true;
        if !failed.contains_key(&i) {
            match failed_requirement(graph, nodes[i], modules, failed) {
                Some(dependency) => {
                    failed.insert(
                        i,
                        ResolveError::DependencyFailed {
                            module: name.to_string(),
                            dependency,
                        },
                    );
                }
                None => order.push(i),
            }
        }
        for next in graph.neighbors_directed(nodes[i], Direction::Outgoing) {
            let dependent = graph[next];
            if on_cycle[dependent] {
                continue;
            }
            indegree[dependent] -= 1;
            if indegree[dependent] == 0 {
                ready.push(Reverse((modules[dependent].name, dependent)));
            }
        }
    }
    (order, reached)
}

/// The first (by name) required dependency of `node` that failed.
fn failed_requirement(
    graph: &DependencyGraph,
    node: NodeIndex,
    modules: &[ModuleSpec<'_>],
    failed: &BTreeMap<usize, ResolveError>,
) -> Option<String> {
    use petgraph::visit::EdgeRef as _;
    graph
        .edges_directed(node, Direction::Incoming)
        .filter(|e| *e.weight() == Need::Required && failed.contains_key(&graph[e.source()]))
        .map(|e| modules[graph[e.source()]].name)
        .min()
        .map(str::to_string)
}

/// One cycle through `scc`, as module names from the smallest name back to itself,
/// following "depends on" edges: `a -> b -> a` means a depends on b and b on a.
fn cycle_path(
    graph: &DependencyGraph,
    scc: &[NodeIndex],
    modules: &[ModuleSpec<'_>],
) -> Vec<String> {
    let in_scc = |n: &NodeIndex| scc.contains(n);
    let Some(&start) = scc.iter().min_by_key(|n| modules[graph[**n]].name) else {
        return Vec::new();
    };
    // Depth-first along dependencies (incoming edges), smallest name first.
    let mut path = vec![start];
    let mut visited = vec![start];
    while let Some(&current) = path.last() {
        let mut next: Vec<NodeIndex> = graph
            .neighbors_directed(current, Direction::Incoming)
            .filter(in_scc)
            .collect();
        next.sort_by_key(|n| modules[graph[*n]].name);
        if next.contains(&start) {
            path.push(start);
            break;
        }
        match next.into_iter().find(|n| !visited.contains(n)) {
            Some(n) => {
                visited.push(n);
                path.push(n);
            }
            None => {
                path.pop();
            }
        }
    }
    path.iter()
        .map(|n| modules[graph[*n]].name.to_string())
        .collect()
}
