//! The catalog of malformed manifests: every file in `fixtures/manifests/` starts with
//! `# expect: TEXT`, and parsing it must fail with an error that contains TEXT and names
//! the file and a line:column. Add a case by adding a file.

use std::path::Path;

use modhost::module::manifest::{Manifest, ManifestError, MAX_MANIFEST_BYTES};

#[test]
fn every_fixture_fails_with_its_expected_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/manifests");
    let mut cases = 0;
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks a `# expect:` first line", path.display()))
            .to_string();
        cases += 1;
        match Manifest::load(&path) {
            Ok(m) => failures.push(format!(
                "{}: parsed as {:?}, expected an error",
                path.display(),
                m.name
            )),
            Err(e) => {
                let msg = e.to_string();
                let located = matches!(e, ManifestError::Invalid { line, column, .. } if line >= 1 && column >= 1);
                if !msg.contains(&expect)
                    || !msg.starts_with(&path.display().to_string())
                    || !located
                {
                    failures.push(format!(
                        "{}:\n  expected: {expect}\n  got:      {msg}",
                        path.display()
                    ));
                }
            }
        }
    }
    assert!(cases >= 40, "the catalog shrank to {cases} cases");
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn oversized_manifest_is_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("module.yaml");
    let mut text = String::from("name: blog\nversion: 1.0.0\ndescription: \"");
    text.push_str(&"x".repeat(MAX_MANIFEST_BYTES as usize));
    text.push_str("\"\n");
    std::fs::write(&path, text).unwrap();
    let err = Manifest::load(&path).unwrap_err();
    assert!(matches!(err, ManifestError::TooLarge { .. }), "{err}");
    assert!(
        err.to_string().contains("over the 65536-byte limit"),
        "{err}"
    );
}

#[test]
fn full_manifest_parses() {
    let text = r#"
name: blog
version: 1.2.0
description: Blog posts
library: libblog.so
dependencies:
  billing: ">=1.0, <2"
  search: { version: "^0.3", optional: true }
permissions: [blog.post.create, blog.post.read]
events:
  publishes: [blog.post.created]
  subscribes: [billing.subscription.*, billing.>]
config:
  page_size: 20
"#;
    let m = Manifest::parse(text, Path::new("module.yaml")).unwrap();
    assert_eq!(m.name.as_str(), "blog");
    assert_eq!(m.version.to_string(), "1.2.0");
    assert_eq!(m.dependencies.len(), 2);
    let search = m
        .dependencies
        .iter()
        .find(|(n, _)| n.as_str() == "search")
        .unwrap()
        .1;
    assert!(search.optional);
    assert_eq!(m.permissions.len(), 2);
    assert_eq!(m.events.subscribes.len(), 2);
    assert_eq!(m.config["page_size"], 20);
}

#[test]
fn annotated_example_manifest_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/module.example.yaml");
    let m = Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.name.as_str(), "blog");
}

#[test]
fn example_plugin_manifests_are_valid() {
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    for name in ["hello", "blog", "billing", "notifications"] {
        let path = plugins.join(name).join("module.yaml");
        Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}
