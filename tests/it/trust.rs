//! The promises an outside review attacked (security-review.md, code-review.md), each with the
//! scenario that broke it: organization-scoped roles, who a name means, host links, the history
//! index, a panicking writer, bounded writes, and private files.

use reqwest::Method;
use scimlog::auth::{create_token, Role};
use scimlog_schemas::ResourceKind;
use serde_json::{json, Value};

use crate::support::{config, q, TestServer};

async fn api(s: &TestServer, method: Method, path: &str, body: Option<Value>) -> crate::support::Reply {
    s.send(method, &format!("{}/api/v1{path}", s.base), body.as_ref(), &[]).await
}

async fn check(s: &TestServer, user: &str, role: Option<&str>, env: &str) -> Value {
    let role = role.map(|r| format!("&role={}", q(r))).unwrap_or_default();
    let r = api(s, Method::GET, &format!("/access/check?user={}{role}&environment={}", q(user), q(env)), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

async fn member_ids(s: &TestServer, env: &str) -> Option<Vec<String>> {
    let r = api(s, Method::GET, &format!("/environments/{env}/members"), None).await;
    if r.status == 404 {
        return None;
    }
    assert_eq!(r.status, 200, "{}", r.body);
    Some(r.body["members"].as_array().unwrap().iter().map(|m| m["userId"].as_str().unwrap().to_string()).collect())
}

const GROUP_ACCESS: &str = "urn:scimlog:params:scim:schemas:extension:access:2.0:Group";

/// An organization-scoped role applies only inside its organization (`*`: everywhere), directly
/// and through nested groups; an environment that does not exist gives nobody access; and the
/// check and the member list agree on every case.
#[tokio::test]
async fn organization_roles_apply_only_inside_their_organization() {
    let s = TestServer::start().await;
    let role = |r: &str| json!([r]);
    let user = |name: &str, roles: Value| {
        let body = json!({"userName": name, "roles": roles});
        let s = &s;
        async move {
            let r = s.post("/Users", &body).await;
            assert_eq!(r.status, 201, "{}", r.body);
            r.id()
        }
    };
    // prod and staging come into being in the default organization.
    let env_direct = user("env-direct", role("urn:scimlog:role:environment:prod:admin")).await;
    let org_default = user("org-default", role("urn:scimlog:role:organization:default:admin")).await;
    let org_sandbox = user("org-sandbox", role("urn:scimlog:role:organization:sandbox:admin")).await;
    let org_any = user("org-any", role("urn:scimlog:role:organization:*:admin")).await;
    let entitled = s
        .post(
            "/Users",
            &json!({"userName": "entitled", "entitlements": ["urn:scimlog:entitlement:environment:staging"]}),
        )
        .await
        .id();
    let nobody = user("nobody", json!([])).await;
    let nested_default = user("nested-default", json!([])).await;
    let nested_sandbox = user("nested-sandbox", json!([])).await;
    // Two levels: child groups inside parents that hold the organization roles.
    for (holder, member, org) in
        [("Default admins", &nested_default, "default"), ("Sandbox admins", &nested_sandbox, "sandbox")]
    {
        let child = s
            .post("/Groups", &json!({"displayName": format!("{holder} (team)"), "members": [{"value": member}]}))
            .await
            .id();
        let parent = s
            .post(
                "/Groups",
                &json!({"displayName": holder, "members": [{"value": child, "type": "Group"}],
                        GROUP_ACCESS: {"roles": [format!("urn:scimlog:role:organization:{org}:admin")]}}),
            )
            .await;
        assert_eq!(parent.status, 201, "{}", parent.body);
    }
    let envs = api(&s, Method::GET, "/environments", None).await.body;
    let orgs_of: Vec<(&str, &str)> = envs["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["slug"].as_str().unwrap(), e["organization"].as_str().unwrap()))
        .collect();
    assert_eq!(orgs_of, [("prod", "default"), ("staging", "default")], "environments record their organization");

    // (user, allowed as admin in prod, in staging)
    let table = [
        (&env_direct, true, false),
        (&org_default, true, true),
        (&org_sandbox, false, false),
        (&org_any, true, true),
        (&entitled, false, false),
        (&nobody, false, false),
        (&nested_default, true, true),
        (&nested_sandbox, false, false),
    ];
    for (id, prod, staging) in table {
        for (env, want) in [("prod", prod), ("staging", staging)] {
            let c = check(&s, id, Some("admin"), env).await;
            assert_eq!(c["allowed"], want, "admin of {env}: {c}");
        }
        // An environment that does not exist: no, with that reason, whoever asks.
        let c = check(&s, id, Some("admin"), "does-not-exist").await;
        assert_eq!(c["allowed"], false, "{c}");
        assert_eq!(c["reason"], "environment \"does-not-exist\" does not exist");
    }
    // The check (any access) and the member list agree on every user and environment.
    let everyone =
        [&env_direct, &org_default, &org_sandbox, &org_any, &entitled, &nobody, &nested_default, &nested_sandbox];
    for env in ["prod", "staging"] {
        let members = member_ids(&s, env).await.expect("the environment exists");
        for id in everyone {
            let allowed = check(&s, id, None, env).await["allowed"] == true;
            assert_eq!(allowed, members.contains(id), "{env}: check and members disagree on {id}");
        }
    }
    assert_eq!(member_ids(&s, "does-not-exist").await, None);
    assert!(member_ids(&s, "staging").await.unwrap().contains(&entitled), "an entitlement is access too");
    s.stop().await;
}

/// A name that means two different users is never resolved by guessing: 409, unless `by` says.
#[tokio::test]
async fn a_name_that_matches_two_users_is_refused_unless_by_says_which() {
    let s = TestServer::start().await;
    let env_role = "urn:scimlog:role:environment:prod:admin";
    let alice = s.post("/Users", &json!({"userName": "shared", "roles": [env_role]})).await.id();
    let bob = s.post("/Users", &json!({"userName": "bob", "externalId": "shared"})).await.id();
    // Carol's externalId is Alice's id.
    let carol = s.post("/Users", &json!({"userName": "carol", "externalId": alice})).await.id();

    let r = api(&s, Method::GET, "/access/check?user=shared&role=admin&environment=prod", None).await;
    r.assert_error(409, Some("uniqueness"), "names 2 different users");
    assert!(r.body["detail"].as_str().unwrap().contains(&bob), "{}", r.body);
    let by = |by: &str, name: &str| format!("/access/check?user={name}&role=admin&environment=prod&by={by}");
    let c = api(&s, Method::GET, &by("userName", "shared"), None).await.body;
    assert_eq!((c["allowed"].clone(), c["userId"].clone()), (json!(true), json!(alice)));
    let c = api(&s, Method::GET, &by("externalId", "shared"), None).await.body;
    assert_eq!((c["allowed"].clone(), c["userId"].clone()), (json!(false), json!(bob)));
    api(&s, Method::GET, &format!("/users/{alice}/access"), None).await.assert_error(409, Some("uniqueness"), &carol);
    let a = api(&s, Method::GET, &format!("/users/{alice}/access?by=id"), None).await;
    assert_eq!(a.body["userId"], alice.as_str(), "{}", a.body);
    let c = api(&s, Method::GET, &format!("/users/{alice}/access?by=externalId"), None).await;
    assert_eq!(c.body["userId"], carol.as_str(), "{}", c.body);
    api(&s, Method::GET, &by("email", "shared"), None).await.assert_error(400, Some("invalidValue"), "\"email\"");

    // Hosts: the same rule for the user a host is linked to.
    let hosts = create_token(s.data_dir(), "mdm", "default", Role::Hosts).unwrap();
    let put = |body: Value| {
        let (s, hosts) = (&s, hosts.clone());
        async move {
            s.send_as(&hosts, Method::PUT, &format!("{}/api/v1/hosts/laptop-1/user", s.base), Some(&body), &[]).await
        }
    };
    // The first request after the token file changed records the new token (`token.created`).
    s.get("/Users?count=0").await;
    let before = s.log_position().await;
    put(json!({"user": "shared"})).await.assert_error(409, Some("uniqueness"), "names 2 different users");
    assert_eq!(s.log_position().await, before, "nothing written");
    let linked = put(json!({"user": "shared", "by": "externalId"})).await;
    assert_eq!(linked.body["userId"], bob.as_str(), "{}", linked.body);
    s.stop().await;
}

/// Case folding is documented and one: userNames (and group names) that differ only by
/// compatibility characters (KELVIN SIGN, fullwidth letters, ligatures) are one identity in the
/// index, in filters and in the access check.
#[tokio::test]
async fn names_that_differ_only_by_compatibility_characters_are_one_identity() {
    let s = TestServer::start().await;
    let kim = s
        .post("/Users", &json!({"userName": "kim@corp.example", "roles": ["urn:scimlog:role:environment:prod:admin"]}))
        .await
        .id();
    let before = s.log_position().await;
    for spoof in ["\u{212A}im@corp.example", "\u{FF4B}im@corp.example", "KIM@CORP.EXAMPLE"] {
        s.post("/Users", &json!({"userName": spoof})).await.assert_error(409, Some("uniqueness"), "userName");
        let found = s.get(&format!("/Users?filter={}", q(&format!("userName eq \"{spoof}\"")))).await;
        assert_eq!(found.body["totalResults"], 1, "{spoof}: {}", found.body);
        assert_eq!(found.body["Resources"][0]["id"], kim.as_str());
        let c = check(&s, spoof, Some("admin"), "prod").await;
        assert_eq!(c["userId"], kim.as_str(), "{spoof}");
    }
    s.post("/Groups", &json!({"displayName": "finance"})).await;
    s.post("/Groups", &json!({"displayName": "\u{FB01}nance"})).await.assert_error(409, Some("uniqueness"), "nance");
    assert_eq!(s.log_position().await, before + 1, "only the group was written");
    // A look-alike from another script is another name.
    assert_eq!(s.post("/Users", &json!({"userName": "\u{43A}im@corp.example"})).await.status, 201);
    s.stop().await;
}

/// Host links decide whose access a device carries: IdP (`scim`) tokens may not write them,
/// `hosts` tokens may (and may not provision).
#[tokio::test]
async fn host_links_need_a_hosts_or_admin_token() {
    let s = TestServer::start().await;
    let uid = s.post("/Users", &json!({"userName": "dana"})).await.id();
    let path = format!("{}/api/v1/hosts/laptop-9/user", s.base);
    let body = json!({"user": uid});
    let before = s.log_position().await;
    s.send(Method::PUT, &path, Some(&body), &[]).await.assert_error(403, None, "--role hosts");
    s.send(Method::DELETE, &path, None, &[]).await.assert_error(403, None, "--role hosts");
    assert_eq!(s.log_position().await, before);
    let hosts = create_token(s.data_dir(), "mdm", "default", Role::Hosts).unwrap();
    let admin = create_token(s.data_dir(), "ops", "default", Role::Admin).unwrap();
    assert_eq!(s.send_as(&hosts, Method::PUT, &path, Some(&body), &[]).await.status, 200);
    assert_eq!(s.send(Method::GET, &path, None, &[]).await.body["userId"], uid.as_str(), "anyone may read");
    assert_eq!(s.send_as(&admin, Method::DELETE, &path, None, &[]).await.status, 204);
    s.send_as(&hosts, Method::GET, "/Users", None, &[]).await.assert_error(403, None, "role is hosts");
    s.send_as(&hosts, Method::POST, "/Users", Some(&json!({"userName": "x"})), &[]).await.assert_error(
        403,
        None,
        "role is hosts",
    );
    s.stop().await;
}

/// A host, an environment and a user that share a name never share a history or a version.
#[tokio::test]
async fn history_and_versions_are_per_resource_kind() {
    let s = TestServer::start().await;
    let uid =
        s.post("/Users", &json!({"userName": "erin", "roles": ["urn:scimlog:role:environment:prod:admin"]})).await.id();
    let hosts = create_token(s.data_dir(), "mdm", "default", Role::Hosts).unwrap();
    for host in ["prod", uid.as_str()] {
        let r = s
            .send_as(
                &hosts,
                Method::PUT,
                &format!("{}/api/v1/hosts/{host}/user", s.base),
                Some(&json!({"user": uid})),
                &[],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let store = scimlog::log::Store::open_read_only(s.data_dir()).unwrap();
    let keys = scimlog::log::keys::KeyRing::open_read_only(store.clone(), &Default::default(), s.data_dir()).unwrap();
    let history = |kind, id: &str| -> Vec<(String, u64)> {
        scimlog::audit::history(&store, &keys, "default", kind, id)
            .unwrap()
            .iter()
            .map(|e| (e.event_type().as_str().to_string(), e.resource_version))
            .collect()
    };
    let linked = ("host.user_linked".to_string(), 1);
    assert_eq!(history(ResourceKind::Host, "prod"), [linked.clone()], "not the environment's events");
    assert_eq!(history(ResourceKind::Environment, "prod"), [("environment.created".to_string(), 1)]);
    assert_eq!(history(ResourceKind::Host, &uid), [linked], "not the user's events");
    let user: Vec<String> = history(ResourceKind::User, &uid).into_iter().map(|(t, _)| t).collect();
    assert_eq!(user, ["user.created", "role.assigned"]);
    drop((store, keys));
    s.stop().await;
}

/// Read models written with an older key layout are rebuilt from the log when the server
/// starts: here the history index is taken away (and the layout mark with it) while stopped.
#[tokio::test]
async fn read_models_of_an_older_layout_are_rebuilt_at_start() {
    let s = TestServer::start().await;
    let uid = s.post("/Users", &json!({"userName": "fay"})).await.id();
    s.post("/Groups", &json!({"displayName": "Fays", "members": [{"value": uid}]})).await;
    let tmp = s.stop_keeping_data().await.unwrap();
    {
        let path = tmp.path().join("db");
        let db =
            rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, ["events", "state", "keys", "outbound"]).unwrap();
        let cf = db.cf_handle("state").unwrap();
        let stale: Vec<Box<[u8]>> = db
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .map(|kv| kv.unwrap().0)
            .filter(|k| k.starts_with(b"h\0") || &k[..] == b"_layout")
            .collect();
        assert!(stale.len() > 3, "the history index and the layout mark are there");
        for k in stale {
            db.delete_cf(cf, k).unwrap();
        }
    }
    let mut s = TestServer::start_with(config(tmp.path())).await;
    s.adopt_dir(tmp);
    let store = scimlog::log::Store::open_read_only(s.data_dir()).unwrap();
    assert_eq!(store.layout_version().unwrap(), Some(scimlog_projections::keys::LAYOUT_VERSION));
    let keys = scimlog::log::keys::KeyRing::open_read_only(store.clone(), &Default::default(), s.data_dir()).unwrap();
    let kinds: Vec<&str> = scimlog::audit::history(&store, &keys, "default", ResourceKind::User, &uid)
        .unwrap()
        .iter()
        .map(|e| e.event_type().as_str())
        .collect();
    assert_eq!(kinds, ["user.created", "group.member_added"], "rebuilt from the log");
    assert_eq!(s.get(&format!("/Users/{uid}")).await.body["groups"][0]["display"], "Fays");
    drop((store, keys));
    s.stop().await;
}

/// Data dirs of older layouts are rebuilt at start into this one's keys: layout 4, where a
/// member's groups were one key each (`mg 0 tenant 0 member 0 group`) and no list, and layout
/// 5, where a user's list was keyed `mg 0 tenant 0 user` instead of right after its document.
/// The user's groups are rendered again, and no key of the old form is left. (A layout change
/// without a new version would serve the old keys as they are: the user would show no group.)
#[tokio::test]
async fn data_dirs_of_older_layouts_are_rebuilt_into_member_lists_at_start() {
    use scimlog_projections::keys;
    use scimlog_schemas::MemberType;
    for layout in [4u32, 5] {
        let s = TestServer::start().await;
        let uid = s.post("/Users", &json!({"userName": "gil"})).await.id();
        let mut gids = Vec::new();
        for name in ["Ops", "Dev"] {
            gids.push(s.post("/Groups", &json!({"displayName": name, "members": [{"value": uid}]})).await.id());
        }
        let tmp = s.stop_keeping_data().await.unwrap();
        // The old form: layout 4's key per group, or layout 5's list under `mg`.
        let old_keys: Vec<Vec<u8>> = match layout {
            4 => gids.iter().map(|g| keys::membership("default", &uid, g)).collect(),
            _ => vec![[b"mg\0default\0".as_slice(), uid.as_bytes()].concat()],
        };
        {
            let path = tmp.path().join("db");
            let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, ["events", "state", "keys", "outbound"])
                .unwrap();
            let cf = db.cf_handle("state").unwrap();
            let list = keys::member_of("default", MemberType::User, &uid);
            let value = db.get_cf(cf, &list).unwrap().expect("this layout lists the user's groups");
            db.delete_cf(cf, &list).unwrap();
            for k in &old_keys {
                db.put_cf(cf, k, if layout == 4 { &[][..] } else { &value[..] }).unwrap();
            }
            db.put_cf(cf, keys::LAYOUT, layout.to_be_bytes()).unwrap();
        }
        let mut s = TestServer::start_with(config(tmp.path())).await;
        s.adopt_dir(tmp);
        let user = s.get(&format!("/Users/{uid}")).await;
        let groups = user.body["groups"].as_array().cloned().unwrap_or_default();
        let mut shown: Vec<&str> = groups.iter().filter_map(|g| g["display"].as_str()).collect();
        shown.sort();
        assert_eq!(shown, ["Dev", "Ops"], "layout {layout}: {}", user.body);
        let store = scimlog::log::Store::open_read_only(s.data_dir()).unwrap();
        assert_eq!(store.layout_version().unwrap(), Some(keys::LAYOUT_VERSION));
        let state = store.scan_state().unwrap();
        let left: Vec<String> = state
            .iter()
            .filter(|(k, _)| old_keys.contains(k))
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert!(left.is_empty(), "keys of layout {layout} left: {left:?}");
        drop(store);
        s.stop().await;
    }
}

/// A panic while deciding a write (a bug) costs that request alone: 500, nothing written, and
/// the writer goes on; /healthz stays ok.
#[tokio::test]
async fn a_panic_in_decide_answers_500_and_the_writer_goes_on() {
    let s = TestServer::start().await;
    let before = s.log_position().await;
    s.faults().panic_in_next_decides(1);
    s.post("/Users", &json!({"userName": "gus"})).await.assert_error(500, None, "nothing was written");
    assert_eq!(s.log_position().await, before);
    let r = s.post("/Users", &json!({"userName": "gus"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let health = s.client.get(format!("{}/healthz", s.base)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(s.log_position().await, before + 1);
    s.stop().await;
}

/// Every limit on what one write asks of the shared writer has a number in config, and is
/// enforced with a clear error before anything is written.
#[tokio::test]
async fn writes_are_bounded_by_their_configured_limits() {
    let s = TestServer::start_configured(|cfg| {
        cfg.max_members_per_request = 5;
        cfg.max_values_per_attribute = 3;
        cfg.max_scan = 8;
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(s.post("/Users", &json!({"userName": format!("m{i}")})).await.id());
    }
    let members = |n: usize| -> Vec<Value> { ids[..n].iter().map(|id| json!({"value": id})).collect() };
    let before = s.log_position().await;
    let emails = |n: usize| -> Vec<Value> { (0..n).map(|i| json!({"value": format!("e{i}@x.org")})).collect() };
    s.post("/Groups", &json!({"displayName": "big", "members": members(6)})).await.assert_error(
        400,
        Some("invalidValue"),
        "names 6 members, more than the limit of 5 (--max-members-per-request)",
    );
    s.post("/Users", &json!({"userName": "many", "emails": emails(4)})).await.assert_error(
        400,
        Some("invalidValue"),
        "emails has 4 values, more than the limit of 3 (--max-values-per-attribute)",
    );
    assert_eq!(s.log_position().await, before, "nothing written");

    let gid = s.post("/Groups", &json!({"displayName": "g", "members": members(4)})).await.id();
    let uid = s.post("/Users", &json!({"userName": "two", "emails": emails(2)})).await.id();
    let before = s.log_position().await;
    let add = |v: Vec<Value>| json!({"op": "add", "path": "members", "value": v});
    let two_ops = json!({"Operations": [add(members(3)), add(members(3))]});
    s.send(Method::PATCH, &format!("/Groups/{gid}"), Some(&two_ops), &[]).await.assert_error(
        400,
        Some("invalidValue"),
        "names 6 members",
    );
    let more = json!({"Operations": [{"op": "add", "path": "emails", "value": [{"value": "new@x.org"}, {"value": "new2@x.org"}]}]});
    s.send(Method::PATCH, &format!("/Users/{uid}"), Some(&more), &[]).await.assert_error(
        400,
        Some("invalidValue"),
        "emails has 4 values",
    );
    // Member filters that are not `value eq` read the group once per PATCH, within --max-scan:
    // two such operations on 4 members read 8; a third would read 12.
    let scan = json!({"op": "remove", "path": "members[value sw \"zzz\"]"});
    let three = json!({"Operations": [scan.clone(), scan.clone(), scan.clone()]});
    s.send(Method::PATCH, &format!("/Groups/{gid}"), Some(&three), &[]).await.assert_error(
        400,
        Some("tooMany"),
        "more than the limit of 8 (--max-scan)",
    );
    assert_eq!(s.log_position().await, before, "nothing written");
    let two = json!({"Operations": [scan.clone(), scan]});
    assert_eq!(s.send(Method::PATCH, &format!("/Groups/{gid}"), Some(&two), &[]).await.status, 204);
    // Removing all members reads them once, however many operations ask: 100 remove-alls fit.
    let all = json!({"op": "remove", "path": "members"});
    let hundred = json!({"Operations": vec![all; 100]});
    let r = s.send(Method::PATCH, &format!("/Groups/{gid}"), Some(&hundred), &[]).await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(s.get(&format!("/Groups/{gid}")).await.body.get("members"), None, "no members left");
    s.stop().await;
}

/// What the process creates is its owner's alone; a first-start token goes to a 0600 file,
/// never to stdout; loose permissions found at start are warned about.
#[tokio::test]
async fn the_data_dir_and_its_files_are_private() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("fresh/data");
    let mut cfg = config(&data);
    cfg.bootstrap_token = None;
    cfg.admin_token = None;
    let s = TestServer::start_with(cfg).await;
    let token_file = scimlog::server::initial_token_path(&data);
    let written = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(Some(written.trim()), s.created_token().as_deref(), "the first token is in {}", token_file.display());
    let r = s.send_as(written.trim(), Method::POST, "/Users", Some(&json!({"userName": "private@x.org"})), &[]).await;
    assert_eq!(r.status, 201, "{}", r.body);
    s.stop().await;
    let mut loose = Vec::new();
    let mut stack = vec![data.clone()];
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        seen += 1;
        if let Some(mode) = scimlog::files::loose_mode(&p) {
            loose.push(format!("{} {mode:o}", p.display()));
        }
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        }
    }
    assert!(seen > 10, "the store's files were checked");
    assert!(loose.is_empty(), "accessible to others: {loose:?}");
}

/// `keys generate` never overwrites a key: it is the only way to open what it sealed.
#[test]
fn keys_generate_never_overwrites_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("master.key");
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_scimlog"))
            .args(["keys", "generate"])
            .arg(&path)
            .output()
            .unwrap()
    };
    assert!(run().status.success());
    let key = std::fs::read(&path).unwrap();
    let again = run();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(std::fs::read(&path).unwrap(), key, "the key is unchanged");
}

/// Two CLI edits of the token file at once: neither is lost (a revoked token stays revoked).
#[test]
fn concurrent_token_edits_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    for i in 0..20 {
        create_token(&dir, &format!("old{i}"), "default", Role::Scim).unwrap();
    }
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                scimlog::auth::revoke_token(&dir, &format!("old{i}")).unwrap();
                create_token(&dir, &format!("new{i}"), "default", Role::Scim).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut names: Vec<String> = scimlog::auth::list_tokens(&dir).unwrap().into_iter().map(|t| t.name).collect();
    names.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("new{i}")).collect();
    want.sort();
    assert_eq!(names, want);
}

/// Every way of listing honours `--max-scan`: a search without a filter, a sort, a far
/// `startIndex`; walking a whole collection page by page is never refused.
#[tokio::test]
async fn every_listing_path_honours_max_scan() {
    let s = TestServer::start_configured(|cfg| {
        cfg.max_scan = 3;
    })
    .await;
    for i in 0..5 {
        s.post("/Users", &json!({"userName": format!("scan{i}")})).await;
    }
    let search = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"]});
    s.post("/.search", &search).await.assert_error(400, Some("tooMany"), "more than 3 resources (--max-scan)");
    // One type without a sort pages its collection at O(page): never refused.
    assert_eq!(s.post("/Users/.search", &search).await.body["totalResults"], 5);
    s.get("/Users?sortBy=userName").await.assert_error(400, Some("tooMany"), "--max-scan");
    s.get("/Users?startIndex=5&count=1").await.assert_error(400, Some("tooMany"), "startIndex 5 would walk");
    let far = s.get("/Users?startIndex=1000000000000000000").await;
    assert_eq!((far.status.as_u16(), far.body["totalResults"].clone()), (200, json!(5)), "{}", far.body);
    assert_eq!(far.body["Resources"], json!([]));
    // Page by page from the start: each page continues the one before.
    let mut seen = 0;
    for start in [1, 3, 5] {
        let page = s.get(&format!("/Users?startIndex={start}&count=2")).await;
        assert_eq!(page.status, 200, "{}", page.body);
        seen += page.body["Resources"].as_array().unwrap().len();
    }
    assert_eq!(seen, 5);
    s.stop().await;
}

/// A group renders at most `--max-members-rendered` members in one response; beyond it the
/// client is told to exclude them, and a write still answers (without the members).
#[tokio::test]
async fn group_member_rendering_is_capped() {
    let s = TestServer::start_configured(|cfg| {
        cfg.max_members_rendered = 3;
    })
    .await;
    let mut members = Vec::new();
    for i in 0..4 {
        members.push(json!({"value": s.post("/Users", &json!({"userName": format!("mr{i}")})).await.id()}));
    }
    let small = s.post("/Groups", &json!({"displayName": "small", "members": members[..2]})).await;
    assert_eq!(small.body["members"].as_array().unwrap().len(), 2);
    let big = s.post("/Groups", &json!({"displayName": "big", "members": members})).await;
    assert_eq!(big.status, 201, "{}", big.body);
    assert!(big.body.get("members").is_none(), "the write answers without the members");
    let gid = big.id();
    s.get(&format!("/Groups/{gid}")).await.assert_error(400, Some("tooMany"), "has 4 members");
    let lean = s.get(&format!("/Groups/{gid}?excludedAttributes=members")).await;
    assert_eq!((lean.status.as_u16(), lean.body["displayName"].clone()), (200, json!("big")));
    s.get("/Groups").await.assert_error(400, Some("tooMany"), "--max-members-rendered 3");
    assert_eq!(s.get("/Groups?excludedAttributes=members").await.body["totalResults"], 2);
    s.stop().await;
}

/// Raw HTTP/1.1 on a socket: what a slow, silent or lying client gets.
async fn raw(addr: &str, request: &[u8], then_wait_ms: u64) -> (String, std::time::Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    sock.write_all(request).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(then_wait_ms)).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), sock.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server closed the connection within 10 s");
    (String::from_utf8_lossy(&out).into_owned(), started.elapsed())
}

