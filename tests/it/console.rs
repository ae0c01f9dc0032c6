//! The admin console (issue 18): in a real headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, installed by `scripts/setup --test`), and over
//! plain HTTP for what a browser hides (cookies' attributes, CSRF refusals, limits).
//! Screenshots of every page go to `<target>/tmp/console/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{TestServer, ADMIN_TOKEN};

const GROUP_ACCESS: &str = "urn:scimlog:params:scim:schemas:extension:access:2.0:Group";
const PROD_ADMIN: &str = "urn:scimlog:role:environment:prod:admin";

/// A chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts chromedriver and a headless Chromium session in it (window `width` × `height`).
async fn browser(width: u32, height: u32) -> (Driver, Client) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "chromedriver must be installed for the console tests (./scripts/setup --test installs chromium-driver)",
        );
    let driver = Driver { child, port, _profile: tempfile::tempdir().unwrap() };
    let mut caps = serde_json::Map::new();
    let args = [
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--disable-dev-shm-usage".into(),
        "--disable-gpu".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        format!("--window-size={width},{height}"),
        format!("--user-data-dir={}", driver._profile.path().display()),
    ];
    caps.insert("goog:chromeOptions".into(), json!({"binary": "/usr/bin/chromium", "args": args}));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
        {
            Ok(c) => return (driver, c),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("cannot start a Chromium session through chromedriver: {e}"),
        }
    }
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Saves a screenshot of the page as `<target>/tmp/console/<name>.png`.
async fn shoot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Every resource the page loaded (the document, its stylesheet) came from the server itself,
/// and the page runs no script at all.
async fn assert_same_origin(c: &Client, base: &str) {
    let urls = c
        .execute(
            "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource')).map(e => e.name);",
            vec![],
        )
        .await
        .unwrap();
    for url in urls.as_array().unwrap() {
        let url = url.as_str().unwrap();
        assert!(url.starts_with(base), "the page loaded {url}, which is not from {base}");
    }
    let scripts = c.execute("return document.scripts.length;", vec![]).await.unwrap();
    assert_eq!(scripts, json!(0), "the console's pages have no script");
}

