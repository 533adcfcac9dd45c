//! Offline views of a modules directory, for `modhost check`, `list` and `graph`.
//!
//! No module entry point is called here: `check` verifies each library (signature,
//! `sha256:` pin, ELF headers) under the same trust policy as `run`, and only a library
//! that passed is loaded to check its ABI. Loading runs the library's ELF constructors,
//! as for any shared library: what the trust policy accepts is trusted that far.

use std::{fmt::Write as _, path::Path};

use crate::module::discovery::{
    discover, discover_one, Discovery, DiscoveryError, DiscoveryProblem,
};
use crate::module::loader::{load_verified, RuntimeDir};
use crate::module::resolve::{resolve_with, Absent, ModuleSpec, Resolution};
use crate::module::signing::TrustPolicy;

/// What [`Inspection::check`] found.
pub struct Checked {
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// A modules directory, discovered and resolved.
pub struct Inspection {
    pub discovery: Discovery,
    pub resolution: Resolution,
}

impl Inspection {
    /// Discovers and resolves `dir`.
    pub fn of(dir: &Path) -> Result<Inspection, DiscoveryError> {
        Self::of_with(dir, Absent::Fails)
    }

    /// As [`Inspection::of`], with `absent` deciding what a missing dependency means
    /// (in a cluster it may run on another host).
    pub fn of_with(dir: &Path, absent: Absent) -> Result<Inspection, DiscoveryError> {
        let discovery = discover(dir)?;
        let resolution = resolve_with(&specs(&discovery), absent);
        Ok(Inspection {
            discovery,
            resolution,
        })
    }

    /// One module's folder, alone: discovered, and not resolved (its dependencies are
    /// elsewhere).
    pub fn of_module(dir: &Path) -> Inspection {
        let mut discovery = Discovery::default();
        match discover_one(dir) {
            Ok(Some(module)) => discovery.modules.push(module),
            Ok(None) => {}
            Err((label, error)) => discovery.problems.push(DiscoveryProblem {
                dir: dir.to_path_buf(),
                label,
                error,
            }),
        }
        Inspection {
            discovery,
            resolution: Resolution::default(),
        }
    }

    /// Every problem: discovery, then resolution (unless `alone`), then each library's
    /// signature and integrity under `policy`, then its ABI. The notes say who signed
    /// each module and, for a module checked `alone`, which dependencies it needs.
    pub fn check(&self, runtime: &RuntimeDir, policy: &TrustPolicy, alone: bool) -> Checked {
        let mut problems: Vec<String> = self
            .discovery
            .problems
            .iter()
            .map(|p| p.error.to_string())
            .collect();
        problems.extend(self.resolution.failed.values().map(|e| e.to_string()));
        let mut notes = Vec::new();
        for m in &self.discovery.modules {
            let name = &m.manifest.name;
            match load_verified(&m.dir, &m.manifest, &m.library, policy, runtime) {
                Ok(loaded) => notes.push(match loaded.signed {
                    Some(s) => format!("{name}: signed by {} ({} files)", s.key, s.files.len()),
                    None => format!("{name}: unsigned"),
                }),
                Err(e) => problems.push(e.to_string()),
            }
            if alone {
                for (dep, spec) in &m.manifest.dependencies {
                    let optional = if spec.optional { ", optional" } else { "" };
                    notes.push(format!(
                        "{name} depends on {dep} {}{optional}: not present here; check the modules directory it will run in",
                        spec.version
                    ));
                }
            }
        }
        problems.dedup();
        Checked { problems, notes }
    }

    /// A table of modules: load order, name, version, status, dependencies.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 5]> = Vec::new();
        for (pos, &i) in self.resolution.order.iter().enumerate() {
            let m = &self.discovery.modules[i].manifest;
            rows.push([
                (pos + 1).to_string(),
                m.name.to_string(),
                m.version.to_string(),
                "ok".into(),
                deps(m),
            ]);
        }
        for (&i, err) in &self.resolution.failed {
            let m = &self.discovery.modules[i].manifest;
            rows.push([
                "-".into(),
                m.name.to_string(),
                m.version.to_string(),
                format!("error: {err}"),
                deps(m),
            ]);
        }
        for p in &self.discovery.problems {
            rows.push([
                "-".into(),
                p.label.clone(),
                "?".into(),
                format!("error: {}", p.error),
                String::new(),
            ]);
        }
        let header = ["ORDER", "NAME", "VERSION", "STATUS", "DEPENDS ON"].map(String::from);
        let mut widths = [0usize; 4];
        for row in std::iter::once(&header).chain(&rows) {
            for (w, cell) in widths.iter_mut().zip(row.iter()) {
                *w = (*w).max(cell.chars().count());
            }
        }
        // The status column can be long; only pad it when nothing follows it.
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&rows) {
            let _ = writeln!(
                out,
                "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                row[4],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3].min(40),
            );
        }
        out
    }

    /// The dependency graph in Graphviz dot: an edge `a -> b` means a depends on b.
    pub fn dot(&self) -> String {
        let mut out = String::from("digraph modules {\n  rankdir=LR;\n  node [shape=box];\n");
        for (i, m) in self.discovery.modules.iter().enumerate() {
            let m = &m.manifest;
            let style = if self.resolution.failed.contains_key(&i) {
                ", color=red"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  \"{}\" [label=\"{}\\n{}\"{style}];",
                m.name, m.name, m.version
            );
        }
        for m in &self.discovery.modules {
            for (dep, spec) in &m.manifest.dependencies {
                let style = if spec.optional { ", style=dashed" } else { "" };
                let _ = writeln!(
                    out,
                    "  \"{}\" -> \"{dep}\" [label=\"{}\"{style}];",
                    m.manifest.name, spec.version
                );
            }
        }
        out.push_str("}\n");
        out
    }

    /// The dependency graph as a Mermaid flowchart.
    pub fn mermaid(&self) -> String {
        let mut out = String::from("graph LR\n");
        for (i, m) in self.discovery.modules.iter().enumerate() {
            let m = &m.manifest;
            let _ = writeln!(out, "  {}[\"{} {}\"]", m.name, m.name, m.version);
            if self.resolution.failed.contains_key(&i) {
                let _ = writeln!(out, "  style {} stroke:#f00", m.name);
            }
        }
        for m in &self.discovery.modules {
            for (dep, spec) in &m.manifest.dependencies {
                let arrow = if spec.optional { "-.->" } else { "-->" };
                let _ = writeln!(
                    out,
                    "  {} {arrow}|\"{}\"| {dep}",
                    m.manifest.name,
                    spec.version.to_string().replace('"', "'")
                );
            }
        }
        out
    }
}

fn specs(d: &Discovery) -> Vec<ModuleSpec<'_>> {
    d.modules
        .iter()
        .map(|m| ModuleSpec {
            name: m.manifest.name.as_str(),
            version: &m.manifest.version,
            dependencies: &m.manifest.dependencies,
            origin: &m.dir,
        })
        .collect()
}

fn deps(m: &crate::module::manifest::Manifest) -> String {
    m.dependencies
        .iter()
        .map(|(n, d)| {
            let opt = if d.optional { " (optional)" } else { "" };
            format!("{n} {}{opt}", d.version)
        })
        .collect::<Vec<_>>()
        .join(", ")
}
