//! Transport: HTTPS with rustls, slow clients cut off, a cap on open connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use crate::support::{config, TestServer};

/// Reads until the peer closes (or `limit` passes); returns what came and whether it closed.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

#[tokio::test]
async fn https_with_rustls() {
    let tmp = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let mut cfg = config(&tmp.path().join("data"));
    cfg.tls_cert = Some(cert_path);
    cfg.tls_key = Some(key_path);
    let s = TestServer::start_with(cfg).await;
    let port = s.base.rsplit(':').next().unwrap().to_string();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(format!("127.0.0.1:{port}")).await.unwrap();
    let mut tls = connector.connect("localhost".try_into().unwrap(), tcp).await.expect("TLS handshake");
    let version = tls.get_ref().1.protocol_version().unwrap();
    assert!(matches!(version, rustls::ProtocolVersion::TLSv1_3 | rustls::ProtocolVersion::TLSv1_2), "{version:?}");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let (answer, _) = read_until_closed(&mut tls, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"status\":\"ok\""));

    // Plain HTTP to the TLS port gets no answer.
    let mut plain = TcpStream::connect(format!("127.0.0.1:{port}")).await.unwrap();
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (answer, _) = read_until_closed(&mut plain, Duration::from_secs(3)).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    s.stop().await;
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_connections_are_capped() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.header_read_timeout_ms = 300;
    cfg.max_connections = 2;
    let mut s = TestServer::start_with(cfg).await;
    s.adopt_dir(tmp);
    let addr = s.base.trim_start_matches("http://").to_string();

    // Slowloris: half a request head, then nothing.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed, "the slow client was cut off");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Two open connections use both slots: a third is closed at once.
    let mut a = TcpStream::connect(&addr).await.unwrap();
    let mut b = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut c = TcpStream::connect(&addr).await.unwrap();
    let (answer, closed) = read_until_closed(&mut c, Duration::from_millis(250)).await;
    assert!(closed && answer.is_empty(), "over the cap: closed without an answer");
    drop((a.shutdown().await, b.shutdown().await));
    drop((a, b));
    // Once they are gone, requests are served again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.get("/ServiceProviderConfig").await.status, 200);
    s.stop().await;
}
