//! The load generator end to end, small: every scenario runs against a real server process (and a
//! real nats-server for `publish`) and reports its rows without errors. Timings are printed, never
//! asserted.

use std::process::Command;

#[test]
fn every_scenario_runs_and_reports_without_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_scimlog-bench"))
        .args([
            "--spawn",
            "--users",
            "300,600",
            "--requests",
            "300",
            "--duration-s",
            "5",
            "--runs",
            "2",
            "--connections",
            "8",
            "--scenario",
            "create-users,lookup,get-by-id,list-page,startup,okta-import,cursor-import,group-push,authentik-sync,mixed,access,two-tenants,replay,publish,outbound,healthz,floor,trivial,log-append",
        ])
        .output()
        .expect("scimlog-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scimlog-bench failed\n{stdout}\n{stderr}");
    println!("{stdout}");

    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| {
            l.starts_with("| ") && !l.starts_with("| scenario") && !l.starts_with("| users") && !l.starts_with("| ---")
        })
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    let scenario_rows: Vec<&Vec<&str>> = rows.iter().filter(|r| r.len() == 13).collect();
    for wanted in [
        "create-users 0→300",
        "create-users 300→600",
        "lookup filter=userName eq (300 users) [median of 2 runs",
        "lookup filter=userName eq (600 users)",
        "GET /Users/{id} (600 users)",
        "GET /Users?startIndex",
        "okta-import: startIndex, 600 users in 6 pages",
        "cursor-import: RFC 9865 cursors, 600 users in 6 pages",
        "group-push PATCH one member (10 members)",
        "group-push PATCH one member (600 members)",
        "authentik-sync: PUT each of 600 users unchanged (0 events written)",
        "mixed IdP traffic",
        "access check, allowed through 3 nested groups (600 users, 30 groups",
        "GET /api/v1/users/{id}/access (600 users",
        "GET /Users/{id} of the same users, their groups rendered (600 users",
        "application: 90% access checks, 10% group pushes",
        "access check through a group of 10 members",
        "access check through a group of 590 members",
        "two-tenants: calm tenant lookups, alone",
        "two-tenants: calm tenant lookups while another floods",
        "replay: rebuild all read models",
        "publish: backlog",
        "publish lag",
        "outbound: backlog",
        "outbound lag",
        "GET /healthz with an admin token",
        "GET /ServiceProviderConfig (every SCIM layer",
        "trivial axum handler",
        "RocksDB commits of 128 records",
    ] {
        assert!(scenario_rows.iter().any(|r| r[1].starts_with(wanted)), "no row {wanted:?} in\n{stdout}");
    }
    for r in &scenario_rows {
        assert_eq!(r[3], "0", "errors in {:?}", r[1]);
        assert_ne!(r[2], "0", "no operations in {:?}", r[1]);
    }
    // One start-up row per directory size.
    assert_eq!(rows.iter().filter(|r| r.len() == 8).count(), 2, "{stdout}");
}
