//! Roles, entitlements, environments and hosts over HTTP: what applications ask the directory.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{config, q, TestServer};

const PROD_ADMIN: &str = "urn:scimlog:role:environment:prod:admin";
const GROUP_ACCESS: &str = "urn:scimlog:params:scim:schemas:extension:access:2.0:Group";

async fn api(s: &TestServer, method: Method, path: &str, body: Option<Value>) -> crate::support::Reply {
    s.send(method, &format!("{}/api/v1{path}", s.base), body.as_ref(), &[]).await
}

async fn check(s: &TestServer, user: &str, role: &str, env: &str) -> Value {
    api(s, Method::GET, &format!("/access/check?user={}&role={}&environment={}", q(user), q(role), q(env)), None)
        .await
        .body
}

async fn events_of_type(s: &TestServer, ty: &str) -> usize {
    let store = scimlog::log::Store::open_read_only(s.data_dir()).unwrap();
    let filter = scimlog::audit::EventFilter { types: vec![ty.into()], ..Default::default() };
    scimlog::audit::log(&store, &scimlog_schemas::personal::NoKeys, &filter).unwrap().len()
}

#[tokio::test]
async fn okta_strings_and_entra_objects_become_grants() {
    let s = TestServer::start().await;
    let before = s.log_position().await;
    // Okta: plain strings; the environment and the default organization come into being.
    let okta = s.post("/Users", &json!({"userName": "okta.user", "externalId": "00u1", "roles": [PROD_ADMIN]})).await;
    assert_eq!(okta.status, 201, "{}", okta.body);
    assert_eq!(okta.body["roles"], json!([{"value": PROD_ADMIN}]));
    assert_eq!(
        s.log_position().await,
        before + 4,
        "user.created, organization.created, environment.created, role.assigned"
    );
    let envs = api(&s, Method::GET, "/environments", None).await.body;
    assert_eq!(envs["Resources"][0]["slug"], "prod");
    assert_eq!(envs["Resources"][0]["createdBy"], "bootstrap");
    assert_eq!(api(&s, Method::GET, "/organizations", None).await.body["Resources"][0]["slug"], "default");

    // Entra: objects, and PATCH through a value filter on primary.
    let entra = s
        .post("/Users", &json!({"userName": "entra.user", "entitlements": [{"value": "urn:scimlog:entitlement:resource-group:rg-a"}]}))
        .await;
    let id = entra.id();
    let patch = json!({"Operations": [{"op": "Add", "path": "roles[primary eq \"True\"].value", "value": "urn:scimlog:role:environment:Staging:viewer"}]});
    let r = s.send(Method::PATCH, &format!("/Users/{id}"), Some(&patch), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["roles"][0]["primary"], true);
    let access = api(&s, Method::GET, &format!("/users/{id}/access"), None).await.body;
    let urns: Vec<&str> = access["grants"].as_array().unwrap().iter().map(|g| g["urn"].as_str().unwrap()).collect();
    assert_eq!(urns, ["urn:scimlog:entitlement:resource-group:rg-a", "urn:scimlog:role:environment:Staging:viewer"]);
    assert_eq!(api(&s, Method::GET, "/resource-groups", None).await.body["totalResults"], 1);
    assert_eq!(
        api(&s, Method::GET, "/environments", None).await.body["totalResults"],
        2,
        "Staging matched as staging, created once"
    );

    // Removing a role revokes it; plain values that are not URNs stay plain attribute values.
    let r = s.put(&format!("/Users/{id}"), &json!({"userName": "entra.user", "roles": ["Employee"]})).await;
    assert_eq!(r.body["roles"], json!([{"value": "Employee"}]));
    assert!(api(&s, Method::GET, &format!("/users/{id}/access"), None).await.body["grants"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(events_of_type(&s, "role.revoked").await, 1);
    assert_eq!(events_of_type(&s, "entitlement.revoked").await, 1);
}

#[tokio::test]
async fn malformed_urns_are_refused_and_write_nothing() {
    let s = TestServer::start().await;
    let id = s.post("/Users", &json!({"userName": "u"})).await.id();
    let before = s.log_position().await;
    for (path, body, bad) in [
        (
            "/Users",
            json!({"userName": "x", "roles": ["urn:scimlog:role:planet:earth:admin"]}),
            "urn:scimlog:role:planet:earth:admin",
        ),
        ("/Users", json!({"userName": "x", "roles": ["urn:other:role:environment:prod:admin"]}), "urn:other"),
        (
            "/Users",
            json!({"userName": "x", "entitlements": [{"value": "urn:scimlog:entitlement:organization:o"}]}),
            "organization:o",
        ),
        (
            "/Groups",
            json!({"displayName": "g", GROUP_ACCESS: {"roles": [{"value": "urn:scimlog:role:environment:prod"}]}}),
            "environment:prod",
        ),
    ] {
        s.post(path, &body).await.assert_error(400, Some("invalidValue"), bad);
    }
    let patch =
        json!({"Operations": [{"op": "add", "path": "roles", "value": ["urn:scimlog:role:environment:a b:c"]}]});
    s.send(Method::PATCH, &format!("/Users/{id}"), Some(&patch), &[]).await.assert_error(
        400,
        Some("invalidValue"),
        "a b",
    );
    assert_eq!(s.log_position().await, before);
    assert_eq!(api(&s, Method::GET, "/environments", None).await.body["totalResults"], 0);
}

#[tokio::test]
async fn group_roles_flow_to_members_and_the_check_says_why() {
    let s = TestServer::start().await;
    let alice = s.post("/Users", &json!({"userName": "alice@x.org", "externalId": "ext-alice"})).await.id();
    let bob = s.post("/Users", &json!({"userName": "bob@x.org", "active": false})).await.id();
    let g = s
        .post(
            "/Groups",
            &json!({"displayName": "Engineers", "members": [{"value": alice}, {"value": bob}],
            GROUP_ACCESS: {"roles": [{"value": PROD_ADMIN}]}}),
        )
        .await;
    assert_eq!(g.status, 201, "{}", g.body);
    let gid = g.id();
    assert!(g.body["schemas"].as_array().unwrap().contains(&json!(GROUP_ACCESS)));

    // By id, userName or externalId; with the group as provenance.
    for who in [alice.as_str(), "ALICE@x.org", "ext-alice"] {
        let c = check(&s, who, "admin", "prod").await;
        assert_eq!(c["allowed"], true, "{c}");
        assert_eq!(c["grant"]["source"]["groupDisplayName"], "Engineers");
        assert!(c["reason"].as_str().unwrap().contains("through group \"Engineers\""), "{c}");
        assert!(c["grant"]["grantedAtPosition"].as_u64().unwrap() > 0);
    }
    assert_eq!(check(&s, &alice, "admin", "staging").await["allowed"], false);
    let c = check(&s, "nobody@x.org", "admin", "prod").await;
    assert_eq!(
        (c["allowed"].as_bool(), c["reason"].as_str()),
        (Some(false), Some("user \"nobody@x.org\" is not provisioned"))
    );
    let c = check(&s, &bob, "admin", "prod").await;
    assert_eq!((c["allowed"].as_bool(), c["reason"].as_str()), (Some(false), Some("the user is deactivated")));

    let members = api(&s, Method::GET, "/environments/prod/members", None).await.body;
    assert_eq!(members["totalResults"], 2);

    // Leaving the group takes the role away at once; so does removing the role from the group.
    let remove = json!({"Operations": [{"op": "remove", "path": format!("members[value eq \"{alice}\"]")}]});
    s.send(Method::PATCH, &format!("/Groups/{gid}"), Some(&remove), &[]).await;
    assert_eq!(check(&s, &alice, "admin", "prod").await["allowed"], false);
    let add = json!({"Operations": [{"op": "add", "path": "members", "value": [{"value": alice}]}]});
    s.send(Method::PATCH, &format!("/Groups/{gid}"), Some(&add), &[]).await;
    assert_eq!(check(&s, &alice, "admin", "prod").await["allowed"], true);
    let drop_role = json!({"Operations": [{"op": "remove", "path": format!("{GROUP_ACCESS}:roles")}]});
    let r = s.send(Method::PATCH, &format!("/Groups/{gid}"), Some(&drop_role), &[]).await;
    assert_eq!(r.status, 204);
    assert_eq!(check(&s, &alice, "admin", "prod").await["allowed"], false);
    assert_eq!(api(&s, Method::GET, "/environments/prod/members", None).await.body["totalResults"], 0);

    // A direct wildcard role applies to every environment there is (and to none that is not).
    s.put(&format!("/Users/{alice}"), &json!({"userName": "alice@x.org", "externalId": "ext-alice", "roles": ["urn:scimlog:role:environment:*:viewer"]})).await;
    let c = check(&s, &alice, "viewer", "prod").await;
    assert_eq!(c["allowed"], true);
    assert_eq!(c["grant"]["source"]["type"], "direct");
    assert_eq!(check(&s, &alice, "viewer", "anything").await["allowed"], false, "no such environment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_named_by_concurrent_grants_is_created_once() {
    let s = TestServer::start().await;
    let bodies = (0..30)
        .map(|i| json!({"userName": format!("race{i}"), "roles": ["urn:scimlog:role:environment:Race:member"]}))
        .collect();
    for r in crate::support::post_concurrently(&s, "/Users", bodies).await {
        assert_eq!(r.status, 201, "{}", r.body);
    }
    assert_eq!(events_of_type(&s, "environment.created").await, 1);
    assert_eq!(events_of_type(&s, "organization.created").await, 1);
    assert_eq!(api(&s, Method::GET, "/environments/race/members", None).await.body["totalResults"], 30);
    s.stop().await;
}

#[tokio::test]
async fn hosts_link_to_users() {
    let s = TestServer::start().await;
    let ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    let a = s
        .post(
            "/Users",
            &json!({"userName": "carol", "displayName": "Carol", ent: {"department": "Ops"}, "roles": [PROD_ADMIN]}),
        )
        .await
        .id();
    let b = s.post("/Users", &json!({"userName": "dave", "externalId": "ext-dave"})).await.id();
    s.post("/Groups", &json!({"displayName": "Ops", "members": [{"value": a}]})).await;
    // Host links are written with a hosts token (a device-management system's).
    let hosts = s.new_token(scimlog::auth::Role::Hosts);
    let host = |method: Method, path: &str, body: Option<Value>| {
        let (s, hosts, url) = (&s, hosts.clone(), format!("{}/api/v1{path}", s.base));
        async move { s.send_as(&hosts, method, &url, body.as_ref(), &[]).await }
    };
    let r = host(Method::PUT, "/hosts/laptop-7/user", Some(json!({"user": "carol"}))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["userId"], a.as_str());
    assert_eq!(r.body["department"], "Ops");
    assert_eq!(r.body["groups"][0]["display"], "Ops");
    assert_eq!(r.body["grants"][0]["urn"], PROD_ADMIN);
    // Many hosts per user; re-linking a host moves it.
    host(Method::PUT, "/hosts/phone-1/user", Some(json!({"user": a}))).await;
    let before = s.log_position().await;
    let moved = host(Method::PUT, "/hosts/laptop-7/user", Some(json!({"user": "ext-dave"}))).await;
    assert_eq!(moved.body["userId"], b.as_str());
    assert_eq!(s.log_position().await, before + 2, "host.user_unlinked then host.user_linked");
    host(Method::PUT, "/hosts/laptop-7/user", Some(json!({"user": b}))).await;
    assert_eq!(s.log_position().await, before + 2, "linking to the same user again writes nothing");
    assert_eq!(host(Method::DELETE, "/hosts/laptop-7/user", None).await.status, 204);
    api(&s, Method::GET, "/hosts/laptop-7/user", None).await.assert_error(404, None, "laptop-7");
    host(Method::DELETE, "/hosts/laptop-7/user", None).await.assert_error(404, None, "laptop-7");
    host(Method::PUT, "/hosts/x/user", Some(json!({"user": "nobody"}))).await.assert_error(404, None, "nobody");
    assert_eq!(api(&s, Method::GET, "/hosts/phone-1/user", None).await.body["userName"], "carol");
    // Deleting the user ends its host links.
    s.delete(&format!("/Users/{a}")).await;
    api(&s, Method::GET, "/hosts/phone-1/user", None).await.assert_error(404, None, "phone-1");
}

#[tokio::test]
async fn testkube_namespace_and_string_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.urn_namespace = "testkube".into();
    cfg.grant_shape = scimlog::config::GrantShape::Strings;
    let mut s = TestServer::start_with(cfg).await;
    s.adopt_dir(tmp);
    let r = s
        .post("/Users", &json!({"userName": "tk", "roles": [{"value": "urn:testkube:role:environment:dev:admin"}]}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["roles"], json!(["urn:testkube:role:environment:dev:admin"]), "strings, as Okta sends them");
    s.post("/Users", &json!({"userName": "x", "roles": [PROD_ADMIN]})).await.assert_error(
        400,
        Some("invalidValue"),
        "testkube",
    );
    assert_eq!(check(&s, "tk", "admin", "dev").await["allowed"], true);
    s.stop().await;
}

#[tokio::test]
async fn the_grant_shape_is_chosen_per_tenant() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.tenant_grant_shapes = vec![("okta-shop".into(), scimlog::config::GrantShape::Strings)];
    let mut s = TestServer::start_with(cfg).await;
    s.adopt_dir(tmp);
    let okta = scimlog::auth::create_token(s.data_dir(), "okta", "okta-shop", scimlog::auth::Role::Scim).unwrap();
    let body = json!({"userName": "shape", "roles": [PROD_ADMIN]});
    let strings = s.send_as(&okta, Method::POST, "/Users", Some(&body), &[]).await;
    assert_eq!(strings.body["roles"], json!([PROD_ADMIN]));
    let objects = s.post("/Users", &body).await;
    assert_eq!(objects.body["roles"], json!([{"value": PROD_ADMIN}]), "other tenants keep the default");
    s.stop().await;
}

/// The access answers keep group nodes (name, grants, parent groups) between requests; no answer
/// given after a write was acknowledged may come from a node that write changed: a role taken
/// from the top of a three-level nesting, a middle group taken out of the top, a rename and a
/// deletion are each seen by the very next check, while other checks keep the cache warm and
/// race the writes. The same answers with the cache off (`--access-cache-groups 0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_group_nodes_never_outlive_the_write_that_changed_them() {
    for cache in [100_000, 0] {
        let s = std::sync::Arc::new(TestServer::start_configured(|c| c.access_cache_groups = cache).await);
        let u = s.post("/Users", &json!({"userName": "nested@x.org"})).await.id();
        let leaf = s.post("/Groups", &json!({"displayName": "leaf", "members": [{"value": u}]})).await.id();
        let mid = s.post("/Groups", &json!({"displayName": "mid", "members": [{"value": leaf}]})).await.id();
        let top = s
            .post(
                "/Groups",
                &json!({"displayName": "top", "members": [{"value": mid}], GROUP_ACCESS: {"roles": [{"value": PROD_ADMIN}]}}),
            )
            .await
            .id();
        let allowed = |why: &'static str| {
            let (s, u) = (s.clone(), u.clone());
            async move {
                let c = check(&s, &u, "admin", "prod").await;
                (
                    c["allowed"].as_bool().unwrap_or_else(|| panic!("{why}: {c}")),
                    c["reason"].as_str().unwrap_or("").to_string(),
                )
            }
        };
        // Checks racing every write below, keeping the nodes in use.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let racer = {
            let (s, u, stop) = (s.clone(), u.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    check(&s, &u, "admin", "prod").await;
                }
            })
        };
        let patch = |group: &str, op: Value| {
            let (s, path) = (s.clone(), format!("/Groups/{group}"));
            async move {
                let r = s.send(Method::PATCH, &path, Some(&json!({"Operations": [op]})), &[]).await;
                assert!(r.status.is_success(), "{}", r.body);
            }
        };
        for round in 0..10 {
            let (yes, why) = allowed("before").await;
            assert!(yes && why.contains("through group \"top\""), "round {round}, cache {cache}: {why}");
            patch(&top, json!({"op": "remove", "path": format!("{GROUP_ACCESS}:roles")})).await;
            assert!(!allowed("role taken from the top").await.0, "round {round}, cache {cache}");
            patch(
                &top,
                json!({"op": "add", "path": format!("{GROUP_ACCESS}:roles"), "value": [{"value": PROD_ADMIN}]}),
            )
            .await;
            assert!(allowed("role given back").await.0, "round {round}, cache {cache}");
            patch(&top, json!({"op": "remove", "path": format!("members[value eq \"{mid}\"]")})).await;
            assert!(!allowed("middle group out of the top").await.0, "round {round}, cache {cache}");
            patch(&top, json!({"op": "add", "path": "members", "value": [{"value": mid}]})).await;
        }
        patch(&top, json!({"op": "replace", "path": "displayName", "value": "renamed top"})).await;
        let (yes, why) = allowed("renamed").await;
        assert!(yes && why.contains("through group \"renamed top\""), "cache {cache}: {why}");
        assert_eq!(s.delete(&format!("/Groups/{top}")).await.status, 204);
        assert!(!allowed("top deleted").await.0, "cache {cache}");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        racer.await.unwrap();
    }
}

