//! Hostile and broken input: each answered with a clear 4xx and no write; start-up faults with a
//! clear error and a non-zero exit; tenancy across every endpoint family.

use reqwest::Method;
use serde_json::json;

use crate::support::{q, TestServer};

#[tokio::test]
async fn hostile_bodies_and_parameters() {
    let s = TestServer::start().await;
    s.post("/Users", &json!({"userName": "x"})).await;
    let before = s.log_position().await;
    let send_raw = |body: Vec<u8>| {
        let s = &s;
        async move {
            let r = s
                .client
                .post(s.url("/Users"))
                .bearer_auth(&s.token)
                .header("content-type", "application/scim+json")
                .body(body)
                .send()
                .await
                .unwrap();
            crate::support::read(r).await
        }
    };
    // Nesting far beyond any schema: the JSON parser's depth limit answers.
    let deep = format!("{}1{}", "[".repeat(5000), "]".repeat(5000));
    send_raw(deep.into_bytes()).await.assert_error(400, Some("invalidSyntax"), "not valid JSON");
    let deep_obj = format!("{{\"userName\":\"d\",\"name\":{}1{}}}", "{\"a\":".repeat(3000), "}".repeat(3000));
    send_raw(deep_obj.into_bytes()).await.assert_error(400, Some("invalidSyntax"), "not valid JSON");
    // Invalid UTF-8.
    send_raw(b"{\"userName\": \"\xff\xfe\"}".to_vec()).await.assert_error(400, Some("invalidSyntax"), "not valid JSON");
    // A huge array in a multi-valued attribute stays within the body limit or is refused by it.
    let emails: Vec<_> = (0..60_000).map(|i| json!({"value": format!("{i}@x")})).collect();
    send_raw(json!({"userName": "many", "emails": emails}).to_string().into_bytes())
        .await
        .assert_error(413, None, "limit");
    // Long strings: userName beyond the body limit.
    send_raw(json!({"userName": "u".repeat(2_000_000)}).to_string().into_bytes())
        .await
        .assert_error(413, None, "limit");
    // Filter bombs.
    let bomb = format!("{}userName pr{}", "(".repeat(2000), ")".repeat(2000));
    s.get(&format!("/Users?filter={}", q(&bomb))).await.assert_error(400, Some("invalidFilter"), "limit");
    let long_or = vec!["userName eq \"a\""; 400].join(" or ");
    s.get(&format!("/Users?filter={}", q(&long_or))).await.assert_error(400, Some("invalidFilter"), "4096");
    // Paging extremes are read as the RFC says, not refused.
    let r = s.get("/Users?count=-1&startIndex=0").await;
    assert_eq!((r.status.as_u16(), r.body["itemsPerPage"].as_u64()), (200, Some(0)));
    let r = s.get("/Users?count=99999999999&startIndex=99999999999").await;
    assert_eq!(
        (r.status.as_u16(), r.body["itemsPerPage"].as_u64(), r.body["totalResults"].as_u64()),
        (200, Some(0), Some(1))
    );
    s.get("/Users?count=1e99").await.assert_error(400, Some("invalidValue"), "1e99");
    // Wrong content types, with and without bodies.
    let r = s
        .client
        .post(s.url("/Users"))
        .bearer_auth(&s.token)
        .header("content-type", "application/xml")
        .body("<u/>")
        .send()
        .await
        .unwrap();
    crate::support::read(r).await.assert_error(415, None, "application/xml");
    assert_eq!(s.log_position().await, before, "nothing hostile was written");
}

