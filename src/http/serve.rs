//! The connection loop: plain HTTP/1.1 or TLS (rustls, TLS 1.2+), a cap on open connections, a
//! deadline for a client to send its request head (slow clients are cut off), and graceful
//! shutdown that lets in-flight requests finish within the drain time. Every connection reads
//! through [`LenientTargets`], which percent-encodes raw `"` in request queries (Entra sends them).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use super::request_line::LenientTargets;

pub struct ServeOptions {
    pub tls: Option<TlsAcceptor>,
    pub max_connections: usize,
    /// How long a client may take to send a request's head (and, with TLS, its handshake).
    pub header_read_timeout: Duration,
    /// On shutdown, how long in-flight requests may take.
    pub drain: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0} holds no PEM certificate")]
    NoCert(String),
    #[error("{0} holds no PEM private key")]
    NoKey(String),
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS acceptor from PEM files: TLS 1.2 and 1.3 only, ALPN http/1.1.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { path: p.display().to_string(), source });
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read(cert)?).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert.display().to_string()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|_| TlsError::NoKey(key.display().to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` until `shutdown` fires, then drains.
pub async fn run(listener: TcpListener, app: Router, opts: ServeOptions, mut shutdown: oneshot::Receiver<()>) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(limit = opts.max_connections, "connection refused: too many open connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(opts.header_read_timeout);
        let watcher = graceful.watcher();
        let tls = opts.tls.clone();
        let handshake_timeout = opts.header_read_timeout;
        tokio::spawn(async move {
            match tls {
                None => {
                    let io = TokioIo::new(LenientTargets::new(stream));
                    let _ = watcher.watch(builder.serve_connection(io, service)).await;
                }
                Some(acceptor) => {
                    let Ok(Ok(tls_stream)) = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let io = TokioIo::new(LenientTargets::new(tls_stream));
                    let _ = watcher.watch(builder.serve_connection(io, service)).await;
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(opts.drain) => {
            tracing::warn!(timeout_ms = opts.drain.as_millis() as u64, "in-flight requests did not finish in time");
        }
    }
}
