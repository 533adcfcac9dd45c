//! Discovery and dependency-resolution errors, one test per case, plus `modhost check`,
//! `list` and `graph` on real modules directories.

mod common;

use std::path::Path;

use common::{lib_file, modhost, Modules};
use modhost::module::discovery::{discover, DiscoveryError};
use modhost::module::inspect::Inspection;
use modhost::module::resolve::ResolveError;

fn module(dir: &Path, folder: &str, manifest: &str, libs: &[&str]) {
    let d = dir.join(folder);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("module.yaml"), manifest).unwrap();
    for lib in libs {
        std::fs::write(d.join(lib), b"\x7fELF-not-really").unwrap();
    }
}

fn only_problem(dir: &Path) -> DiscoveryError {
    let mut d = discover(dir).unwrap();
    assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
    d.problems.remove(0).error
}

#[test]
fn no_library_lists_what_was_found() {
    let m = Modules::new();
    module(
        &m.dir(),
        "blog",
        "name: blog\nversion: 1.0.0\n",
        &["README.md"],
    );
    let err = only_problem(&m.dir());
    assert!(matches!(err, DiscoveryError::NoLibrary { .. }), "{err}");
    assert!(err.to_string().contains("found: README.md"), "{err}");
}

#[test]
fn several_libraries_are_listed() {
    let m = Modules::new();
    module(
        &m.dir(),
        "blog",
        "name: blog\nversion: 1.0.0\n",
        &["liba.so", "libb.so"],
    );
    let err = only_problem(&m.dir()).to_string();
    assert!(
        err.contains("several shared libraries (liba.so, libb.so)"),
        "{err}"
    );
    assert!(err.contains("name the right one with `library:`"), "{err}");
}

#[test]
fn named_library_picks_among_several() {
    let m = Modules::new();
    module(
        &m.dir(),
        "blog",
        "name: blog\nversion: 1.0.0\nlibrary: libb.so\n",
        &["liba.so", "libb.so"],
    );
    let d = discover(&m.dir()).unwrap();
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    assert!(d.modules[0].library.ends_with("libb.so"));
}

#[test]
fn named_library_missing() {
    let m = Modules::new();
    module(
        &m.dir(),
        "blog",
        "name: blog\nversion: 1.0.0\nlibrary: libnope.so\n",
        &[],
    );
    let err = only_problem(&m.dir()).to_string();
    assert!(
        err.contains("library `libnope.so` named in module.yaml does not exist"),
        "{err}"
    );
}

#[test]
fn library_path_with_dotdot_is_refused() {
    let m = Modules::new();
    module(
        &m.dir(),
        "blog",
        "name: blog\nversion: 1.0.0\nlibrary: ../x/libx.so\n",
        &[],
    );
    let err = only_problem(&m.dir()).to_string();
    assert!(err.contains("leaves the module folder"), "{err}");
}

#[test]
fn absolute_library_path_is_refused() {
    let m = Modules::new();
    module(
        &m.dir(),
        "blog",
        "name: blog\nversion: 1.0.0\nlibrary: /lib/libc.so.6\n",
        &[],
    );
    let err = only_problem(&m.dir()).to_string();
    assert!(err.contains("is an absolute path"), "{err}");
}