/// A declared body over the limit is refused before it is read; a body that trickles in is cut
/// off with 408; a kept-alive connection that stays silent is closed.
#[tokio::test]
async fn slow_silent_and_oversized_bodies_are_cut_off() {
    let s = TestServer::start_configured(|cfg| {
        cfg.body_read_timeout_ms = 300;
        cfg.header_read_timeout_ms = 300;
    })
    .await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let head = |len: u64| {
        format!(
            "POST /scim/v2/Users HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/scim+json\r\nContent-Length: {len}\r\n\r\n",
            crate::support::TOKEN
        )
    };
    // 1 GB announced, nothing sent: answered at once.
    let (reply, _) = raw(&addr, head(1 << 30).as_bytes(), 0).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("larger than the limit of 1048576 bytes"), "{reply}");
    // 100 bytes announced, 10 sent: 408 once the body deadline passes.
    let mut trickle = head(100).into_bytes();
    trickle.extend_from_slice(b"{\"userName");
    let (reply, _) = raw(&addr, &trickle, 0).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("did not arrive within 300 ms"), "{reply}");
    // One complete request, then silence: the connection is closed after the idle deadline.
    let (reply, took) = raw(&addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 0).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(took < std::time::Duration::from_secs(5), "closed after the idle deadline, took {took:?}");
    assert_eq!(s.log_position().await, 0, "nothing was written");
    s.stop().await;
}