/// The text of the element `#id`, with each run of white space as one space.
async fn text(c: &Client, id: &str) -> String {
    let t = c.find(Locator::Id(id)).await.unwrap_or_else(|e| panic!("#{id}: {e}")).text().await.unwrap();
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn fill(c: &Client, id: &str, value: &str) {
    let field = c.find(Locator::Id(id)).await.unwrap_or_else(|e| panic!("#{id}: {e}"));
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

/// Clicks a link or a form's button, and waits until the page it leads to has replaced this
/// one (the old document's root goes stale) and has its main content.
async fn click(c: &Client, locator: Locator<'_>) {
    let old = c.find(Locator::Css("html")).await.unwrap();
    c.find(locator).await.unwrap_or_else(|e| panic!("{e}")).click().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while old.tag_name().await.is_ok() {
        assert!(Instant::now() < deadline, "the click led to no new page");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.wait().at_most(Duration::from_secs(10)).for_element(Locator::Id("main")).await.unwrap();
}

/// What an admin does in a morning, in a real browser: signs in, reads the overview, finds a
/// user provisioned over SCIM, reads their history and access and an as-of view, finds a failed
/// IdP request, creates and revokes a token, erases a person, and signs out. Every page loads
/// only from the server's own origin.
#[tokio::test]
async fn an_admin_morning_in_a_real_browser() {
    let s = TestServer::start().await;
    // Given a directory provisioned over SCIM: alice in Engineering (which holds a role), a
    // user whose name is markup, and an IdP request that failed.
    let alice = s.post("/Users", &json!({"userName": "alice@example.com", "title": "Engineer"})).await.id();
    let eng = s
        .post(
            "/Groups",
            &json!({"displayName": "Engineering", "members": [{"value": alice}], GROUP_ACCESS: {"roles": [{"value": PROD_ADMIN}]}}),
        )
        .await
        .id();
    let before_promotion = s.log_position().await;
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "title", "value": "Staff Engineer"}]});
    assert_eq!(s.send(reqwest::Method::PATCH, &format!("/Users/{alice}"), Some(&patch), &[]).await.status, 200);
    s.post("/Users", &json!({"userName": "<script>alert(1)</script>"})).await.id();
    let refused = s.post("/Users", &json!({"userName": "alice@example.com", "displayName": "marker-in-a-body"})).await;
    assert_eq!(refused.status, 409);
    let base = s.base.clone();
    let (_driver, c) = browser(1280, 900).await;

    // Sign in: the console sends a stranger to its login page.
    c.goto(&format!("{base}/admin")).await.unwrap();
    assert!(c.current_url().await.unwrap().as_str().ends_with("/admin/login"));
    fill(&c, "token", ADMIN_TOKEN).await;
    click(&c, Locator::Id("sign-in")).await;
    assert_eq!(c.current_url().await.unwrap().as_str(), format!("{base}/admin"));
    assert_eq!(text(&c, "counts").await, "2 users, 1 groups");
    let head: u64 = text(&c, "head").await.parse().unwrap();
    assert_eq!(head, s.log_position().await);
    let connections = text(&c, "connections").await;
    assert!(connections.contains("bootstrap") && connections.contains("409 uniqueness"), "{connections}");
    click(&c, Locator::Id("verify")).await;
    crate::support::eventually(10, "the chain verification ends", || {
        let c = c.clone();
        async move {
            c.refresh().await.unwrap();
            text(&c, "verify-result").await.starts_with("Verified")
        }
    })
    .await;
    assert_same_origin(&c, &base).await;
    shoot(&c, "overview").await;

    // Users: the markup-named user shows as text; search finds alice.
    click(&c, Locator::LinkText("Users")).await;
    c.find(Locator::LinkText("<script>alert(1)</script>")).await.expect("the name is shown as text");
    fill(&c, "q", "ALICE").await;
    click(&c, Locator::Id("search")).await;
    let rows = text(&c, "rows").await;
    assert!(rows.contains("alice@example.com") && !rows.contains("<script>"), "{rows}");
    assert_same_origin(&c, &base).await;
    shoot(&c, "users").await;

    // Her page: groups, access with provenance, history with old → new.
    click(&c, Locator::LinkText("alice@example.com")).await;
    assert_eq!(text(&c, "name").await, "alice@example.com");
    assert_eq!(text(&c, "groups").await, "Engineering");
    let access = text(&c, "access").await;
    assert!(access.contains(PROD_ADMIN) && access.contains("group Engineering"), "{access}");
    let history = text(&c, "history").await;
    assert!(history.contains("title: Engineer → Staff Engineer"), "{history}");
    assert!(history.contains("alice@example.com joined Engineering"), "{history}");
    assert!(history.contains("groups: + Engineering"), "{history}");
    assert_same_origin(&c, &base).await;
    shoot(&c, "user").await;

    // As of the position before her promotion, she was an Engineer.
    fill(&c, "at", &before_promotion.to_string()).await;
    click(&c, Locator::Id("show-as-of")).await;
    let as_of = text(&c, "as-of").await;
    assert!(as_of.contains(&format!("after position {before_promotion}")), "{as_of}");
    assert!(as_of.contains("Engineer") && !as_of.contains("Staff Engineer"), "{as_of}");
    assert!(as_of.contains("groups Engineering"), "memberships as of then: {as_of}");
    fill(&c, "at", "1").await;
    click(&c, Locator::Id("show-as-of")).await;
    assert!(text(&c, "as-of").await.contains("groups none"), "before the group existed");
    shoot(&c, "user-as-of").await;

    // Her group's page lists her and its grant.
    c.goto(&format!("{base}/admin/groups/{eng}")).await.unwrap();
    assert!(text(&c, "members").await.contains("alice@example.com user"));
    assert!(text(&c, "grants").await.contains(PROD_ADMIN));
    shoot(&c, "group").await;

    // Requests: the failed create, with its scimType and detail, and no body.
    click(&c, Locator::LinkText("Requests")).await;
    c.find(Locator::Id("errors")).await.unwrap().click().await.unwrap();
    click(&c, Locator::Id("filter")).await;
    let requests = text(&c, "requests").await;
    assert!(requests.contains("POST /scim/v2/Users 409 uniqueness"), "{requests}");
    assert!(!requests.contains("marker-in-a-body"), "no body is kept: {requests}");
    assert!(!requests.contains(" 201 "), "errors only: {requests}");
    assert_same_origin(&c, &base).await;
    shoot(&c, "requests").await;

    // Tokens: create one (shown once, and it works), then revoke it (and it does not).
    click(&c, Locator::LinkText("Tokens")).await;
    fill(&c, "token-name", "okta-prod").await;
    click(&c, Locator::Id("create-token")).await;
    let token = c.find(Locator::Id("new-token")).await.unwrap().prop("value").await.unwrap().unwrap();
    assert!(token.starts_with("scimlog_"), "{token}");
    shoot(&c, "token-created").await;
    assert_eq!(s.send_as(&token, reqwest::Method::GET, "/Users", None, &[]).await.status, 200);
    c.goto(&format!("{base}/admin/tokens")).await.unwrap();
    assert!(c.find(Locator::Id("new-token")).await.is_err(), "the token is shown once");
    click(&c, Locator::Id("revoke-okta-prod")).await;
    click(&c, Locator::Id("confirm-button")).await;
    assert!(!text(&c, "tokens").await.contains("okta-prod"));
    assert_eq!(s.send_as(&token, reqwest::Method::GET, "/Users", None, &[]).await.status, 401);

    // Erase alice: a reason and her userName typed to confirm; then her page is gone and her
    // events read [erased].
    c.goto(&format!("{base}/admin/users/{alice}")).await.unwrap();
    click(&c, Locator::Id("erase")).await;
    fill(&c, "reason", "GDPR-1234").await;
    fill(&c, "confirm", "alice@example.com").await;
    shoot(&c, "erase-confirm").await;
    click(&c, Locator::Id("confirm-button")).await;
    assert!(text(&c, "erased").await.contains(&alice));
    c.goto(&format!("{base}/admin/users/{alice}")).await.unwrap();
    assert_eq!(c.find(Locator::Css("h1")).await.unwrap().text().await.unwrap(), "404 Not Found");
    c.goto(&format!("{base}/admin/events?resource={alice}&type=user.created")).await.unwrap();
    let events = text(&c, "events").await;
    assert!(events.contains("created [erased]") && !events.contains("alice@example.com"), "{events}");
    click(&c, Locator::Css("#events tbody a")).await;
    let json = text(&c, "json").await;
    assert!(json.contains("[erased]") && !json.contains("alice@example.com"), "{json}");
    assert_eq!(text(&c, "linked").await, "the first event (genesis)");
    let last = s.log_position().await;
    c.goto(&format!("{base}/admin/events/{last}")).await.unwrap();
    assert_eq!(text(&c, "linked").await, format!("matches event {}", last - 1), "each event links to the one before");
    assert_same_origin(&c, &base).await;
    shoot(&c, "event").await;

    // Log out: the console is closed again.
    click(&c, Locator::Id("logout")).await;
    assert!(c.current_url().await.unwrap().as_str().ends_with("/admin/login"));
    c.goto(&format!("{base}/admin/users")).await.unwrap();
    assert!(c.current_url().await.unwrap().as_str().ends_with("/admin/login"));
    c.close().await.unwrap();
}

