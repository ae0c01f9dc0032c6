//! Starting and stopping the service: open the store, start the writer, bind, serve, and on
//! shutdown drain in-flight requests and the write queue before the store closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::auth::{create_token, valid_tenant, Principal, Role, TokenStore};
use crate::config::ServeConfig;
use crate::http::{self, AppState, Inner};
use crate::log::keys::KeyRing;
use crate::log::{writer, Store};

/// How long outbound outcomes still queued at shutdown may take to reach NATS.
const OUTCOMES_FLUSH: Duration = Duration::from_secs(2);

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    /// Where `/metrics` is served apart (`--metrics-listen`), once bound.
    pub metrics_addr: Option<SocketAddr>,
    /// Storage fault injection, for tests.
    pub faults: crate::log::FaultInjector,
    /// The open store (tests hold a reader on it across a write).
    pub store: Store,
    /// The token created on this first start, if one was (shown once).
    pub created_token: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// Set when stopping begins: `/readyz` answers 503 from then on.
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// How long to keep serving, unready, before refusing new connections.
    shutdown_delay: Duration,
}

impl Server {
    /// Opens everything and starts serving; returns once the listener is bound.
    pub async fn start(cfg: ServeConfig) -> anyhow::Result<Server> {
        anyhow::ensure!(valid_tenant(&cfg.tenant), "invalid --tenant {:?}: use a-z, 0-9, '-' and '_'", cfg.tenant);
        cfg.validate()?;
        // The store holds plaintext read models, the token file and (by default) the master key:
        // everything this process creates is for its owner alone.
        crate::files::restrict_umask();
        crate::files::create_private_dir(&cfg.data_dir)
            .with_context(|| format!("cannot create the data dir {}", cfg.data_dir.display()))?;
        warn_about_files(&cfg);
        let mut cfg = cfg;
        if let Some(path) = cfg.token_file.clone() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read --token-file {}", path.display()))?;
            let token = text.trim();
            anyhow::ensure!(
                token.len() >= 16,
                "--token-file {} holds no token of 16 or more characters",
                path.display()
            );
            cfg.bootstrap_token = Some(token.to_string());
        }
        if let Some(path) = cfg.admin_token_file.clone() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read --admin-token-file {}", path.display()))?;
            cfg.admin_token = Some(text.trim().to_string());
        }
        if let Some(t) = &cfg.admin_token {
            anyhow::ensure!(t.len() >= 16, "the admin token (--admin-token or its file) needs 16 or more characters");
        }
        // A bad SET signing key stops the start before anything runs.
        let signer = crate::sets::Signer::open(&cfg.data_dir, cfg.set_signing_key_file.as_deref())?;
        // Bound before anything else starts: in cluster mode the lease carries this node's URL.
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        cfg.listen = addr;
        // A new cluster node (no store yet) starts from the newest usable snapshot, if any.
        let cluster = match cfg.cluster.cluster {
            true => Some(start_cluster_link(&cfg).await?),
            false => None,
        };
        let restored = match &cluster {
            Some((_, link)) => crate::cluster::snapshot::restore(&cfg.data_dir, link).await?,
            None => None,
        };
        if let (Some((state, _)), Some(snapshot)) = (&cluster, restored) {
            state.set_started_from(snapshot);
        }
        let store = Store::open_with(&cfg.data_dir, &cfg.store_memory())?;
        let faults = store.faults();
        let server_store = store.clone();
        let keys = Arc::new(KeyRing::open(store.clone(), &cfg.master_key_source(), &cfg.data_dir)?);
        crate::audit::rebuild_if_stale(&store, keys.as_ref())?;
        crate::audit::remove_abandoned_scratch(&cfg.data_dir);

        let (tokens, created_token) = if cfg.insecure_no_auth {
            tracing::warn!("serving WITHOUT authentication (--insecure-no-auth)");
            (None, None)
        } else {
            let principal = |name: &str, role| Principal { name: name.into(), tenant: cfg.tenant.clone(), role };
            let bootstrap: Vec<(String, Principal)> = [
                cfg.bootstrap_token.clone().map(|t| (t, principal("bootstrap", Role::Scim))),
                cfg.admin_token.clone().map(|t| (t, principal("bootstrap-admin", Role::Admin))),
            ]
            .into_iter()
            .flatten()
            .collect();
            let tokens = TokenStore::open(&cfg.data_dir, bootstrap)?;
            let created = if tokens.is_empty() {
                let token = create_token(&cfg.data_dir, "default", &cfg.tenant, Role::Scim)?;
                let path = initial_token_path(&cfg.data_dir);
                crate::files::replace_private(&path, format!("{token}\n").as_bytes())
                    .with_context(|| format!("cannot write the first token to {}", path.display()))?;
                Some(token)
            } else {
                None
            };
            (Some(tokens), created)
        };

        let metrics = crate::metrics::Metrics::new();
        let (shutdown_bus, bus_shutdown) = tokio::sync::watch::channel(false);
        let bus_shutdown_for_tokens = bus_shutdown.clone();
        let bus_shutdown_for_metrics = bus_shutdown.clone();
        let bus_shutdown_for_trims = bus_shutdown.clone();
        let cfg_metrics_listen = cfg.metrics_listen;
        let trim_interval = Duration::from_millis(cfg.malloc_trim_interval_ms);
        let (writer, writer_thread) = writer::start(
            store.clone(),
            keys.clone(),
            writer::WriterOptions {
                queue_depth: cfg.write_queue_depth,
                queue_per_tenant: cfg.write_queue_per_tenant,
                group_commit_max: cfg.group_commit_max,
                sync: true,
                namespace: cfg.urn_namespace.clone(),
                default_organization: cfg.default_organization.clone(),
                limits: cfg.write_limits(),
                metrics: metrics.clone(),
                copy: cfg.runner.is_some(),
                replication: cluster.as_ref().map(|(state, link)| {
                    Arc::new(crate::cluster::NatsReplication {
                        state: state.clone(),
                        link: link.clone(),
                        runtime: tokio::runtime::Handle::current(),
                        append_timeout: Duration::from_millis(cfg.cluster.append_timeout_ms),
                    }) as Arc<dyn writer::Replication>
                }),
            },
        )?;
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => Some(http::serve::tls_acceptor(cert, key)?),
            _ => None,
        };
        let scim_base = format!("{}/scim/v2", cfg.base_url());
        let drain = Duration::from_millis(cfg.drain_timeout_ms);
        let serve_options = http::serve::ServeOptions {
            tls,
            max_connections: cfg.max_connections,
            header_read_timeout: Duration::from_millis(cfg.header_read_timeout_ms),
            drain,
        };
        // An outbound runner copies a directory's stream; it never publishes into it.
        let (publisher, publisher_task) = match &cfg.nats.nats_url {
            Some(_) if cfg.runner.is_none() => {
                let (status, task) = crate::bus::start(
                    cfg.nats.clone(),
                    store.clone(),
                    keys.clone(),
                    writer.committed(),
                    bus_shutdown.clone(),
                    cluster.as_ref().map(|(state, _)| state.leading()),
                    metrics.clone(),
                );
                (Some(status), Some(task))
            }
            _ => (None, None),
        };
        let copy = cfg.runner.as_ref().map(|target| {
            let status = Arc::new(crate::bus::copy::CopyStatus::new(crate::bus::copy::consumer_name(target)));
            let copy = crate::bus::copy::Copier {
                cfg: cfg.nats.clone(),
                store: store.clone(),
                writer: writer.downgrade(),
                status: status.clone(),
                batch_max: cfg.cluster.apply_batch_max,
            };
            (status, tokio::spawn(crate::bus::copy::run(copy, bus_shutdown.clone())))
        });
        let (copy, copy_task) = copy.unzip();
        let role_task = cluster.as_ref().map(|(state, link)| {
            let node = crate::cluster::Node {
                state: state.clone(),
                link: link.clone(),
                writer: writer.downgrade(),
                store: store.clone(),
                keys: keys.clone(),
                lease_ttl: Duration::from_millis(cfg.cluster.lease_ttl_ms),
                apply_batch_max: cfg.cluster.apply_batch_max,
                data_dir: cfg.data_dir.clone(),
                snapshot_interval: (cfg.cluster.snapshot_interval_s > 0)
                    .then(|| Duration::from_secs(cfg.cluster.snapshot_interval_s)),
                snapshot_min_events: cfg.cluster.snapshot_min_events,
            };
            tokio::spawn(crate::cluster::run(node, bus_shutdown.clone()))
        });
        // Outbound provisioning: one connector per target of the targets file. In cluster mode
        // a node runs the targets named to it (`node`), leader or not: each target's state is
        // then always the one node's that sends for it.
        let (outcomes, outcomes_task) =
            crate::outbound::outcomes::start(Some(cfg.nats.clone()), metrics.clone(), bus_shutdown.clone());
        let (outbound, outbound_task) = crate::outbound::start(crate::outbound::Context {
            outcomes,
            store: store.clone(),
            targets_file: cfg.outbound_path(),
            committed: writer.committed(),
            shutdown: bus_shutdown.clone(),
            metrics: metrics.clone(),
            allow_private_networks: cfg.allow_private_networks,
            placement: match (&cfg.runner, cluster.as_ref().and(cfg.cluster.node_id.as_ref())) {
                (Some(target), _) => crate::outbound::Placement::Runner(target.clone()),
                (None, Some(node)) => crate::outbound::Placement::Node(node.clone()),
                (None, None) => crate::outbound::Placement::All,
            },
        });
        // The outcomes the connectors queued last get a moment to reach NATS.
        let outbound_task = tokio::spawn(async move {
            let _ = outbound_task.await;
            if let Some(t) = outcomes_task {
                let _ = tokio::time::timeout(OUTCOMES_FLUSH, t).await;
            }
        });
        let outbound_task = Some(outbound_task);
        let writer_thread = std::sync::Mutex::new(Some(writer_thread));
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shutdown_delay = Duration::from_millis(cfg.shutdown_delay_ms);
        let (request_log_size, console) = (cfg.request_log_size, http::console::ConsoleState::new(&cfg));
        let set_flags = crate::sets::config::from_flags(&cfg.set_stream, &cfg.set_push, &cfg.data_dir);
        let set_streams = Arc::new(crate::sets::run::Streams::new(&set_flags, &cfg.set_streams_path(), &cfg.data_dir));
        // What the streams' receivers acknowledged: this node's store, or in cluster mode the
        // replicated bucket (a new leader goes on where the last one's receivers were).
        let acks = match &cluster {
            Some((_, link)) => crate::sets::streams::AckStore::replicated(link.set_acks.clone()),
            None => crate::sets::streams::AckStore::Local(store.outbound()),
        };
        let signer = Arc::new(signer);
        let deliver = crate::sets::deliver::Deliverer {
            store: store.clone(),
            keys: keys.clone(),
            signer: signer.clone(),
            iss: scim_base.clone(),
            max_scan: cfg.max_scan,
            max_ahead: cfg.set_max_acked_ahead,
            acks,
        };
        let sets = http::sets::SetState {
            signer,
            deliver: deliver.clone(),
            streams: set_streams.clone(),
            lock: tokio::sync::Mutex::new(()),
        };
        let groups = crate::access_cache::GroupCache::new(cfg.access_cache_groups, cfg.max_scan);
        let state = AppState::new(Inner {
            reads: tokio::sync::Semaphore::new(cfg.max_concurrent_reads),
            rates: http::rate::RateLimits::new(
                http::rate::Rate { per_s: cfg.rate_limit_per_s, burst: cfg.rate_limit_burst },
                &cfg.tenant_rate_limits,
            ),
            store,
            keys,
            publisher,
            writer,
            writer_thread,
            tokens,
            cfg,
            scim_base,
            page_hints: Default::default(),
            metrics,
            draining: draining.clone(),
            cluster: cluster.map(|(state, _)| state),
            groups,
            copy,
            outbound,
            requests: crate::request_log::RequestLog::new(request_log_size),
            console,
            sets,
        });
        // Token changes made while the server was down, then every second (requests that meet a
        // changed file record it themselves, before they go on).
        http::reconcile_tokens(&state).await;
        // The SET streams file, read again when it changes; one task per push stream (on the
        // leader only, in cluster mode), stopped with the rest.
        let sets_task = crate::sets::run::start(
            crate::sets::run::Context {
                file: state.cfg.set_streams_path(),
                data_dir: state.cfg.data_dir.clone(),
                flags: set_flags,
                worker: crate::sets::push::Worker {
                    deliver,
                    allow_private_networks: state.cfg.allow_private_networks,
                    committed: state.writer.committed(),
                    shutdown: bus_shutdown_for_tokens.clone(),
                },
                shutdown: bus_shutdown_for_tokens.clone(),
                leading: {
                    let cluster = state.cluster.clone();
                    Box::new(move || cluster.as_ref().is_none_or(|c| c.is_leader()))
                },
            },
            set_streams,
        );
        let token_task = {
            let (state, mut stop) = (state.clone(), bus_shutdown_for_tokens);
            tokio::spawn(async move {
                let mut was_leading = false;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return,
                    }
                    // A node that just took the lead records what changed while it followed.
                    let leading = state.cluster.as_ref().is_some_and(|c| c.is_leader());
                    let took_lead = leading && !was_leading;
                    was_leading = leading;
                    if let Some(tokens) = &state.tokens {
                        if matches!(tokens.refresh(), Ok(true)) || took_lead {
                            http::reconcile_tokens(&state).await;
                        }
                    }
                }
            })
        };
        let trim_task = (!trim_interval.is_zero()).then(|| {
            tokio::spawn(crate::malloc::trim_every(trim_interval, state.metrics.clone(), bus_shutdown_for_trims))
        });
        // `/metrics` apart, without a token, when asked for: its own listener, stopped with the rest.
        let metrics_listener = match cfg_metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?,
            ),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let metrics_task = metrics_listener.map(|listener| {
            let (app, mut stop) = (http::metrics_router(state.clone()), bus_shutdown_for_metrics);
            tokio::spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            })
        });
        let app = http::router(state);

        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            http::serve::run(listener, app, serve_options, shutdown_rx).await;
            // The publisher stops where it is: the stream itself says where to resume.
            let _ = shutdown_bus.send(true);
            if let Some(t) = publisher_task {
                let _ = tokio::time::timeout(drain, t).await;
            }
            // The role loop hands the lease over and lets go of its writer handle; so does the copy.
            if let Some(t) = role_task {
                let _ = t.await;
            }
            if let Some(t) = copy_task {
                let _ = t.await;
            }
            // Its handle of the state must be gone too before the store can close.
            let _ = token_task.await;
            let _ = sets_task.await;
            // The connectors hold the store: they stop where they are (their watermark and
            // intents say where to go on).
            if let Some(t) = outbound_task {
                let _ = t.await;
            }
            if let Some(t) = metrics_task {
                let _ = t.await;
            }
            if let Some(t) = trim_task {
                let _ = t.await;
            }
            // With the router gone, the state goes, which closes and joins the writer (it drains
            // its queue first) before the store closes: see `Drop for http::Inner`.
        });
        tracing::info!(%addr, "scimlog listening");
        Ok(Server {
            addr,
            metrics_addr,
            faults,
            store: server_store,
            created_token,
            shutdown: Some(shutdown),
            task,
            draining,
            shutdown_delay,
        })
    }

    /// Stops accepting, lets in-flight requests finish, drains the writer, closes the store.
    pub async fn stop(mut self) {
        // `/readyz` answers 503 from now on; new connections are still served for the shutdown
        // delay, so that a load balancer sees the instance unready before it goes away.
        self.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        if !self.shutdown_delay.is_zero() {
            tracing::info!(
                delay_ms = self.shutdown_delay.as_millis() as u64,
                "unready; stopping after the shutdown delay"
            );
            tokio::time::sleep(self.shutdown_delay).await;
        }
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Cluster mode: this node's state and its link to NATS (connected, objects opened).
async fn start_cluster_link(
    cfg: &ServeConfig,
) -> anyhow::Result<(Arc<crate::cluster::ClusterState>, Arc<crate::bus::link::Link>)> {
    let node_id = cfg.cluster.node_id.clone().context("--cluster needs --node-id")?;
    // Not --public-url: in a cluster that is the load balancer's address, and a write proxied
    // there could come back to a node that does not lead.
    let scheme = if cfg.tls_cert.is_some() { "https" } else { "http" };
    let url = cfg.cluster.advertise_url.clone().unwrap_or_else(|| format!("{scheme}://{}", cfg.listen));
    let state = Arc::new(crate::cluster::ClusterState::new(&cfg.cluster, node_id, url));
    let nats_url = cfg.nats.nats_url.as_deref().context("--cluster needs --nats-url")?;
    let link = crate::cluster::connect(&cfg.cluster, nats_url, cfg.nats.nats_replicas, &state)
        .await
        .context("cluster mode cannot start")?;
    Ok((state, Arc::new(link)))
}

/// Erases a user through a writer of its own, on a store opened exclusively (no server running).
pub async fn erase_offline(
    store: Store,
    keys: Arc<KeyRing>,
    tenant: &str,
    id: &str,
    reason: &str,
) -> anyhow::Result<Vec<scimlog_schemas::Event>> {
    let (writer, thread) = writer::start(
        store,
        keys,
        writer::WriterOptions {
            queue_depth: 1,
            queue_per_tenant: 1,
            group_commit_max: 1,
            sync: true,
            namespace: String::new(),
            default_organization: String::new(),
            limits: crate::command::WriteLimits::DEFAULT,
            metrics: Default::default(),
            replication: None,
            copy: false,
        },
    )?;
    let origin = writer::Origin {
        tenant: tenant.to_string(),
        actor: "cli".into(),
        request_id: uuid::Uuid::now_v7().to_string(),
    };
    let result = writer
        .submit(origin, crate::command::Command::EraseUser { id: id.to_string(), reason: reason.to_string() })
        .await;
    drop(writer);
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    match result {
        Ok(c) => Ok(c.events),
        Err(crate::log::writer::WriteError::Refused(crate::command::Refusal::NotFound { .. })) => {
            anyhow::bail!("no user {id:?} to erase in tenant {tenant:?} (or it was erased already)")
        }
        Err(e) => Err(e.into()),
    }
}

/// Where the token created on a first start is written (0600), instead of stdout.
pub fn initial_token_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("initial-token")
}

