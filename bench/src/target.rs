//! The processes under test, each in its own process so that the memory and CPU figures are
//! theirs: the scimlog binary on a temp data dir (restarted to time start-up), nats-server for the
//! publish scenario, and the trivial handler that gives the HTTP stack's ceiling; and the sink
//! the outbound scenario provisions into (in this process).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

pub const TOKEN: &str = "bench-token";
/// The spawned server's admin token (`--admin-token`), for /healthz's figures.
pub const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sends SIGTERM (the server's graceful stop) and waits for the process to end.
async fn terminate(child: &mut Child) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    }
    tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .context("the process did not stop in 120 s")??;
    Ok(())
}

/// The tenant that floods in the two-tenants scenario.
pub const NOISY_TENANT: &str = "noisy";

/// `scimlog serve` on a temp data dir, with the default (durable: fsync on) settings.
pub struct Scimlog {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    pub url: String,
    /// More `serve` flags (cluster mode's).
    extra: Vec<String>,
}

impl Scimlog {
    /// The `scimlog` binary beside this one (`cargo build --release` puts both in one place).
    pub fn default_bin() -> anyhow::Result<PathBuf> {
        let bin = std::env::current_exe()?.with_file_name("scimlog");
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: build it first (cargo build --release --workspace) or pass --server-bin",
            bin.display()
        );
        Ok(bin)
    }

    /// Starts a server on a new temp data dir; returns once /healthz answers.
    pub async fn start(bin: PathBuf) -> anyhow::Result<Scimlog> {
        Scimlog::start_with(bin, Vec::new()).await
    }

    /// [`Scimlog::start`] with more `serve` flags.
    pub async fn start_with(bin: PathBuf, extra: Vec<String>) -> anyhow::Result<Scimlog> {
        let dir = tempfile::Builder::new().prefix("scimlog-bench-").tempdir()?;
        let port = free_port()?;
        let mut s = Scimlog { bin, dir, port, child: None, url: format!("http://127.0.0.1:{port}"), extra };
        s.spawn(None).await?;
        Ok(s)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs a CLI command of this binary on this server's data dir (`--data-dir` appended).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = std::process::Command::new(&self.bin).args(args).arg("--data-dir").arg(self.dir.path()).output()?;
        anyhow::ensure!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// A new token of `tenant`, made with `scimlog token create` on this server's data dir (the
    /// running server reads it at its next request).
    pub fn create_token(&self, name: &str, tenant: &str) -> anyhow::Result<String> {
        let out = std::process::Command::new(&self.bin)
            .args(["token", "create", "--name", name, "--tenant", tenant, "--data-dir"])
            .arg(self.dir.path())
            .output()?;
        anyhow::ensure!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// SIGKILL, as a crash would.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub fn rss_mb(&self) -> Option<f64> {
        crate::load::rss_mb(self.pid()?)
    }

    /// Starts the process and waits for /healthz; returns how long that took.
    async fn spawn(&mut self, nats_url: Option<&str>) -> anyhow::Result<Duration> {
        let stderr = std::fs::File::create(self.dir.path().with_extension("stderr"))?;
        let mut cmd = Command::new(&self.bin);
        // One token drives the whole load: the per-token rate limit is off, so that what is
        // measured is the server, not the limit.
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{}", self.port), "--token", TOKEN])
            .args(["--admin-token", ADMIN_TOKEN])
            .args(["--rate-limit-per-s", "0"])
            // The two-tenants scenario's noisy tenant keeps a rate, as an operator would give it.
            .args(["--tenant-rate-limit", &format!("{NOISY_TENANT}=1000:2000")])
            // The outbound scenario's target is a SCIM server on loopback (the SSRF guard's
            // default would refuse it).
            .arg("--allow-private-networks")
            .arg("--data-dir")
            .arg(self.dir.path())
            .env("SCIMLOG_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        if let Some(url) = nats_url {
            cmd.args(["--nats-url", url]);
        }
        cmd.args(&self.extra);
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {}", self.bin.display()))?;
        let mut health = crate::client::Conn::new(&self.url, "")?;
        loop {
            if matches!(health.get("/healthz").await, Ok((status, _)) if status.is_success()) {
                break;
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.path().with_extension("stderr")).unwrap_or_default();
                bail!("scimlog exited with {status} before answering:\n{log}");
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "scimlog did not answer within 300 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = started.elapsed();
        self.child = Some(child);
        Ok(took)
    }

    /// Stops the server (SIGTERM: drains, then closes the store) and starts it again on the same
    /// data dir; returns (stop time, start-up time to the first healthy answer).
    pub async fn restart(&mut self, nats_url: Option<&str>) -> anyhow::Result<(Duration, Duration)> {
        let t = Instant::now();
        if let Some(mut child) = self.child.take() {
            terminate(&mut child).await?;
        }
        let stop = t.elapsed();
        let start = self.spawn(nats_url).await?;
        Ok((stop, start))
    }
}

impl Drop for Scimlog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.path().with_extension("stderr"));
    }
}