#[tokio::test]
async fn a_data_dir_that_cannot_be_created_stops_start_up_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scimlog"))
        .args(["serve", "--listen", "127.0.0.1:0", "--token", "t"])
        .arg("--data-dir")
        .arg(file.join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot create the data dir"), "{err}");
    // A data dir locked by a running server: the second start says so.
    let s = TestServer::start().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scimlog"))
        .args(["serve", "--listen", "127.0.0.1:0", "--token", "t"])
        .arg("--data-dir")
        .arg(s.data_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot open the store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop().await;
}

#[tokio::test]
async fn no_endpoint_crosses_tenants() {
    let s = TestServer::start().await;
    let uid =
        s.post("/Users", &json!({"userName": "mine", "roles": ["urn:scimlog:role:environment:prod:admin"]})).await.id();
    let gid = s.post("/Groups", &json!({"displayName": "Mine", "members": [{"value": uid}]})).await.id();
    let hosts = s.new_token(scimlog::auth::Role::Hosts);
    let linked = s
        .send_as(&hosts, Method::PUT, &format!("{}/api/v1/hosts/h1/user", s.base), Some(&json!({"user": uid})), &[])
        .await;
    assert_eq!(linked.status, 200, "{}", linked.body);
    let other = scimlog::auth::create_token(s.data_dir(), "other", "other", scimlog::auth::Role::Admin).unwrap();
    // The first request after the token file changed records the new token (`token.created`).
    s.get("/Users?count=0").await;
    let before = s.log_position().await;
    let as_other = |m: Method, p: String, b: Option<serde_json::Value>| {
        let (s, other) = (&s, other.clone());
        async move { s.send_as(&other, m, &p, b.as_ref(), &[]).await }
    };
    let patch = json!({"Operations": [{"op": "replace", "value": {"active": false}}]});
    as_other(Method::PATCH, format!("/Users/{uid}"), Some(patch.clone())).await.assert_error(404, None, &uid);
    as_other(Method::PATCH, format!("/Groups/{gid}"), Some(patch)).await.assert_error(404, None, &gid);
    let search = as_other(Method::POST, "/.search".into(), Some(json!({"filter": "userName eq \"mine\""}))).await;
    assert_eq!(search.body["totalResults"], 0);
    let bulk = json!({"Operations": [{"method": "DELETE", "path": format!("/Users/{uid}")}, {"method": "PATCH", "path": format!("/Groups/{gid}"),
        "data": {"Operations": [{"op": "remove", "path": "members"}]}}]});
    let r = as_other(Method::POST, "/Bulk".into(), Some(bulk)).await;
    let statuses: Vec<&str> =
        r.body["Operations"].as_array().unwrap().iter().map(|o| o["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["404", "404"]);
    let api = |p: &str| format!("{}/api/v1{p}", s.base);
    as_other(Method::GET, api(&format!("/users/{uid}/access")), None).await.assert_error(404, None, &uid);
    let c = as_other(Method::GET, api(&format!("/access/check?user={uid}&role=admin&environment=prod")), None).await;
    assert_eq!(c.body["allowed"], false);
    assert_eq!(as_other(Method::GET, api("/environments"), None).await.body["totalResults"], 0);
    as_other(Method::GET, api("/hosts/h1/user"), None).await.assert_error(404, None, "h1");
    as_other(Method::DELETE, api("/hosts/h1/user"), None).await.assert_error(404, None, "h1");
    as_other(Method::POST, api(&format!("/users/{uid}/erase")), Some(json!({"reason": "x"})))
        .await
        .assert_error(404, None, &uid);
    assert_eq!(s.log_position().await, before, "the other tenant changed nothing here");
    assert_eq!(s.get(&format!("/Groups/{gid}")).await.body["members"][0]["value"], uid.as_str());
    s.stop().await;
}

#[tokio::test]
async fn a_storage_failure_answers_503_writes_nothing_and_the_server_goes_on() {
    let s = TestServer::start().await;
    let id = s.post("/Users", &json!({"userName": "before"})).await.id();
    let before = s.log_position().await;
    s.faults().fail_next_commits(2);
    let r = s.post("/Users", &json!({"userName": "during"})).await;
    r.assert_error(503, None, "nothing was written");
    assert_eq!(r.header("retry-after"), Some("1"));
    let patch = json!({"Operations": [{"op": "replace", "value": {"title": "x"}}]});
    s.send(Method::PATCH, &format!("/Users/{id}"), Some(&patch), &[]).await.assert_error(
        503,
        None,
        "nothing was written",
    );
    assert_eq!(s.log_position().await, before, "the failed commits left no event");
    assert_eq!(s.get(&format!("/Users?filter={}", q("userName eq \"during\""))).await.body["totalResults"], 0);
    assert!(s.get(&format!("/Users/{id}")).await.body.get("title").is_none());
    // The writer's head did not move: the next writes continue the chain.
    assert_eq!(s.post("/Users", &json!({"userName": "during"})).await.status, 201);
    assert_eq!(s.log_position().await, before + 1);
    let store = scimlog::log::Store::open_read_only(s.data_dir()).unwrap();
    assert_eq!(scimlog::audit::verify(&store).unwrap().count, before + 1);
    let keys = scimlog::log::keys::KeyRing::open_read_only(store.clone(), &Default::default(), s.data_dir()).unwrap();
    let rebuilt = scimlog::audit::fold_until(&store, &keys, None, &mut |_| {}).unwrap();
    assert_eq!(scimlog::audit::compare(&store, &rebuilt).unwrap().count, 0);
    drop((store, keys));
    s.stop().await;
}

#[tokio::test]
async fn default_logs_carry_ids_not_personal_data() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("stderr.log");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_scimlog"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--token", "t"])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .env_remove("SCIMLOG_LOG");
    let (mut child, root) = crate::support::serving(cmd, Some(&log)).await;
    let base = format!("{root}/scim/v2");
    let client = reqwest::Client::new();
    let secret_name = "very.private.person@example.com";
    let post = |body: serde_json::Value| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            client
                .post(format!("{base}/Users"))
                .bearer_auth("t")
                .header("content-type", "application/scim+json")
                .body(body.to_string())
                .send()
                .await
                .unwrap()
        }
    };
    post(json!({"userName": secret_name, "password": "hunter2-secret"})).await;
    post(json!({"userName": secret_name})).await; // 409
    client
        .get(format!("{base}/Users?filter={}", q(&format!("userName eq \"{secret_name}\""))))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    let g = json!({"displayName": "G", "members": [{"value": "no-such-member"}]});
    client
        .post(format!("{base}/Groups"))
        .bearer_auth("t")
        .header("content-type", "application/scim+json")
        .body(g.to_string())
        .send()
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("scimlog listening"), "the log was captured: {text}");
    assert!(text.contains("were skipped"), "skipped members are reported: {text}");
    assert!(!text.contains("no-such-member"), "member values are not logged (they may be emails): {text}");
    for secret in [secret_name, "hunter2-secret", "very.private"] {
        assert!(!text.contains(secret), "{secret:?} in the default log:\n{text}");
    }
}