/// Reads that scan run off the async runtime, at most `--max-concurrent-reads` at once; one that
/// waits longer than `--read-wait-ms` is answered 503 with Retry-After, and /healthz answers
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanning_reads_take_turns_and_health_still_answers() {
    let s = TestServer::start_configured(|cfg| {
        cfg.max_concurrent_reads = 1;
        cfg.read_wait_ms = 1;
        cfg.bulk_max_operations = 1000;
        cfg.bulk_max_payload_bytes = 4 << 20;
    })
    .await;
    for batch in 0..4 {
        let ops: Vec<Value> = (0..1000)
            .map(|i| {
                json!({"method": "POST", "path": "/Users", "bulkId": format!("b{i}"),
                "data": {"userName": format!("turn{batch}-{i}"), "title": "Engineer"}})
            })
            .collect();
        let r = s
            .post(
                "/Bulk",
                &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": ops}),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let filter = format!("/Users?filter={}&count=1", q("title co \"gine\""));
    let searches: Vec<_> = (0..8)
        .map(|_| {
            let (client, url, token) = (s.client.clone(), s.url(&filter), s.token.clone());
            tokio::spawn(
                async move { crate::support::read(client.get(url).bearer_auth(token).send().await.unwrap()).await },
            )
        })
        .collect();
    let health = s.client.get(format!("{}/healthz", s.base)).send().await.unwrap();
    assert_eq!(health.status(), 200, "health answers while searches run");
    let mut statuses = Vec::new();
    for t in searches {
        let r = t.await.unwrap();
        if r.status == 503 {
            assert_eq!(r.header("retry-after"), Some("1"));
            r.assert_error(503, None, "waited 1 ms for its turn");
        } else {
            assert_eq!(r.body["totalResults"], 4000, "{}", r.body);
        }
        statuses.push(r.status.as_u16());
    }
    assert!(statuses.contains(&200) && statuses.contains(&503), "{statuses:?}");
    s.stop().await;
}