/// An environment comes into being with the first grant that names it: the check right after
/// that grant's answer finds it (by any case of its slug), while other checks race the writes.
/// With the kept scopes and without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_is_found_by_the_first_check_after_the_grant_that_created_it() {
    for cache in [100_000, 0] {
        let s = std::sync::Arc::new(TestServer::start_configured(|c| c.access_cache_groups = cache).await);
        let u = s.post("/Users", &json!({"userName": "newcomer@x.org"})).await.id();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let racer = {
            let (s, u, stop) = (s.clone(), u.clone(), stop.clone());
            tokio::spawn(async move {
                for round in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    check(&s, &u, "viewer", &format!("stage-{}", round % 5)).await;
                }
            })
        };
        for round in 0..5 {
            let env = format!("stage-{round}");
            let before = check(&s, &u, "viewer", &env).await;
            assert_eq!(before["allowed"], false, "round {round}, cache {cache}: {before}");
            let said = before["reason"].as_str().unwrap_or_default();
            assert!(said.contains("does not exist"), "round {round}, cache {cache}: {said}");
            let role = format!("urn:scimlog:role:environment:{env}:viewer");
            let add = json!({"Operations": [{"op": "add", "path": "roles", "value": [role]}]});
            let r = s.send(Method::PATCH, &format!("/Users/{u}"), Some(&add), &[]).await;
            assert_eq!(r.status, 200, "{}", r.body);
            for name in [env.clone(), env.to_uppercase()] {
                let after = check(&s, &u, "viewer", &name).await;
                assert_eq!(after["allowed"], true, "round {round}, cache {cache}, {name}: {after}");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        racer.await.unwrap();
    }
}