#[cfg(unix)]
#[test]
fn symlink_pointing_outside_is_refused() {
    let m = Modules::new();
    let outside = m.tmp.path().join("outside.so");
    std::fs::write(&outside, b"\x7fELF").unwrap();
    module(&m.dir(), "blog", "name: blog\nversion: 1.0.0\n", &[]);
    std::os::unix::fs::symlink(&outside, m.dir().join("blog/libblog.so")).unwrap();
    let err = only_problem(&m.dir());
    assert!(
        matches!(err, DiscoveryError::LibraryEscapes { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("outside the module folder"),
        "{err}"
    );
}

#[test]
fn misnamed_manifest_gets_a_hint() {
    let m = Modules::new();
    let d = m.dir().join("blog");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("module.yml"), "name: blog\n").unwrap();
    let err = only_problem(&m.dir()).to_string();
    assert!(err.contains("rename it to module.yaml"), "{err}");
}

#[test]
fn folders_without_manifest_are_not_modules() {
    let m = Modules::new();
    std::fs::create_dir_all(m.dir().join("notes")).unwrap();
    let d = discover(&m.dir()).unwrap();
    assert!(d.modules.is_empty() && d.problems.is_empty());
}

#[test]
fn missing_modules_dir_is_a_clear_error() {
    let err = discover(Path::new("/nonexistent/modhost/modules"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot read the modules directory /nonexistent/modhost/modules"),
        "{err}"
    );
    assert!(err.contains("--modules DIR"), "{err}");
}

fn resolve_dir(m: &Modules) -> Inspection {
    Inspection::of(&m.dir()).unwrap()
}

fn failure(i: &Inspection, name: &str) -> ResolveError {
    let idx = i
        .discovery
        .modules
        .iter()
        .position(|m| m.manifest.name.as_str() == name)
        .unwrap();
    i.resolution
        .failed
        .get(&idx)
        .cloned()
        .unwrap_or_else(|| panic!("{name} did not fail"))
}

fn order(i: &Inspection) -> Vec<&str> {
    i.resolution
        .order
        .iter()
        .map(|&k| i.discovery.modules[k].manifest.name.as_str())
        .collect()
}

#[test]
fn missing_dependency_names_who_needs_what() {
    let m = Modules::new();
    module(
        &m.dir(),
        "blog",
        "name: blog\nversion: 1.0.0\ndependencies:\n  billing: \">=1.0\"\n",
        &["libblog.so"],
    );
    let i = resolve_dir(&m);
    let msg = failure(&i, "blog").to_string();
    assert_eq!(
        msg,
        "module `blog` needs `billing` >=1.0, but no module named `billing` is present; add it to the modules directory"
    );
}

#[test]
fn unsatisfied_requirement_names_the_present_version() {
    let m = Modules::new();
    module(
        &m.dir(),
        "billing",
        "name: billing\nversion: 0.9.0\n",
        &["libbilling.so"],
    );
    module(
        &m.dir(),
        "blog",
        "name: blog\nversion: 1.0.0\ndependencies:\n  billing: \">=1.0\"\n",
        &["libblog.so"],
    );
    let i = resolve_dir(&m);
    let msg = failure(&i, "blog").to_string();
    assert!(
        msg.contains("needs `billing` >=1.0, but `billing` 0.9.0 is present"),
        "{msg}"
    );
    assert_eq!(order(&i), vec!["billing"]);
}

#[test]
fn cycle_is_printed_as_a_path() {
    let m = Modules::new();
    module(
        &m.dir(),
        "a",
        "name: a\nversion: 1.0.0\ndependencies:\n  b: \"*\"\n",
        &["liba.so"],
    );
    module(
        &m.dir(),
        "b",
        "name: b\nversion: 1.0.0\ndependencies:\n  c: \"*\"\n",
        &["libb.so"],
    );
    module(
        &m.dir(),
        "c",
        "name: c\nversion: 1.0.0\ndependencies:\n  a: \"*\"\n",
        &["libc.so"],
    );
    module(
        &m.dir(),
        "d",
        "name: d\nversion: 1.0.0\ndependencies:\n  a: \"*\"\n",
        &["libd.so"],
    );
    module(&m.dir(), "e", "name: e\nversion: 1.0.0\n", &["libe.so"]);
    let i = resolve_dir(&m);
    for name in ["a", "b", "c"] {
        let msg = failure(&i, name).to_string();
        assert!(msg.contains("dependency cycle: a -> b -> c -> a"), "{msg}");
    }
    assert_eq!(
        failure(&i, "d"),
        ResolveError::DependencyFailed {
            module: "d".into(),
            dependency: "a".into()
        }
    );
    assert_eq!(order(&i), vec!["e"]);
}

#[test]
fn duplicate_names_list_both_paths() {
    let m = Modules::new();
    module(
        &m.dir(),
        "blog",
        "name: blog\nversion: 1.0.0\n",
        &["libblog.so"],
    );
    module(
        &m.dir(),
        "blog_copy",
        "name: blog\nversion: 1.1.0\n",
        &["libblog.so"],
    );
    let i = resolve_dir(&m);
    let msg = failure(&i, "blog").to_string();
    let a = m.dir().join("blog").display().to_string();
    let b = m.dir().join("blog_copy").display().to_string();
    assert!(msg.contains(&format!("{a} and {b}")), "{msg}");
    assert!(i.resolution.order.is_empty());
}

#[test]
fn failure_propagates_to_dependents_but_not_to_others() {
    let m = Modules::new();
    module(
        &m.dir(),
        "base",
        "name: base\nversion: 1.0.0\ndependencies:\n  ghost: \"1\"\n",
        &["libbase.so"],
    );
    module(
        &m.dir(),
        "mid",
        "name: mid\nversion: 1.0.0\ndependencies:\n  base: \"1\"\n",
        &["libmid.so"],
    );
    module(
        &m.dir(),
        "top",
        "name: top\nversion: 1.0.0\ndependencies:\n  mid: \"1\"\n",
        &["libtop.so"],
    );
    module(
        &m.dir(),
        "other",
        "name: other\nversion: 1.0.0\n",
        &["libother.so"],
    );
    let i = resolve_dir(&m);
    assert_eq!(
        failure(&i, "mid"),
        ResolveError::DependencyFailed {
            module: "mid".into(),
            dependency: "base".into()
        }
    );
    assert_eq!(
        failure(&i, "top"),
        ResolveError::DependencyFailed {
            module: "top".into(),
            dependency: "mid".into()
        }
    );
    assert_eq!(order(&i), vec!["other"]);
}

#[test]
fn optional_dependency_may_be_absent_but_orders_when_present() {
    let m = Modules::new();
    module(&m.dir(), "a_user", "name: a_user\nversion: 1.0.0\ndependencies:\n  z_search: { version: \"1\", optional: true }\n  missing: { version: \"1\", optional: true }\n", &["liba.so"]);
    module(
        &m.dir(),
        "z_search",
        "name: z_search\nversion: 1.0.0\n",
        &["libz.so"],
    );
    let i = resolve_dir(&m);
    assert!(i.resolution.failed.is_empty(), "{:?}", i.resolution.failed);
    assert_eq!(order(&i), vec!["z_search", "a_user"]);
}

#[test]
fn order_is_topological_with_ties_by_name() {
    let m = Modules::new();
    for (name, deps) in [
        ("zeta", ""),
        ("alpha", "  zeta: \"*\"\n"),
        ("mid", ""),
        ("beta", "  mid: \"*\"\n  alpha: \"*\"\n"),
    ] {
        let deps = if deps.is_empty() {
            String::new()
        } else {
            format!("dependencies:\n{deps}")
        };
        module(
            &m.dir(),
            name,
            &format!("name: {name}\nversion: 1.0.0\n{deps}"),
            &["lib.so"],
        );
    }
    let first = order(&resolve_dir(&m)).join(",");
    assert_eq!(first, "mid,zeta,alpha,beta");
    for _ in 0..5 {
        assert_eq!(order(&resolve_dir(&m)).join(","), first);
    }
}

#[test]
fn check_lists_every_problem_and_exits_nonzero() {
    let m = Modules::new();
    m.add_example("hello");
    module(&m.dir(), "broken_yaml", "name: [x\n", &[]);
    module(
        &m.dir(),
        "needs_ghost",
        "name: needs_ghost\nversion: 1.0.0\ndependencies:\n  ghost: \"1\"\n",
        &["libneeds.so"],
    );
    let empty = m.dir().join("empty_lib");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(
        empty.join("module.yaml"),
        "name: empty_lib\nversion: 1.0.0\n",
    )
    .unwrap();
    std::fs::write(empty.join("libempty.so"), b"").unwrap();
    let text_lib = m.dir().join("text_lib");
    std::fs::create_dir_all(&text_lib).unwrap();
    std::fs::write(
        text_lib.join("module.yaml"),
        "name: text_lib\nversion: 1.0.0\n",
    )
    .unwrap();
    std::fs::write(text_lib.join("libtext.so"), b"this is not a library\n").unwrap();
    let random = m.dir().join("random_lib");
    std::fs::create_dir_all(&random).unwrap();
    std::fs::write(
        random.join("module.yaml"),
        "name: random_lib\nversion: 1.0.0\n",
    )
    .unwrap();
    std::fs::write(
        random.join("librandom.so"),
        [0x13u8, 0x9f, 0x00, 0xfe, 0x42, 0x77, 0x01, 0x88],
    )
    .unwrap();
    // A real shared library that is not a modhost module, built here with the C compiler.
    let foreign = m.dir().join("foreign_lib");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(
        foreign.join("module.yaml"),
        "name: foreign_lib\nversion: 1.0.0\n",
    )
    .unwrap();
    let truncated = m.dir().join("truncated_lib");
    std::fs::create_dir_all(&truncated).unwrap();
    std::fs::write(
        truncated.join("module.yaml"),
        "name: truncated_lib\nversion: 1.0.0\n",
    )
    .unwrap();
    let real = std::fs::read(common::plugins().join(lib_file("hello"))).unwrap();
    std::fs::write(truncated.join("libtrunc.so"), &real[..4096]).unwrap();
    common::build_c_shared_library(&foreign.join("libforeign.so"));
    let (code, out, _err) = modhost(&["check", m.dir().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    for needle in [
        "broken_yaml/module.yaml:1:",
        "module `needs_ghost` needs `ghost` ^1, but no module named `ghost` is present",
        "module `empty_lib`: ",
        "the file is empty",
        "module `text_lib`: ",
        "it looks like a text file",
        "module `random_lib`: ",
        "it has no shared-library header",
        "module `truncated_lib`: ",
        "truncated or corrupt ELF file",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }
    assert!(
        out.lines().any(|l| l.contains("module `foreign_lib`: ")
            && l.contains("libforeign.so is a shared library but not a modhost module (no root module symbol)")),
        "the C library is refused as not a module:\n{out}"
    );
    assert!(!out.contains("module `hello`"), "hello is fine:\n{out}");
    let problems = out.lines().filter(|l| l.starts_with("error: ")).count();
    // needs_ghost's stand-in library is refused too: 8 problems in all.
    assert_eq!(problems, 8, "{out}");
}

#[test]
fn check_passes_on_the_examples() {
    let m = Modules::new();
    for name in ["hello", "blog", "billing", "notifications"] {
        m.add_example(name);
    }
    let (code, out, err) = modhost(&["check", m.dir().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: 4 module(s)"), "{out}");

    let (code, out, _) = modhost(&["list", m.dir().to_str().unwrap()]);
    assert_eq!(code, 0);
    let names: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        names,
        vec!["billing", "blog", "hello", "notifications"],
        "{out}"
    );

    let (code, dot, _) = modhost(&["graph", m.dir().to_str().unwrap(), "--format", "dot"]);
    assert_eq!(code, 0);
    assert!(dot.starts_with("digraph modules {"), "{dot}");
    assert!(
        dot.contains("\"notifications\" -> \"blog\" [label=\">=1.0, <2\"]"),
        "{dot}"
    );

    let (code, mermaid, _) = modhost(&["graph", m.dir().to_str().unwrap(), "--format", "mermaid"]);
    assert_eq!(code, 0);
    assert!(mermaid.starts_with("graph LR"), "{mermaid}");
    assert!(
        mermaid.contains("notifications -->|\">=1.0\"| billing"),
        "{mermaid}"
    );
}

#[test]
fn every_command_has_help() {
    // Every command and subcommand of the README's table, with `--help` and `-h`: the
    // usage line and the options the README documents for it.
    for (args, usage, options) in [
        (
            vec![],
            "Usage: modhost [OPTIONS] <COMMAND>",
            &["--log-format"][..],
        ),
        (
            vec!["run"],
            "Usage: modhost run [OPTIONS]",
            &[
                "--modules",
                "--listen",
                "--data-dir",
                "--database-url",
                "--config",
                "--strict",
                "--watch",
                "--no-watch",
            ][..],
        ),
        (
            vec!["check"],
            "Usage: modhost check [OPTIONS] [DIR]",
            &[][..],
        ),
        (vec!["list"], "Usage: modhost list [OPTIONS] [DIR]", &[][..]),
        (
            vec!["graph"],
            "Usage: modhost graph [OPTIONS] [DIR]",
            &["--format"][..],
        ),
        (
            vec!["admin"],
            "Usage: modhost admin [OPTIONS] <COMMAND>",
            &[][..],
        ),
        (
            vec!["admin", "create-user"],
            "Usage: modhost admin create-user [OPTIONS] <EMAIL>",
            &["--role", "--password-stdin", "--data-dir", "--database-url"][..],
        ),
        (
            vec!["admin", "token"],
            "Usage: modhost admin token [OPTIONS]",
            &["--ttl", "--data-dir", "--database-url"][..],
        ),
        (
            vec!["keygen"],
            "Usage: modhost keygen [OPTIONS]",
            &["--out"][..],
        ),
        (
            vec!["sign"],
            "Usage: modhost sign [OPTIONS] --key <FILE> <MODULE_DIR>",
            &["--key"][..],
        ),
    ] {
        for flag in ["--help", "-h"] {
            let mut argv = args.clone();
            argv.push(flag);
            let (code, out, err) = modhost(&argv);
            assert_eq!(code, 0, "{argv:?}: {out}{err}");
            assert!(
                out.contains(usage),
                "{argv:?}: expected `{usage}` in:\n{out}"
            );
            for option in options {
                assert!(
                    out.lines()
                        .any(|l| l.split([' ', ',', '=']).any(|w| w == *option)),
                    "{argv:?}: `{option}` is not documented in:\n{out}"
                );
            }
        }
    }
    // The subcommands are listed where they are chosen.
    let (_, top, _) = modhost(&["--help"]);
    for command in ["run", "check", "list", "graph", "admin", "keygen", "sign"] {
        assert!(
            top.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "`{command}` missing from `modhost --help`:\n{top}"
        );
    }
    let (_, admin, _) = modhost(&["admin", "--help"]);
    for command in ["create-user", "token"] {
        assert!(
            admin
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "`{command}` missing from `modhost admin --help`:\n{admin}"
        );
    }
}