/// One tenant cannot take the server from another. A token over its rate gets 429 with
/// Retry-After (a bucket per token; tenants can have their own rate). A tenant that floods writes
/// and expensive searches holds at most its share of the writer queue: the other tenant's writes
/// are all answered, none with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_take_the_server_from_another() {
    let s = TestServer::start_configured(|cfg| {
        cfg.write_queue_depth = 8;
        cfg.write_queue_per_tenant = 4;
        cfg.tenant_rate_limits = vec![("metered".into(), scimlog::http::rate::Rate { per_s: 1, burst: 3 })];
    })
    .await;
    let metered = create_token(s.data_dir(), "metered", "metered", Role::Scim).unwrap();
    let noisy = create_token(s.data_dir(), "noisy", "noisy", Role::Scim).unwrap();

    // The rate: three at once, then 429 until the bucket refills; other tenants are not slowed.
    for i in 0..3 {
        let r = s.send_as(&metered, Method::GET, "/Users?count=1", None, &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    let r = s.send_as(&metered, Method::GET, "/Users?count=1", None, &[]).await;
    r.assert_error(429, None, "over its rate limit");
    assert_eq!(r.header("retry-after"), Some("1"));
    for _ in 0..10 {
        assert_eq!(s.get("/Users?count=1").await.status, 200);
    }

    // The queue: the noisy tenant floods writes and scans; every write of the other is answered.
    let flood: Vec<_> = (0..200)
        .map(|i| {
            let (client, token) = (s.client.clone(), noisy.clone());
            let (url, search) = (s.url("/Users"), s.url(&format!("/Users?filter={}", q("title co \"x\""))));
            tokio::spawn(async move {
                let req = if i % 25 == 0 {
                    client.get(search).bearer_auth(token)
                } else {
                    let body = json!({"userName": format!("noisy{i}"), "title": "x"}).to_string();
                    client.post(url).bearer_auth(token).header("content-type", "application/scim+json").body(body)
                };
                crate::support::read(req.send().await.unwrap()).await
            })
        })
        .collect();
    for i in 0..20 {
        let r = s.post("/Users", &json!({"userName": format!("calm{i}")})).await;
        assert_eq!(r.status, 201, "the calm tenant's write {i}: {}", r.body);
    }
    let mut refused = 0;
    for t in flood {
        let r = t.await.unwrap();
        if r.status == 503 {
            r.assert_error(503, None, "its share of the queue (--write-queue-per-tenant)");
            refused += 1;
        }
    }
    assert!(refused > 0, "the flood went past the noisy tenant's share");
    s.stop().await;
}

/// Expanding nested groups for an access answer reads at most `--max-scan` memberships: beyond
/// it the answer is a clear 400, never a partial list or a wrong "no".
#[tokio::test]
async fn access_expansion_honours_max_scan() {
    let s = TestServer::start_configured(|cfg| {
        cfg.max_scan = 3;
    })
    .await;
    let uid = s.post("/Users", &json!({"userName": "deep"})).await.id();
    // Holds the role itself, the first grant an answer meets: the expansion is read to its end
    // all the same, so whether a user is refused does not depend on what is asked.
    let direct = json!({"userName": "direct", "roles": [{"value": "urn:scimlog:role:environment:prod:admin"}]});
    let direct = s.post("/Users", &direct).await.id();
    // deep, direct ∈ g1 ∈ g2 ∈ g3 ∈ g4, and g4 holds the role: four memberships to read each.
    let mut inner = vec![json!({"value": uid, "type": "User"}), json!({"value": direct, "type": "User"})];
    for level in 1..=4 {
        let mut body = json!({"displayName": format!("g{level}"), "members": inner});
        if level == 4 {
            body[GROUP_ACCESS] = json!({"roles": ["urn:scimlog:role:environment:prod:admin"]});
        }
        let g = s.post("/Groups", &body).await;
        assert_eq!(g.status, 201, "{}", g.body);
        inner = vec![json!({"value": g.id(), "type": "Group"})];
    }
    for who in ["deep", "direct"] {
        let check = api(&s, Method::GET, &format!("/access/check?user={who}&role=admin&environment=prod"), None).await;
        check.assert_error(400, Some("tooMany"), "more than 3 memberships (--max-scan)");
    }
    api(&s, Method::GET, &format!("/users/{uid}/access"), None).await.assert_error(400, Some("tooMany"), "--max-scan");
    api(&s, Method::GET, "/environments/prod/members", None).await.assert_error(400, Some("tooMany"), "--max-scan");
    s.stop().await;
}

/// Index keys hold no personal value in clear: userNames, emails and externalIds are blinded
/// (HMAC under a secret the master key wraps). Keys reach places a purge cannot rewrite (RocksDB's
/// MANIFEST records each file's first and last key), so none can keep an erased person's values;
/// lookups through each index still find the users, and a rotation of the master key keeps them.
#[tokio::test]
async fn index_keys_hold_no_personal_value() {
    let s = TestServer::start().await;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let ops: Vec<Value> = (0..300)
        .map(|i| {
            json!({"method": "POST", "path": "/Users", "bulkId": format!("b{i}"), "data": {
            "userName": format!("ix{i}-{tag}"), "externalId": format!("ext{i}-{tag}"),
            "emails": [{"value": format!("mail{i}-{tag}@x.org")}]}})
        })
        .collect();
    let r = s
        .post("/Bulk", &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": ops}))
        .await;
    assert_eq!(r.status, 200);
    for filter in [
        format!("userName eq \"IX7-{tag}\""),
        format!("emails.value eq \"mail7-{tag}@x.org\""),
        format!("externalId eq \"ext7-{tag}\""),
    ] {
        let found = s.get(&format!("/Users?filter={}", q(&filter))).await;
        assert_eq!(found.body["totalResults"], 1, "{filter}: {}", found.body);
    }
    let erased = s.get(&format!("/Users?filter={}", q(&format!("userName eq \"ix0-{tag}\"")))).await.body["Resources"]
        [0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let admin = s.new_token(Role::Admin);
    let url = format!("{}/api/v1/users/{erased}/erase", s.base);
    assert_eq!(s.send_as(&admin, Method::POST, &url, Some(&json!({"reason": "r"})), &[]).await.body["purge"], "done");
    let dir = s.data_dir().to_path_buf();
    let _keep = s.stop_keeping_data().await;

    let store = scimlog::log::Store::open_read_only(&dir).unwrap();
    let personal = |k: &[u8]| {
        let text = String::from_utf8_lossy(k);
        text.contains(&tag) || text.contains("@x.org")
    };
    let state = store.scan_state().unwrap();
    assert!(state.iter().any(|(_, v)| personal(v)), "the values are there (the search would find them)");
    let leaked: Vec<String> =
        state.iter().filter(|(k, _)| personal(k)).map(|(k, _)| String::from_utf8_lossy(k).into()).collect();
    assert!(leaked.is_empty(), "keys with personal values: {leaked:?}");
    for needle in [format!("ix0-{tag}"), format!("mail0-{tag}@x.org"), format!("ext0-{tag}")] {
        let manifests: Vec<std::path::PathBuf> = std::fs::read_dir(dir.join("db"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("MANIFEST"))
            .collect();
        assert!(!manifests.is_empty());
        for m in manifests {
            let bytes = std::fs::read(&m).unwrap();
            assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle} in {}", m.display());
        }
    }
}
