//! The independent SCIM conformance checker scim2-tester (PyPI), run against a live server.
//! `./scripts/setup` installs it in a venv; without it this test fails and says so.

use crate::support::{manifest_dir, TestServer};

fn python() -> String {
    if let Ok(p) = std::env::var("SCIMLOG_PYTHON") {
        return p;
    }
    let venv = std::env::var("SCIMLOG_VENV")
        .unwrap_or_else(|_| format!("{}/.cache/scimlog-venv", std::env::var("HOME").unwrap_or_default()));
    format!("{venv}/bin/python3")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim2_tester_reports_no_failure() {
    // scim2-client refuses any ServiceProviderConfig attribute RFC 7643 does not define, so its
    // discovery fails on the draft's `RolesAndEntitlements`: the operator's switch for such
    // clients is what this run uses (the `rfc` tests check the attribute and the endpoints).
    let s = TestServer::start_configured(|c| c.advertise_roles_entitlements = false).await;
    let script = format!("{}/tests/conformance/scim2_tester_check.py", manifest_dir());
    let python = python();
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(s.url(""))
        .arg(&s.token)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {python} (run ./scripts/setup to install scim2-tester): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "scim2-tester reported failures or could not run:\n{stdout}\n{stderr}");
    assert!(stdout.lines().any(|l| l.ends_with(" passed, 0 failed")), "{stdout}");
    let passed: u32 = stdout
        .lines()
        .find_map(|l| l.strip_suffix(" passed, 0 failed"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(passed >= 100, "scim2-tester ran only {passed} passing checks:\n{stdout}");
}
