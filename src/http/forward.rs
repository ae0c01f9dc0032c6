//! Cluster mode: writes that reach a node that does not lead go to the leader, proxied (the
//! default: an IdP keeps one base URL behind any load balancer) or redirected (307). A layer of
//! `/scim/v2` and `/api/v1`, after authentication (every node reads the same token file, so a
//! stranger's request is refused here, not sent on). Reads are always served locally.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::cluster::{ClusterState, Forwarding, LeaderInfo};

/// Set on a proxied request: a node that receives one and does not lead answers 503 rather
/// than sending it on again (two nodes that each think the other leads must not loop).
pub const HEADER_FORWARDED_BY: &str = "scimlog-forwarded-by";

/// Marks an answer that came from the leader: its `Scimlog-Position` is the leader's, which
/// covers the write, and is kept (`read_level` does not put this node's own position there).
#[derive(Clone, Copy, Debug)]
pub struct ForwardedAnswer;

/// Hop-by-hop headers (RFC 9110 §7.6.1) are not passed on, in either direction.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A write this node does not lead, sent on (or redirected, or refused while no node leads);
/// `Err` gives back a request this node serves itself.
pub async fn writes_to_leader(state: &AppState, req: Request) -> Result<Response, Request> {
    let Some(cluster) = state.cluster.as_ref().filter(|c| !c.is_leader()) else {
        return Err(req);
    };
    let target = original_target(&req);
    let path = target.split('?').next().unwrap_or_default();
    if !is_write(req.method(), path) || is_node_local(path) {
        return Err(req);
    }
    let mut resp = if req.headers().contains_key(HEADER_FORWARDED_BY) {
        ApiError::Unavailable("this node was sent a write as the leader, but does not lead now; retry shortly".into())
            .into_response()
    } else {
        match (cluster.leader().filter(|l| l.node != cluster.node_id), cluster.forwarding) {
            (None, _) => {
                ApiError::Unavailable("no node leads the cluster now (an election is under way); retry shortly".into())
                    .into_response()
            }
            (Some(leader), Forwarding::Redirect) => redirect(&leader, &req),
            (Some(leader), Forwarding::Proxy) => {
                let limit = state.cfg.max_body_bytes.max(state.cfg.bulk_max_payload_bytes);
                proxy(cluster, &leader, req, limit).await.unwrap_or_else(|e| e.into_response())
            }
        }
    };
    // The access log and the duration metric name it so (it was never routed on this node).
    resp.extensions_mut().insert(super::RouteTemplate(std::sync::Arc::from("(forwarded to the leader)")));
    Ok(resp)
}

/// Whether a request changes the directory: every POST, PUT, PATCH and DELETE but a search.
fn is_write(method: &Method, path: &str) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) && !path.ends_with("/.search")
}

/// Outbound targets run on the node they name, their state in its store and in its targets file:
/// their admin API is that node's own, leader or not (the leader does not run them).
fn is_node_local(path: &str) -> bool {
    path.starts_with("/api/v1/outbound/")
}

/// The request's path and query as the client sent it (inside a nested router, `uri()` has
/// lost the nest's prefix).
fn original_target(req: &Request) -> String {
    let uri = req.extensions().get::<axum::extract::OriginalUri>().map_or(req.uri(), |o| &o.0);
    uri.path_and_query().map_or("/", |p| p.as_str()).to_string()
}

fn redirect(leader: &LeaderInfo, req: &Request) -> Response {
    let target = original_target(req);
    let location = format!("{}{target}", leader.url.trim_end_matches('/'));
    match HeaderValue::from_str(&location) {
        Ok(v) => (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, v)]).into_response(),
        Err(_) => ApiError::Unavailable("the leader's URL is not a valid Location".into()).into_response(),
    }
}

/// Sends the request to the leader on a connection of its own and passes its answer back.
async fn proxy(cluster: &ClusterState, leader: &LeaderInfo, req: Request, limit: usize) -> Result<Response, ApiError> {
    let unreachable = |why: String| {
        tracing::warn!(leader = %leader.node, url = %leader.url, why, "cannot forward a write to the leader");
        cluster.leader_unreachable();
        ApiError::Unavailable(format!("the leader ({}) cannot be reached now; retry shortly", leader.node))
    };
    let authority =
        leader.url.strip_prefix("http://").map(|rest| rest.split('/').next().unwrap_or(rest).to_string()).ok_or_else(
            || unreachable("only http:// leader URLs are proxied; use --write-forwarding redirect".into()),
        )?;
    let target = original_target(&req);
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::PayloadTooLarge { limit })?;
    let mut out = axum::http::Request::builder().method(parts.method.clone()).uri(target);
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name) && name != header::HOST {
            out = out.header(name, value);
        }
    }
    let out = out
        .header(header::HOST, authority.as_str())
        .header(HEADER_FORWARDED_BY, cluster.node_id.as_str())
        .body(Body::from(body))
        .map_err(|e| unreachable(e.to_string()))?;
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(authority.as_str()).await.map_err(|e| e.to_string())?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(out).await.map_err(|e| e.to_string())
    };
    let answer = match tokio::time::timeout(cluster.forward_timeout, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(unreachable(e)),
        Err(_) => return Err(unreachable(format!("no answer within {:?}", cluster.forward_timeout))),
    };
    let (mut parts, body) = answer.into_parts();
    let hop: Vec<HeaderName> = parts.headers.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    for name in hop {
        parts.headers.remove(name);
    }
    parts.extensions.insert(ForwardedAnswer);
    Ok(Response::from_parts(parts, Body::new(body)))
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}
