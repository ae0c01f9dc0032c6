//! A lean HTTP/1.1 client: each worker owns one keep-alive connection (hyper's `conn` API, no
//! pool, no URL parsing per request). The generator shares the machine with the server, so
//! every microsecond it spends per request is one the server does not get.

use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

pub struct Conn {
    addr: SocketAddr,
    host: HeaderValue,
    auth: Option<HeaderValue>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// `base` is `http://127.0.0.1:PORT`; `token` empty for none. Connects on first use.
    pub fn new(base: &str, token: &str) -> anyhow::Result<Conn> {
        let authority = base.split("://").nth(1).unwrap_or(base).trim_end_matches('/');
        let addr: SocketAddr = authority.parse().with_context(|| format!("{base}: expected http://IP:PORT"))?;
        Ok(Conn {
            addr,
            host: HeaderValue::from_str(authority)?,
            auth: (!token.is_empty()).then(|| HeaderValue::from_str(&format!("Bearer {token}"))).transpose()?,
            sender: None,
        })
    }

    pub fn try_clone(&self) -> Conn {
        Conn { addr: self.addr, host: self.host.clone(), auth: self.auth.clone(), sender: None }
    }

    async fn sender(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        let usable = matches!(&self.sender, Some(s) if !s.is_closed());
        if !usable {
            let stream = tokio::net::TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected above");
        sender.ready().await?;
        Ok(sender)
    }

    /// One request; the whole answer body is read. A failed connection is dropped, so the next
    /// request reconnects.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut req = Request::builder().method(method).uri(path).header(HOST, self.host.clone());
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let req = match body {
            Some(b) => req.header(CONTENT_TYPE, "application/scim+json").body(Full::new(Bytes::from(b)))?,
            None => req.body(Full::new(Bytes::new()))?,
        };
        let result = async {
            let response = self.sender().await?.send_request(req).await?;
            let status = response.status();
            Ok::<_, anyhow::Error>((status, response.into_body().collect().await?.to_bytes()))
        }
        .await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        self.request(Method::GET, path, None).await
    }
}