#[test]
fn a_full_disk_at_start_stops_start_up_with_a_clear_error() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_scimlog"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--token", "t"]).arg("--data-dir").arg(tmp.path());
    // No file may grow past 4 KiB, as on a full disk: writes fail (EFBIG) instead of the
    // process being killed by SIGXFSZ.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 4096, rlim_max: 4096 };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(out.status.code(), Some(1), "a clean exit with an error, not a crash: {err}");
    assert!(err.contains("scimlog: cannot open the store") && err.contains("File too large"), "{err}");
}

/// The memory bounds are bounds, not hints: with a 2 MiB memtable budget, a few MiB of users are
/// written to files while the server runs (RSS cannot grow with the writes), and all of them
/// read back.
#[tokio::test]
async fn memtable_budget_is_enforced_while_running() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = crate::support::config(tmp.path());
    cfg.memtable_budget_mb = 2;
    cfg.block_cache_mb = 1;
    let s = TestServer::start_with(cfg).await;
    let tables = |dir: &std::path::Path| {
        std::fs::read_dir(dir.join("db"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "sst"))
            .count()
    };
    assert_eq!(tables(s.data_dir()), 0, "a new store has no table files");
    for chunk in 0..4 {
        let ops: Vec<_> = (0..1000)
            .map(|i| {
                let n = chunk * 1000 + i;
                json!({"method": "POST", "path": "/Users", "bulkId": format!("b{n}"), "data": {
                    "userName": format!("budget{n:05}@example.com"),
                    "name": {"givenName": "Budget", "familyName": format!("User {n}")},
                    "emails": [{"value": format!("budget{n:05}@example.com"), "type": "work"}]}})
            })
            .collect();
        let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": ops});
        assert_eq!(s.post("/Bulk", &body).await.status, 200);
    }
    assert!(tables(s.data_dir()) > 0, "2 MiB of memtables cannot hold 4000 users: some were flushed to files");
    assert_eq!(s.get("/Users?count=1").await.body["totalResults"], 4000);
    assert_eq!(
        s.get(&format!("/Users?filter={}", q(r#"userName eq "budget00042@example.com""#))).await.body["totalResults"],
        1
    );
    s.stop().await;
}