/// At a phone's width every page fits: nothing scrolls sideways but the tables' own boxes.
#[tokio::test]
async fn the_console_fits_a_phone() {
    let s = TestServer::start().await;
    for n in 0..3 {
        s.post("/Users", &json!({"userName": format!("a-rather-long-user-name-{n}@subsidiary.example.com")})).await;
    }
    let (_driver, c) = browser(390, 844).await;
    c.goto(&format!("{}/admin/login", s.base)).await.unwrap();
    fill(&c, "token", ADMIN_TOKEN).await;
    click(&c, Locator::Id("sign-in")).await;
    assert_eq!(c.current_url().await.unwrap().as_str(), format!("{}/admin", s.base), "signed in");
    for (page, name) in [("", "phone-overview"), ("/users", "phone-users"), ("/events", "phone-events")] {
        c.goto(&format!("{}/admin{page}", s.base)).await.unwrap();
        let overflow = c
            .execute("return document.documentElement.scrollWidth - document.documentElement.clientWidth;", vec![])
            .await
            .unwrap();
        assert!(overflow.as_i64().unwrap() <= 0, "{page} scrolls sideways by {overflow} px");
        c.find(Locator::Id("main")).await.unwrap();
        assert!(c.current_url().await.unwrap().as_str().ends_with(&format!("/admin{page}")), "{page} shows");
        shoot(&c, name).await;
    }
    c.close().await.unwrap();
}

/// A console client without a browser: cookies by hand, redirects not followed.
struct Http {
    client: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

impl Http {
    fn new(base: &str) -> Http {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Http { client, base: base.to_string(), cookie: None }
    }