/// An answer that meets at most `--access-inline-memberships` memberships is computed on the
/// request's worker; a larger one on the blocking pool with the whole `--max-scan`, and says the
/// same; one larger than `--max-scan` is refused wherever it runs.
#[tokio::test]
async fn answers_larger_than_a_workers_share_go_to_the_pool_and_say_the_same() {
    // (inline budget, answers expected on the worker, on the pool) for the five answers below.
    for (inline, worker, pool) in [(3, 1, 4), (0, 0, 5)] {
        let s = TestServer::start_configured(|c| {
            c.access_inline_memberships = inline;
            c.max_scan = 6;
        })
        .await;
        let user = |name: &'static str| {
            let s = &s;
            async move { s.post("/Users", &json!({"userName": name})).await.id() }
        };
        let (small, wide, huge) = (user("small@x.org").await, user("wide@x.org").await, user("huge@x.org").await);
        let mut leaves = Vec::new();
        for i in 0..7 {
            // small is in the first leaf; wide in the first two; huge in all seven.
            let members: Vec<Value> = [(&small, i < 1), (&wide, i < 2), (&huge, true)]
                .into_iter()
                .filter(|(_, member)| *member)
                .map(|(id, _)| json!({"value": id}))
                .collect();
            leaves.push(s.post("/Groups", &json!({"displayName": format!("leaf {i}"), "members": members})).await.id());
        }
        let tops: Vec<Value> = leaves.iter().map(|g| json!({"value": g})).collect();
        let top = json!({"displayName": "top", "members": tops, GROUP_ACCESS: {"roles": [{"value": PROD_ADMIN}]}});
        assert_eq!(s.post("/Groups", &top).await.status, 201);

        // small: 1 membership + 1 above its leaf = 2; wide: 2 + 2 = 4; huge: 7, over --max-scan.
        for (who, memberships) in [(&small, 2), (&wide, 4)] {
            let c = check(&s, who, "admin", "prod").await;
            assert_eq!(c["allowed"], true, "inline {inline}, {memberships} memberships: {c}");
            assert_eq!(c["reason"], format!("{PROD_ADMIN} through group \"top\""), "inline {inline}");
        }
        let access = api(&s, Method::GET, &format!("/users/{wide}/access?by=id"), None).await;
        assert_eq!(access.status, 200, "{}", access.body);
        let grants = access.body["grants"].as_array().unwrap();
        assert_eq!(grants.len(), 1, "inline {inline}: {}", access.body);
        assert_eq!(grants[0]["source"]["groupDisplayName"], "top");

        let too_many = api(&s, Method::GET, &format!("/access/check?user={huge}&environment=prod&by=id"), None).await;
        assert_eq!((too_many.status.as_u16(), too_many.body["scimType"].as_str()), (400, Some("tooMany")));
        let r = api(&s, Method::GET, &format!("/users/{huge}/access?by=id"), None).await;
        assert_eq!((r.status.as_u16(), r.body["scimType"].as_str()), (400, Some("tooMany")), "{}", r.body);

        let metrics = s.metrics_text().await;
        let count = |line: &str| {
            metrics.lines().find_map(|l| l.strip_prefix(line)).map_or(0, |n| n.trim().parse::<u64>().unwrap())
        };
        assert_eq!(
            (
                count("scimlog_access_answers_total{where=\"worker\"}"),
                count("scimlog_access_answers_total{where=\"pool\"}")
            ),
            (worker, pool),
            "inline {inline}"
        );
    }
}