/// `nats-server -js` on a free loopback port and a temp store dir.
pub struct Nats {
    child: Child,
    _dir: tempfile::TempDir,
    pub url: String,
}

impl Nats {
    pub async fn start() -> anyhow::Result<Nats> {
        let dir = tempfile::Builder::new().prefix("scimlog-bench-nats-").tempdir()?;
        let port = free_port()?;
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("the publish scenario needs nats-server on PATH (apt install nats-server)")?;
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(20), "nats-server did not listen within 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Nats { child, _dir: dir, url: format!("nats://127.0.0.1:{port}") })
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        terminate(&mut self.child).await
    }
}

/// The trivial handler, as a child process running this binary with `--serve-trivial`.
pub struct Trivial {
    _child: Child,
    pub url: String,
    pub pid: u32,
}

impl Trivial {
    pub async fn start() -> anyhow::Result<Trivial> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--serve-trivial")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let line = tokio::io::BufReader::new(stdout).lines().next_line().await?.context("no address printed")?;
        let pid = child.id().context("pid")?;
        Ok(Trivial { _child: child, url: format!("http://{}", line.trim()), pid })
    }
}

/// The body of the `--serve-trivial` process: an axum router with one handler answering "ok",
/// on a runtime shaped like the server's (tokio's multi-threaded default).
pub fn serve_trivial() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        Ok(())
    })
}

/// A 3-node JetStream cluster (`sync_interval: always`) on loopback, of a recent nats-server
/// (`--nats-server-recent`; `./scripts/setup --test` installs 2.15.1 in the venv). Killed on drop.
pub struct NatsCluster {
    _children: Vec<Child>,
    _dir: tempfile::TempDir,
    pub urls: Vec<String>,
}

impl NatsCluster {
    pub async fn start(binary: &std::path::Path) -> anyhow::Result<NatsCluster> {
        let dir = tempfile::Builder::new().prefix("scimlog-bench-cluster-").tempdir()?;
        let routes = [free_port()?, free_port()?, free_port()?];
        let route_list: Vec<String> = routes.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect();
        let (mut children, mut urls) = (Vec::new(), Vec::new());
        for (i, route) in routes.iter().enumerate() {
            let port = free_port()?;
            let config = dir.path().join(format!("n{i}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{port}\n\
                     jetstream {{ store_dir: \"{}\", sync_interval: always }}\n\
                     cluster {{ name: bench, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
                    dir.path().join(format!("s{i}")).display(),
                    route_list.join(", ")
                ),
            )?;
            let child = Command::new(binary)
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("{} (a recent nats-server: ./scripts/setup --test)", binary.display()))?;
            children.push(child);
            urls.push(format!("nats://127.0.0.1:{port}"));
        }
        // Formed when it places a 3-replica stream (a meta leader alone may not know its peers).
        let started = Instant::now();
        let probe = async_nats::jetstream::stream::Config {
            name: "BENCH_PROBE".into(),
            subjects: vec!["bench.probe".into()],
            num_replicas: 3,
            ..Default::default()
        };
        loop {
            if let Ok(c) = async_nats::connect(urls.clone()).await {
                let js = async_nats::jetstream::new(c);
                if js.create_stream(probe.clone()).await.is_ok() && js.delete_stream("BENCH_PROBE").await.is_ok() {
                    break;
                }
            }
            anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "the NATS cluster did not form within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(NatsCluster { _children: children, _dir: dir, urls })
    }
}

/// A SCIM target that takes everything (in this process, on loopback): what the outbound
/// scenario measures is the connector, not a downstream server. It answers as a SCIM server with
/// PATCH and filters would, and records when each user's create arrived, by externalId.
pub struct Sink {
    pub url: String,
    pub arrivals: Arc<Mutex<HashMap<String, Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    pub async fn start() -> anyhow::Result<Sink> {
        use axum::routing::{get, post};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let created = {
            let (arrivals, next) = (arrivals.clone(), next.clone());
            move |body: axum::body::Bytes| {
                let (arrivals, next) = (arrivals.clone(), next.clone());
                async move {
                    let at = Instant::now();
                    let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    if let Some(ext) = v.get("externalId").and_then(|e| e.as_str()) {
                        arrivals.lock().unwrap().insert(ext.to_string(), at);
                    }
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    v["id"] = serde_json::Value::String(format!("r{n}"));
                    (axum::http::StatusCode::CREATED, v.to_string())
                }
            }
        };
        let spc = r#"{"patch":{"supported":true},"filter":{"supported":true,"maxResults":100}}"#;
        let app = axum::Router::new()
            .route("/ServiceProviderConfig", get(move || async move { spc }))
            .route("/Users", post(created.clone()).get(|| async { r#"{"Resources":[]}"# }))
            .route("/Groups", post(created).get(|| async { r#"{"Resources":[]}"# }))
            .fallback(|| async { axum::http::StatusCode::NO_CONTENT });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Sink { url, arrivals, task })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
