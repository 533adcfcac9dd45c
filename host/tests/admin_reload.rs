//! `POST /admin/modules/{name}/reload` answers by the kind of failure, not by the text
//! of the message: 404 for a module the host does not know, 409 for a refused version.

mod common;

use common::{HostProcess, Modules};

#[test]
fn reload_answers_404_for_an_unknown_module_and_409_for_a_refused_one() {
    let modules = Modules::new();
    let dir = modules.add_faulty("probe", "ok", "");
    let host = HostProcess::start(&modules, &[], &[]);

    let unknown = host.request_as(&host.token, "POST", "/admin/modules/ghost/reload", b"");
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    assert!(
        unknown.text().contains("no module named `ghost`"),
        "{}",
        unknown.text()
    );

    // A new version that fails its init is refused; the old one keeps serving.
    let manifest = std::fs::read_to_string(dir.join("module.yaml")).expect("manifest");
    std::fs::write(
        dir.join("module.yaml"),
        manifest.replace("mode: ok", "mode: init_error"),
    )
    .expect("write manifest");
    let refused = host.request_as(&host.token, "POST", "/admin/modules/probe/reload", b"");
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert!(
        refused.text().contains("configured to fail in init"),
        "{}",
        refused.text()
    );
    let still = host.request_as(&host.token, "GET", "/api/v1/probe/ok", b"");
    assert_eq!(still.status, 200, "{}", still.text());
}