    /// Signs in with `token`; the answer (a 303 with the cookie, or the refusal).
    async fn login(&mut self, token: &str) -> reqwest::Response {
        let mut req = self.client.post(format!("{}/admin/login", self.base)).header("origin", &self.base);
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        let r = req.form(&[("token", token)]).send().await.unwrap();
        if let Some(c) = r.headers().get("set-cookie") {
            self.cookie = Some(c.to_str().unwrap().split(';').next().unwrap().to_string());
        }
        r
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        let mut req = self.client.get(format!("{}/admin{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        req.send().await.unwrap()
    }

    async fn post(&self, path: &str, origin: Option<&str>, form: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.client.post(format!("{}/admin{path}", self.base)).form(form);
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send().await.unwrap()
    }

    /// The session's form token, read off a page.
    async fn csrf(&self) -> String {
        let page = self.get("/tokens").await.text().await.unwrap();
        let at = page.find("name=\"csrf\" value=\"").expect("a form with a token") + 19;
        page[at..].split('"').next().unwrap().to_string()
    }
}

#[tokio::test]
async fn sessions_are_http_only_strict_cookies_that_end_with_their_token() {
    let s = TestServer::start().await;
    let admin = s.new_token(scimlog::auth::Role::Admin);
    let mut h = Http::new(&s.base);
    let r = h.login(&admin).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age=28800"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    assert!(!cookie.contains(&admin), "the cookie is not the token");
    assert_eq!(h.get("").await.status(), StatusCode::OK);
    // Revoking the token (as `scimlog token revoke` does) ends the session at its next request.
    let name = scimlog::auth::list_tokens(s.data_dir())
        .unwrap()
        .into_iter()
        .find(|t| t.role == scimlog::auth::Role::Admin)
        .unwrap()
        .name;
    scimlog::auth::revoke_token(s.data_dir(), &name).unwrap();
    let r = h.get("").await;
    assert_eq!((r.status(), r.headers()["location"].to_str().unwrap()), (StatusCode::SEE_OTHER, "/admin/login"));
}

#[tokio::test]
async fn only_admin_tokens_sign_in() {
    let s = TestServer::start().await;
    let events = s.new_token(scimlog::auth::Role::Events);
    let cases: [(&str, StatusCode, &str); 3] = [
        (crate::support::TOKEN, StatusCode::FORBIDDEN, "the console needs an admin token"),
        (&events, StatusCode::FORBIDDEN, "has the role events"),
        ("scimlog_not-a-token", StatusCode::UNAUTHORIZED, "that token is not valid"),
    ];
    for (token, status, says) in cases {
        let mut h = Http::new(&s.base);
        let r = h.login(token).await;
        assert_eq!(r.status(), status);
        assert!(r.headers().get("set-cookie").is_none());
        assert!(r.text().await.unwrap().contains(says), "{says}");
    }
}

/// A POST from another origin, or without the session's form token, changes nothing.
#[tokio::test]
async fn forged_posts_are_refused() {
    let s = TestServer::start().await;
    let mut h = Http::new(&s.base);
    h.login(ADMIN_TOKEN).await;
    let csrf = h.csrf().await;
    let own = s.base.clone();
    let cases: [(Option<&str>, &str, &str); 5] = [
        (Some("http://localhost.evil.example"), &csrf, "came from http://localhost.evil.example"),
        (Some("http://evil.example"), &csrf, "came from http://evil.example"),
        (None, &csrf, "no Origin header"),
        (Some(&own), "", "the form is stale"),
        (Some(&own), "forged-token", "the form is stale"),
    ];
    for (origin, token, says) in cases {
        let r = h.post("/tokens", origin, &[("csrf", token), ("name", "forged"), ("role", "admin")]).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin:?} {token:?}");
        assert!(r.text().await.unwrap().contains(says), "{says}");
    }
    assert!(scimlog::auth::list_tokens(s.data_dir()).unwrap().iter().all(|t| t.name != "forged"));
    // The same form from the console itself is taken.
    let r = h.post("/tokens", Some(&own), &[("csrf", &csrf), ("name", "real"), ("role", "scim")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(scimlog::auth::list_tokens(s.data_dir()).unwrap().iter().any(|t| t.name == "real"));
}

#[tokio::test]
async fn every_page_is_sent_with_a_strict_content_security_policy() {
    let s = TestServer::start().await;
    let mut h = Http::new(&s.base);
    h.login(ADMIN_TOKEN).await;
    let id = s.post("/Users", &json!({"userName": "csp"})).await.id();
    for page in
        ["", "/users", &format!("/users/{id}"), "/groups", "/events", "/events/1", "/requests", "/tokens", "/login"]
    {
        let r = h.get(page).await;
        assert_eq!(r.status(), StatusCode::OK, "{page}");
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{page}: {csp}");
        assert_eq!(r.headers()["cache-control"], "no-store", "{page}");
    }
}

#[tokio::test]
async fn the_limits_hold() {
    // --console-max-sessions 2: a third login ends the oldest session.
    let s = TestServer::start_configured(|c| {
        c.console_max_sessions = 2;
        c.request_log_size = 2;
    })
    .await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let mut h = Http::new(&s.base);
        h.login(ADMIN_TOKEN).await;
        sessions.push(h);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let statuses: Vec<u16> = futures::future::join_all(sessions.iter().map(|h| h.get("")))
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(statuses, [303, 200, 200]);
    // --request-log-size 2: the Requests page holds the last two requests.
    for n in 0..4 {
        s.post("/Users", &json!({"userName": format!("u{n}")})).await;
    }
    let page = sessions[2].get("/requests").await.text().await.unwrap();
    assert_eq!(page.matches("<tr").count() - 1, 2, "two rows under the header");
}

#[tokio::test]
async fn the_console_can_move_or_be_off() {
    let moved = TestServer::start_configured(|c| c.console_path = "/ops/console".into()).await;
    let mut h = Http::new(&moved.base);
    let r = h
        .client
        .post(format!("{}/ops/console/login", moved.base))
        .header("origin", &moved.base)
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/ops/console");
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Path=/ops/console"));
    h.cookie = None;
    assert_eq!(h.client.get(format!("{}/admin", moved.base)).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    let off = TestServer::start_configured(|c| c.no_console = true).await;
    assert_eq!(reqwest::get(format!("{}/admin/login", off.base)).await.unwrap().status(), StatusCode::NOT_FOUND);
    let bad = crate::support::config(std::path::Path::new("/nonexistent"));
    for (path, says) in
        [("/scim", "serves that path already"), ("admin", "look like /admin"), ("/admin/", "look like /admin")]
    {
        let mut cfg = bad.clone();
        cfg.console_path = path.into();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("--console-path") && e.contains(says), "{path}: {e}");
    }
}

/// A session sees the tenants of the admin tokens it signed in with, and no other.
#[tokio::test]
async fn the_tenant_switcher_offers_the_tenants_signed_in_to() {
    use scimlog::auth::{create_token, Role};
    let s = TestServer::start().await;
    let mut admins = Vec::new();
    for tenant in ["acme", "globex"] {
        let scim = create_token(s.data_dir(), &format!("{tenant}-idp"), tenant, Role::Scim).unwrap();
        let r = s
            .send_as(
                &scim,
                reqwest::Method::POST,
                "/Users",
                Some(&json!({"userName": format!("someone@{tenant}.example")})),
                &[],
            )
            .await;
        assert_eq!(r.status, 201);
        admins.push(create_token(s.data_dir(), &format!("{tenant}-admin"), tenant, Role::Admin).unwrap());
    }
    let mut h = Http::new(&s.base);
    let users = |page: String| (page.contains("someone@acme.example"), page.contains("someone@globex.example"));
    h.login(&admins[0]).await;
    assert_eq!(users(h.get("/users").await.text().await.unwrap()), (true, false));
    // Signing in with globex's admin token adds globex to this session, and shows it.
    h.login(&admins[1]).await;
    let page = h.get("/users").await.text().await.unwrap();
    assert_eq!(users(page.clone()), (false, true));
    assert!(
        page.contains("<option value=\"acme\">acme</option>") && page.contains("value=\"globex\" selected"),
        "{page}"
    );
    let csrf = h.csrf().await;
    let own = s.base.clone();
    let r = h.post("/tenant", Some(&own), &[("csrf", &csrf), ("tenant", "acme")]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(users(h.get("/users").await.text().await.unwrap()), (true, false));
    let r = h.post("/tenant", Some(&own), &[("csrf", &csrf), ("tenant", "default")]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no admin token of that tenant was given");
    assert!(r.text().await.unwrap().contains("this session has no admin token of tenant"));
}