/// Warns about files others can read, and about a master key kept beside the data it opens.
fn warn_about_files(cfg: &ServeConfig) {
    let key = cfg.master_key_file.clone().unwrap_or_else(|| crate::log::keys::default_path(&cfg.data_dir));
    let tokens = cfg.data_dir.join("tokens.json");
    let db = cfg.data_dir.join("db");
    crate::files::warn_if_loose(&[
        (&cfg.data_dir, "the data dir"),
        (&db, "the store"),
        (&tokens, "the token file"),
        (&key, "the master key"),
    ]);
    if cfg.master_key_hex.is_none() && key.parent() == Some(cfg.data_dir.as_path()) {
        tracing::warn!(
            key = %key.display(),
            "the master key is inside the data dir: a copy or backup of the dir carries the key that opens \
             it, also after an erasure; keep it apart with --master-key-file"
        );
    }
}

/// `scimlog serve`: runs until SIGINT or SIGTERM.
pub async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    let server = Server::start(cfg.clone()).await?;
    let path = initial_token_path(&cfg.data_dir);
    let base = format!("{}/scim/v2", ServeConfig { listen: server.addr, ..cfg.clone() }.base_url());
    if let Some(target) = &cfg.runner {
        println!(
            "scimlog outbound runner for target {target:?}: copying the stream {} from NATS; its copy is read at {base}",
            cfg.nats.nats_stream
        );
    }
    if server.created_token.is_some() {
        println!("First start: created the bearer token \"default\" and wrote it to {}", path.display());
        println!("(mode 0600: readable by you alone; it is not printed, so it stays out of logs).\n");
        println!("  SCIM base URL: {base}");
        println!("  Bearer token:  cat {}\n", path.display());
        println!("Paste both into your IdP's SCIM provisioning settings (Okta: SCIM connector base URL +");
        println!("HTTP Header auth; Entra ID: Tenant URL + Secret Token). More: scimlog token create --name NAME");
    } else if cfg.runner.is_none() {
        println!("scimlog serving SCIM at {base}");
    }
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests and writes");
    server.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
