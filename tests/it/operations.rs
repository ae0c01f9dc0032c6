//! Operations: the Prometheus scrape after a scripted workload, and the probes.

use reqwest::Method;
use serde_json::json;

use crate::support::{q, TestServer};

/// The value of the series `name` whose labels include every pair of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, v) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        let all = labels.iter().all(|(k, want)| rest.contains(&format!("{k}=\"{want}\"")));
        (n == name && all).then(|| v.parse().ok()).flatten()
    })
}

/// A scripted workload (creates, a duplicate, a bad filter, a bad token, a token of the wrong
/// role), then a scrape: each series says what happened, and no id, userName or path is in it.
#[tokio::test]
async fn metrics_count_a_scripted_workload() {
    let s = TestServer::start_configured(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let mut ids = Vec::new();
    for n in ["metrics.one@example.com", "metrics.two@example.com", "metrics.three@example.com"] {
        ids.push(s.post("/Users", &json!({"userName": n})).await.id());
    }
    s.post("/Users", &json!({"userName": "metrics.one@example.com"})).await.assert_error(
        409,
        Some("uniqueness"),
        "taken",
    );
    s.get(&format!("/Users?filter={}", q("active gt true"))).await.assert_error(400, Some("invalidFilter"), "active");
    s.post("/Groups", &json!({"displayName": "Metrics", "members": [{"value": ids[0]}, {"value": ids[1]}]})).await;
    let bad = s.send_as("not-a-token", Method::GET, "/Users", None, &[]).await;
    assert_eq!(bad.status, 401);
    let hosts = s.new_token(scimlog::auth::Role::Hosts);
    assert_eq!(s.send_as(&hosts, Method::GET, "/Users", None, &[]).await.status, 403);
    // A method is any token a client likes; as a label, one HTTP does not define is `other`.
    for made_up in ["BREW", "XMETHOD"] {
        let method = Method::from_bytes(made_up.as_bytes()).unwrap();
        assert_eq!(s.send_as(&s.token, method, "/Users", None, &[]).await.status, 405);
    }

    // On the main listener: admins only.
    let scim_scrape = s.client.get(format!("{}/metrics", s.base)).bearer_auth(&s.token).send().await.unwrap();
    assert_eq!(scim_scrape.status(), 403);
    let admin = s.new_token(scimlog::auth::Role::Admin);
    let r = s.client.get(format!("{}/metrics", s.base)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    // Apart, without a token.
    let apart = format!("http://{}/metrics", s.metrics_addr().expect("--metrics-listen bound"));
    let text = s.client.get(apart).send().await.unwrap().text().await.unwrap();

    let scim = |op: &str, outcome: &str, scim_type: &str| {
        value(
            &text,
            "scimlog_scim_requests_total",
            &[
                ("token", "bootstrap"),
                ("resource", "Users"),
                ("op", op),
                ("outcome", outcome),
                ("scim_type", scim_type),
            ],
        )
    };
    assert_eq!(scim("create", "success", ""), Some(3.0), "{text}");
    assert_eq!(scim("create", "client_error", "uniqueness"), Some(1.0));
    assert_eq!(scim("list", "client_error", "invalidFilter"), Some(1.0));
    assert_eq!(value(&text, "scimlog_auth_failures_total", &[("reason", "invalid")]), Some(1.0));
    assert_eq!(
        value(&text, "scimlog_auth_failures_total", &[("reason", "forbidden")]),
        Some(2.0),
        "hosts on /scim, scim on /metrics"
    );
    assert_eq!(value(&text, "scimlog_events_written_total", &[("type", "user.created")]), Some(3.0));
    assert_eq!(value(&text, "scimlog_events_written_total", &[("type", "group.member_added")]), Some(2.0));
    let head = s.log_position().await as f64;
    assert_eq!(value(&text, "scimlog_log_head_position", &[]), Some(head));
    let created =
        [("http_request_method", "POST"), ("http_route", "/scim/v2/Users"), ("http_response_status_code", "201")];
    assert_eq!(value(&text, "http_server_request_duration_seconds_count", &created), Some(3.0));
    let made_up =
        [("http_request_method", "other"), ("http_route", "/scim/v2/Users"), ("http_response_status_code", "405")];
    assert_eq!(value(&text, "http_server_request_duration_seconds_count", &made_up), Some(2.0), "{text}");
    assert!(!text.contains("BREW") && !text.contains("XMETHOD"), "a made-up method is not a label value");
    assert!(value(&text, "scimlog_log_commit_batch_commands_count", &[]).unwrap() >= 5.0);
    assert!(value(&text, "scimlog_log_write_duration_seconds_count", &[]).unwrap() >= 4.0);
    assert_eq!(value(&text, "scimlog_write_queue_depth", &[]), Some(0.0));
    assert!(value(&text, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(value(&text, "process_open_fds", &[]).unwrap() > 3.0);
    assert!(value(&text, "scimlog_rocksdb_live_data_bytes", &[]).is_some());
    assert_eq!(value(&text, "scimlog_rocksdb_background_errors", &[]), Some(0.0));
    assert!(text.contains(&format!("scimlog_build_info{{version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{text}");
    for secret in ids.iter().map(String::as_str).chain(["metrics.one", &s.token, &admin]) {
        assert!(!text.contains(secret), "{secret} must not be in the metrics");
    }
    s.stop().await;
}

/// `/livez` answers while serving; `/readyz` answers 200 when the server can take traffic, and
/// 503 as soon as stopping begins, while the shutdown delay keeps serving (`/livez` stays 200).
#[tokio::test]
async fn liveness_and_readiness() {
    let s = TestServer::start_configured(|c| c.shutdown_delay_ms = 3000).await;
    let probe = |name: &str| {
        let (client, url) = (s.client.clone(), format!("{}/{name}", s.base));
        async move { client.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    };
    assert_eq!(probe("livez").await, 200);
    assert_eq!(probe("readyz").await, 200);
    let (livez, readyz) = (probe("livez"), probe("readyz"));
    let stopping = tokio::spawn(s.stop());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(readyz.await, 503, "unready once stopping begins");
    assert_eq!(livez.await, 200, "still serving during the shutdown delay");
    stopping.await.unwrap();
}

/// The C allocator's free pages are handed back every `--malloc-trim-interval-ms`, and each
/// hand-back shows in `/metrics`; 0 turns it off; an interval outside its bounds is refused at
/// start, naming the flag.
#[tokio::test]
async fn the_allocator_is_trimmed_on_its_interval_and_each_trim_is_counted() {
    let trims = |text: &str| {
        let line = text.lines().find_map(|l| l.strip_prefix("scimlog_malloc_trim_duration_seconds_count "));
        line.and_then(|v| v.trim().parse::<u64>().ok()).expect("the trims' histogram in /metrics")
    };
    let s = TestServer::start_configured(|c| c.malloc_trim_interval_ms = 100).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = s.metrics_text().await;
        if trims(&text) >= 3 {
            assert!(text.contains("\nscimlog_malloc_trimmed_bytes_total "), "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "fewer than 3 trims in 20 s at 100 ms: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let off = TestServer::start_configured(|c| c.malloc_trim_interval_ms = 0).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(trims(&off.metrics_text().await), 0, "0: never trimmed");

    let base = crate::support::config(std::path::Path::new("/nonexistent"));
    for (ms, accepted) in [(0, true), (99, false), (100, true), (3_600_000, true), (3_600_001, false)] {
        let mut cfg = base.clone();
        cfg.malloc_trim_interval_ms = ms;
        match cfg.validate() {
            Ok(()) => assert!(accepted, "{ms} ms was accepted"),
            Err(e) => {
                let e = e.to_string();
                assert!(
                    !accepted && e.contains("--malloc-trim-interval-ms") && e.contains(&ms.to_string()),
                    "{ms}: {e}"
                );
            }
        }
    }
}

/// `scimlog healthcheck --url` (a container's HEALTHCHECK) exits 0 against a ready server and
/// fails against nothing; `--version` names the git revision.
#[tokio::test]
async fn healthcheck_subcommand_and_version() {
    let s = TestServer::start().await;
    let bin = env!("CARGO_BIN_EXE_scimlog");
    let ok = tokio::process::Command::new(bin).args(["healthcheck", "--url", &s.base]).output().await.unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{closed}");
    let down = tokio::process::Command::new(bin).args(["healthcheck", "--url", &url]).output().await.unwrap();
    assert!(!down.status.success());
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("cannot connect"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let version = tokio::process::Command::new(bin).arg("--version").output().await.unwrap();
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(text.contains(&format!("{} ({})", env!("CARGO_PKG_VERSION"), scimlog::GIT_SHA)), "{text}");
    s.stop().await;
}

/// Nothing a user sees points nowhere: `documentationUri` is this server's `/docs` (the README),
/// or what `--documentation-url` says.
#[tokio::test]
async fn documentation_uri_points_at_a_page_that_answers() {
    let s = TestServer::start().await;
    let spc = s.get("/ServiceProviderConfig").await.body;
    let uri = spc["documentationUri"].as_str().unwrap().to_string();
    assert_eq!(uri, format!("{}/docs", s.base));
    let page = s.client.get(&uri).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().starts_with("# scimlog"));
    s.stop().await;
    let s = TestServer::start_configured(|c| c.documentation_url = Some("https://idp-docs.example/scim".into())).await;
    assert_eq!(s.get("/ServiceProviderConfig").await.body["documentationUri"], "https://idp-docs.example/scim");
    s.stop().await;
}

/// One access log line per request (JSON logs): the route template, status, latency, request
/// id, token name, tenant and scimType; never the path, the query, the token or a userName.
#[tokio::test]
async fn one_access_log_line_per_request_without_personal_values() {
    let tmp = tempfile::tempdir().unwrap();
    let log_path = tmp.path().join("stderr.log");
    let token = "access-log-token-0123456789";
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_scimlog"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--token", token, "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("SCIMLOG_LOG_FORMAT", "json")
        .env("SCIMLOG_LOG", "info");
    let (mut child, base) = crate::support::serving(cmd, Some(&log_path)).await;
    let client = reqwest::Client::new();
    let users = format!("{base}/scim/v2/Users");
    let body = json!({"userName": "secret.person@example.com"});
    let created: serde_json::Value =
        client.post(&users).bearer_auth(token).json(&body).send().await.unwrap().json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    client.get(format!("{users}/{id}")).bearer_auth(token).send().await.unwrap();
    client.post(&users).bearer_auth(token).json(&body).send().await.unwrap();
    let filter = q("userName eq \"secret.person@example.com\"");
    client.get(format!("{users}?filter={filter}")).bearer_auth(token).send().await.unwrap();
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();

    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "scimlog::access")
        .collect();
    let routes: Vec<(&str, u64, &str)> = lines
        .iter()
        .map(|l| {
            let f = &l["fields"];
            (f["route"].as_str().unwrap(), f["status"].as_u64().unwrap(), f["scim_type"].as_str().unwrap())
        })
        .filter(|(r, _, _)| r.starts_with("/scim"))
        .collect();
    assert_eq!(
        routes,
        [
            ("/scim/v2/Users", 201, ""),
            ("/scim/v2/Users/{id}", 200, ""),
            ("/scim/v2/Users", 409, "uniqueness"),
            ("/scim/v2/Users", 200, ""),
        ],
        "{log}"
    );
    let scim_line = lines.iter().find(|l| l["fields"]["route"] == "/scim/v2/Users").unwrap();
    assert_eq!(scim_line["fields"]["token"], "bootstrap");
    assert_eq!(scim_line["fields"]["tenant"], "default");
    assert!(scim_line["fields"]["request_id"].as_str().is_some_and(|r| r.len() == 36));
    assert!(scim_line["fields"]["micros"].as_u64().is_some());
    for secret in ["secret.person", id.as_str(), token] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
}

/// `--config scimlog.toml`: defaults < file < environment < flags; unknown keys and secrets in
/// the file are errors naming them; `config show` says where each value came from, secrets
/// redacted; `serve` runs on what the file says.
#[tokio::test]
async fn config_file_precedence_and_show() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_scimlog");
    let file = tmp.path().join("scimlog.toml");
    std::fs::write(
        &file,
        "max_scan = 123\ntenant = \"from-file\"\nrate-limit-per-s = 0\nadvertise_roles_entitlements = false\n\
         tenant_rate_limit = [\"a=1:2\", \"b=3:4\"]\ninsecure_no_auth = true\n",
    )
    .unwrap();
    let show = std::process::Command::new(bin)
        .args(["config", "show", "--config"])
        .arg(&file)
        .args(["--max-scan", "456", "--token", "very-secret-token-value"])
        .env("SCIMLOG_TENANT", "from-env")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{}", String::from_utf8_lossy(&show.stderr));
    for line in [
        "max_scan = 456  # command line",
        "tenant = \"from-env\"  # environment",
        "rate_limit_per_s = 0  # config file",
        "advertise_roles_entitlements = false  # config file",
        "tenant_rate_limits = [\"a=1:2\", \"b=3:4\"]  # config file",
        "insecure_no_auth = true  # config file",
        "bootstrap_token = \"[redacted]\"  # command line",
        "listen = \"127.0.0.1:8080\"  # default",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
    }
    assert!(!text.contains("very-secret-token-value"));

    for (content, want) in [
        ("max_scna = 1\n", "unknown key \"max_scna\""),
        ("token = \"x\"\n", "\"token\" is a secret"),
        ("max_scan = \"many\"\n", "many"),
    ] {
        std::fs::write(&file, content).unwrap();
        let out = std::process::Command::new(bin).args(["config", "show", "--config"]).arg(&file).output().unwrap();
        assert!(!out.status.success(), "{content}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{content}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // serve on what the file says.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\ninsecure_no_auth = true\ndocumentation_url = \"https://docs.example/x\"\n",
            tmp.path().join("data")
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(bin)
        .args(["serve", "--config"])
        .arg(&file)
        .env("SCIMLOG_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let spc_url = format!("http://127.0.0.1:{port}/scim/v2/ServiceProviderConfig");
    crate::support::eventually(20, "the server from the file answers", || {
        let (client, url) = (client.clone(), spc_url.clone());
        async move {
            match client.get(url).send().await {
                Ok(r) => {
                    r.json::<serde_json::Value>().await.is_ok_and(|v| v["documentationUri"] == "https://docs.example/x")
                }
                Err(_) => false,
            }
        }
    })
    .await;
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

/// `scimlog completions bash|zsh|fish` and `scimlog man` render, naming the subcommands.
#[test]
fn completions_and_man_page_render() {
    let bin = env!("CARGO_BIN_EXE_scimlog");
    for (args, want) in [
        (vec!["completions", "bash"], "complete -F _scimlog"),
        (vec!["completions", "zsh"], "#compdef scimlog"),
        (vec!["completions", "fish"], "complete -c scimlog"),
        (vec!["man"], ".TH scimlog"),
    ] {
        let out = std::process::Command::new(bin).args(&args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}");
        assert!(text.contains(want), "{args:?}: {}", &text[..text.len().min(300)]);
        assert!(text.contains("healthcheck"), "{args:?} names the subcommands");
    }
}

/// The systemd unit passes `systemd-analyze verify` (with ExecStart pointed at the binary under
/// test); it runs as its own user, with only its state directory writable.
#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(format!("{}/contrib/scimlog.service", crate::support::manifest_dir())).unwrap();
    for directive in [
        "User=scimlog",
        "StateDirectory=scimlog",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LimitNOFILE=65536",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l == directive), "{directive}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("scimlog.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/scimlog", env!("CARGO_BIN_EXE_scimlog"))).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is installed (./scripts/setup --test installs systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
}

/// The Dockerfile (the CI machine cannot pull base images, so its text is what is checked): a
/// non-root user, the data volume, the master key mounted apart from it, the health check through
/// `scimlog healthcheck` on the port it listens on.
#[test]
fn dockerfile_runs_unprivileged_with_key_apart_and_a_health_check() {
    let text = std::fs::read_to_string(format!("{}/Dockerfile", crate::support::manifest_dir())).unwrap();
    let line =
        |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}")).to_string();
    assert_eq!(line("USER "), "USER scimlog");
    assert_eq!(line("VOLUME "), "VOLUME [\"/data\"]");
    assert_eq!(line("EXPOSE "), "EXPOSE 8080");
    assert!(text.contains("SCIMLOG_LISTEN=0.0.0.0:8080"));
    assert!(text.contains("SCIMLOG_DATA_DIR=/data"));
    let key = text.split("SCIMLOG_MASTER_KEY_FILE=").nth(1).unwrap().split_whitespace().next().unwrap();
    assert!(!key.starts_with("/data"), "the master key lives apart from the data volume: {key}");
    assert!(text.contains("CMD [\"/usr/local/bin/scimlog\", \"healthcheck\", \"--url\", \"http://127.0.0.1:8080\"]"));
    assert!(text.contains("FROM debian:bookworm-slim") && text.contains("libstdc++6"));
}

/// `audit verify` and `audit export` show a progress bar (position/total, events/s, ETA) on a
/// terminal's stderr, and none when stderr is not a terminal or with `--quiet`.
#[tokio::test]
async fn progress_bars_on_a_terminal_only() {
    let s = TestServer::start().await;
    for i in 0..20 {
        s.post("/Users", &json!({"userName": format!("progress{i}")})).await;
    }
    let head = s.log_position().await;
    let tmp = s.stop_keeping_data().await.expect("the data dir");
    let dir = tmp.path().to_str().unwrap().to_string();
    let bin = env!("CARGO_BIN_EXE_scimlog");
    // `script` (util-linux) runs the command on a pseudo-terminal.
    let on_terminal = |args: &str| {
        let out = std::process::Command::new("script")
            .args(["-qec", &format!("{bin} {args}"), "/dev/null"])
            .output()
            .expect("script (util-linux) is installed");
        assert!(out.status.success(), "{args}: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = on_terminal(&format!("audit verify --data-dir {dir}"));
    assert!(shown.contains(&format!("verifying [")) && shown.contains(&format!("{head}/{head} events")), "{shown}");
    let shown = on_terminal(&format!("audit export --sealed --data-dir {dir} > /dev/null"));
    assert!(shown.contains("exporting ["), "{shown}");
    let quiet = on_terminal(&format!("audit verify --quiet --data-dir {dir}"));
    assert!(!quiet.contains("verifying"), "{quiet}");
    let piped = std::process::Command::new(bin).args(["audit", "verify", "--data-dir", &dir]).output().unwrap();
    assert!(piped.status.success());
    assert!(!String::from_utf8_lossy(&piped.stderr).contains("verifying"));
}

/// `scimlog replay` as an operator runs it: `--verify` beside the data, in batches as small as
/// asked, then `--rebuild` in place; a batch size of 0 is refused and names the flag.
#[tokio::test]
async fn replay_verifies_and_rebuilds_from_the_command_line() {
    let s = TestServer::start().await;
    let uid = s.post("/Users", &json!({"userName": "replayed", "emails": [{"value": "r@x.org"}]})).await.id();
    s.post("/Groups", &json!({"displayName": "Replayed", "members": [{"value": uid}]})).await;
    s.delete(&format!("/Users/{uid}")).await;
    let head = s.log_position().await;
    let tmp = s.stop_keeping_data().await.expect("the data dir");
    let dir = tmp.path().to_str().unwrap().to_string();
    let bin = env!("CARGO_BIN_EXE_scimlog");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let verified = run(&["replay", "--verify", "--batch-writes", "3", "-q", "--data-dir", &dir]);
    let out = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{out} {}", String::from_utf8_lossy(&verified.stderr));
    assert_eq!(out.trim(), format!("ok: the read models rebuilt from {head} events equal the live ones"));
    let rebuilt = run(&["replay", "--rebuild", "-q", "--data-dir", &dir]);
    assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));
    assert!(run(&["replay", "--verify", "-q", "--data-dir", &dir]).status.success());
    let zero = run(&["replay", "--verify", "--batch-writes", "0", "--data-dir", &dir]);
    assert!(!zero.status.success());
    let err = String::from_utf8_lossy(&zero.stderr);
    assert!(err.contains("--batch-writes") && err.contains('0'), "{err}");
    let left: Vec<String> =
        std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
    assert!(!left.iter().any(|n| n.contains("rebuild")), "no scratch store left behind: {left:?}");
    // What a replay killed before it locked its scratch store leaves is removed at the next start.
    let killed = tmp.path().join(".scimlog-rebuild-x1y2z3");
    std::fs::create_dir_all(killed.join("db")).unwrap();
    let mut s = TestServer::start_with(crate::support::config(tmp.path())).await;
    s.adopt_dir(tmp);
    assert!(!killed.exists(), "the server removed the abandoned scratch store at start");
    s.stop().await;
}

/// `/healthz` says only its status to anyone; its figures (across tenants) need an admin token:
/// a `scim` token is refused, a wrong one too.
#[tokio::test]
async fn healthz_details_need_an_admin_token() {
    let s = TestServer::start().await;
    s.post("/Users", &json!({"userName": "health.check"})).await;
    let get = |token: Option<String>| {
        let mut req = s.client.get(format!("{}/healthz", s.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { crate::support::read(req.send().await.unwrap()).await }
    };
    let open = get(None).await;
    assert_eq!((open.status.as_u16(), open.body.clone()), (200, json!({"status": "ok"})));
    assert_eq!(get(Some(s.token.clone())).await.status, 403);
    assert_eq!(get(Some("wrong-token-0123456789".into())).await.status, 401);
    let admin = get(Some(s.admin_token())).await.body;
    assert_eq!(admin["status"], "ok");
    assert_eq!(admin["logPosition"], 1);
    assert!(admin["store"]["memtableBytes"].is_u64());
    s.stop().await;
}
