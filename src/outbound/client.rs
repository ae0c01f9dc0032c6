//! One target's HTTP side: requests with its credentials, pacing, retries by class, and the
//! answer sorted into a [`Failure`] class the connector acts on. Nothing here decides what to
//! send; every request and its outcome is counted in the target's [`Status`].
//!
//! | answer                          | class          | what happens here                        |
//! |---------------------------------|----------------|------------------------------------------|
//! | 2xx                             | ok             | returned                                 |
//! | 429, 503 with `Retry-After`     | `Throttled`    | wait Retry-After (capped), slow down, again; never an object failure |
//! | 5xx, timeout, reset             | `Transient`    | again with jittered backoff (idempotent methods only); then returned |
//! | 401, 403                        | `Unauthorized` | credentials read again once, then returned (the connector quarantines) |
//! | 404, 409, other 4xx             | `NotFound`, `Conflict`, `Rejected` | returned (the connector parks or looks up) |

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::Method;
use serde_json::Value;
use tokio::sync::{watch, Mutex};

use super::config::{Auth, Mode, Target};
use super::Status;

/// The most of a target's answer that is read (a SCIM resource or a page of them).
const MAX_BODY: usize = 4 << 20;
/// The longest backoff between two tries of one request.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A 429/503 without a usable `Retry-After` waits this long.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(30);
/// The detail of an error kept and shown (the target's text, cut).
const MAX_DETAIL: usize = 300;

#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    Throttled(Duration),
    /// A 5xx, a timeout or a reset. `maybe_applied`: the request may have reached the target (a
    /// POST's outcome is then unknown and must be looked up, never sent again blindly).
    Transient {
        detail: String,
        maybe_applied: bool,
    },
    Unauthorized(u16),
    NotFound,
    Conflict {
        detail: String,
    },
    Rejected {
        status: u16,
        scim_type: Option<String>,
        detail: String,
    },
    /// Stopping: the request was not finished.
    Stopped,
}

impl Failure {
    /// Whether the target may have done what the request asked (no answer said it did not).
    pub fn maybe_applied(&self) -> bool {
        match self {
            Failure::Transient { maybe_applied, .. } => *maybe_applied,
            // Cut off while it was under way.
            Failure::Stopped => true,
            Failure::Throttled(_)
            | Failure::Unauthorized(_)
            | Failure::NotFound
            | Failure::Conflict { .. }
            | Failure::Rejected { .. } => false,
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Failure::Throttled(d) => format!("throttled for {} s", d.as_secs()),
            Failure::Transient { detail, .. } | Failure::Conflict { detail } | Failure::Rejected { detail, .. } => {
                detail.clone()
            }
            Failure::Unauthorized(s) => format!("the target answered {s}: its credentials are refused"),
            Failure::NotFound => "not found".into(),
            Failure::Stopped => "stopping".into(),
        }
    }
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
}

pub struct Client {
    http: reqwest::Client,
    target: Target,
    status: Arc<Status>,
    /// The Authorization header and, for an OAuth 2.0 access token, when to renew it.
    authorization: Mutex<Option<(String, Option<Instant>)>>,
    pace: Mutex<Pace>,
    stop: watch::Receiver<bool>,
    metrics: crate::metrics::Metrics,
    /// A plan's: the writes a dry run would send, with their bodies, in order.
    recorder: Option<Recorder>,
}

/// A request a plan would send.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Planned {
    pub method: String,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

pub type Recorder = Arc<std::sync::Mutex<Vec<Planned>>>;

/// Pacing: the gap between two requests, widened on every 429 (halving the rate) and narrowed
/// back by 1% per success, to the profile's rate.
struct Pace {
    base: Duration,
    gap: Duration,
    next: Instant,
}

impl Client {
    pub fn new(
        target: Target,
        status: Arc<Status>,
        metrics: crate::metrics::Metrics,
        stop: watch::Receiver<bool>,
        allow_private_networks: bool,
    ) -> Result<Client, String> {
        if !allow_private_networks {
            crate::net_guard::check_url(&target.config.url)?;
            if let Some(url) = &target.config.oauth_token_url {
                crate::net_guard::check_url(url)?;
            }
        }
        let mut b = crate::net_guard::client_builder(allow_private_networks)
            .timeout(Duration::from_millis(target.config.timeout_ms))
            .connect_timeout(Duration::from_millis(target.config.timeout_ms.min(10_000)));
        if let Some(ua) = target.knobs.user_agent {
            b = b.user_agent(format!("{ua}/{}", env!("CARGO_PKG_VERSION")));
        }
        let http = b.build().map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let base = target.knobs.rate_per_s.map_or(Duration::ZERO, |r| Duration::from_secs_f64(1.0 / r));
        Ok(Client {
            http,
            target,
            status,
            authorization: Mutex::new(None),
            pace: Mutex::new(Pace { base, gap: base, next: Instant::now() }),
            stop,
            metrics,
            recorder: None,
        })
    }

    /// A dry run's writes are also recorded, bodies included (`plan`).
    pub fn record_into(&mut self, recorder: Recorder) {
        self.recorder = Some(recorder);
    }

    /// A request, retried as its class says; `idempotent` is false for POST only.
    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Reply, Failure> {
        if self.target.config.mode == Mode::DryRun && method != Method::GET {
            // Dry run: journaled, never sent; a create "gets" an id no target would give.
            self.status.journal(method.as_str(), path, None, Duration::ZERO, true);
            if let Some(r) = &self.recorder {
                let planned = Planned { method: method.to_string(), path: path.into(), body: body.cloned() };
                r.lock().expect("recorder lock").push(planned);
            }
            let mut body = body.cloned().unwrap_or(Value::Null);
            if let Value::Object(m) = &mut body {
                let ext = m.get("externalId").and_then(Value::as_str).unwrap_or("unknown").to_string();
                m.insert("id".into(), Value::String(format!("dry-run-{ext}")));
            }
            return Ok(Reply { status: 200, body });
        }
        let idempotent = method != Method::POST;
        let (mut tries, mut refreshed) = (0u32, false);
        loop {
            if *self.stop.borrow() {
                return Err(Failure::Stopped);
            }
            self.wait_turn().await;
            tries += 1;
            let mut stop = self.stop.clone();
            let result = tokio::select! {
                r = self.once(method.clone(), path, body) => r,
                // A request cut off here is an unknown outcome: a POST's intent stays open.
                _ = stop.wait_for(|s| *s) => Err(Failure::Stopped),
            };
            match result {
                Ok(r) => {
                    self.narrow_pace().await;
                    return Ok(r);
                }
                Err(Failure::Throttled(after)) => {
                    let after = after.min(Duration::from_secs(self.target.config.max_retry_after_s));
                    self.status.throttled(after);
                    self.widen_pace().await;
                    tries -= 1;
                    self.sleep(after).await?;
                }
                Err(Failure::Transient { detail, maybe_applied })
                    if (idempotent || !maybe_applied) && tries < self.target.config.retry_max =>
                {
                    tracing::debug!(target = self.target.name(), %detail, tries, "retrying after a transient failure");
                    self.sleep(self.backoff(tries)).await?;
                }
                Err(Failure::Unauthorized(_)) if !refreshed => {
                    // One refresh of the credentials (a rotated token file), then it counts.
                    refreshed = true;
                    *self.authorization.lock().await = None;
                }
                Err(f) => return Err(f),
            }
        }
    }

    async fn sleep(&self, d: Duration) -> Result<(), Failure> {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = stop.wait_for(|s| *s) => Err(Failure::Stopped),
        }
    }

    /// Waits the backoff of a `tries`th attempt (a create sent again after a lookup found
    /// nothing); `Err(Stopped)` when stopping.
    pub async fn pause(&self, tries: u32) -> Result<(), Failure> {
        self.sleep(self.backoff(tries)).await
    }

    /// Full jitter: a random wait up to base × 2^(tries-1), capped.
    fn backoff(&self, tries: u32) -> Duration {
        let base = Duration::from_millis(self.target.config.retry_base_ms);
        let cap = base.saturating_mul(1u32 << tries.saturating_sub(1).min(16)).min(MAX_BACKOFF);
        cap.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    async fn wait_turn(&self) {
        let wait = {
            let mut p = self.pace.lock().await;
            let now = Instant::now();
            let at = p.next.max(now);
            p.next = at + p.gap;
            at - now
        };
        if !wait.is_zero() {
            let _ = self.sleep(wait).await;
        }
    }
    async fn widen_pace(&self) {
        let mut p = self.pace.lock().await;
        p.gap = (p.gap * 2).max(Duration::from_millis(10)).min(Duration::from_secs(10));
    }
    async fn narrow_pace(&self) {
        let mut p = self.pace.lock().await;
        if p.gap > p.base {
            p.gap = p.gap.mul_f64(0.99).max(p.base);
        }
    }

    async fn authorization(&self) -> Result<String, Failure> {
        let mut slot = self.authorization.lock().await;
        if let Some((h, renew)) = &*slot {
            if renew.is_none_or(|at| Instant::now() < at) {
                return Ok(h.clone());
            }
        }
        let got = match &self.target.auth {
            Auth::OAuth2 { token_url, client_id, secret_file, scope } => {
                self.access_token(token_url, client_id, secret_file, scope.as_deref()).await
            }
            other => other.header().map(|h| (h, None)),
        };
        let (h, renew) = got.map_err(|detail| {
            // A secret that cannot be read (or a token endpoint that refuses) is the target's
            // problem, as a refused token is: the target is quarantined, and probed.
            tracing::error!(target = self.target.name(), %detail, "cannot get the target's credentials");
            Failure::Unauthorized(0)
        })?;
        *slot = Some((h.clone(), renew));
        Ok(h)
    }

    /// An access token from an OAuth 2.0 token endpoint (client credentials, the secret sent
    /// with HTTP Basic), renewed a minute before it expires (after an hour without
    /// `expires_in`), and at once after a 401.
    async fn access_token(
        &self,
        url: &str,
        client_id: &str,
        secret_file: &std::path::Path,
        scope: Option<&str>,
    ) -> Result<(String, Option<Instant>), String> {
        let secret = Auth::client_secret(secret_file)?;
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend(scope.map(|s| ("scope", s)));
        let r = self
            .http
            .post(url)
            .basic_auth(client_id, Some(secret))
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("token endpoint: {e}"))?;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or_default();
        let token = body.get("access_token").and_then(Value::as_str).filter(|_| status == 200);
        let Some(token) = token else {
            return Err(format!("the token endpoint answered {status} without an access_token"));
        };
        let lifetime = Duration::from_secs(body.get("expires_in").and_then(Value::as_u64).unwrap_or(3600));
        let renew = Instant::now() + lifetime.saturating_sub(Duration::from_secs(60));
        Ok((format!("Bearer {token}"), Some(renew)))
    }

    async fn once(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Reply, Failure> {
        let url = format!("{}{path}", self.target.base());
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("Authorization", self.authorization().await?)
            .header("Accept", "application/scim+json, application/json");
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/scim+json")
                .body(serde_json::to_vec(b).expect("bodies serialise"));
        }
        let started = Instant::now();
        let result = self.exchange(req).await;
        let status = result.as_ref().ok().map(|(s, _, _)| *s);
        self.status.journal(method.as_str(), path, status, started.elapsed(), false);
        let labels = crate::metrics::TargetRequestLabels {
            target: self.target.name().into(),
            method: method.as_str().into(),
            status: status.map_or("error".into(), |s| s.to_string()),
        };
        self.metrics.outbound_requests.get_or_create(&labels).inc();
        let (status, retry_after, bytes) = result?;
        classify(status, retry_after.as_deref(), &bytes)
    }

    async fn exchange(&self, req: reqwest::RequestBuilder) -> Result<(u16, Option<String>, Vec<u8>), Failure> {
        let transport = |e: reqwest::Error| Failure::Transient {
            detail: format!(
                "{}: {}",
                if e.is_timeout() { "timeout" } else { "transport" },
                crate::net_guard::describe(&e)
            ),
            // A refused connection never reached the target; anything later may have.
            maybe_applied: !e.is_connect(),
        };
        let mut resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > MAX_BODY {
                return Err(Failure::Transient {
                    detail: format!("the answer is larger than {MAX_BODY} bytes"),
                    maybe_applied: true,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((status, retry_after, bytes))
    }
}

/// Sorts an answer into its class (see the module's table).
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8]) -> Result<Reply, Failure> {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return Ok(Reply { status, body: json });
    }
    let detail = {
        let d = json.get("detail").and_then(Value::as_str).map(str::to_string);
        let d = d.unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(MAX_DETAIL)]).into_owned());
        let d: String = d.chars().take(MAX_DETAIL).collect();
        format!("{status}: {d}")
    };
    let scim_type = json.get("scimType").and_then(Value::as_str).map(str::to_string);
    match status {
        429 => Err(Failure::Throttled(retry_after.and_then(parse_retry_after).unwrap_or(DEFAULT_RETRY_AFTER))),
        503 if retry_after.is_some() => {
            Err(Failure::Throttled(retry_after.and_then(parse_retry_after).unwrap_or(DEFAULT_RETRY_AFTER)))
        }
        500..=599 => Err(Failure::Transient { detail, maybe_applied: true }),
        401 | 403 => Err(Failure::Unauthorized(status)),
        404 => Err(Failure::NotFound),
        409 => Err(Failure::Conflict { detail }),
        _ => Err(Failure::Rejected { status, scim_type, detail }),
    }
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds().max(0);
    Some(Duration::from_millis(ms as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_fall_into_their_class() {
        let scim_error = br#"{"status":"400","scimType":"invalidValue","detail":"userName is bad"}"#;
        let cases: Vec<(u16, Option<&str>, &[u8], Result<u16, Failure>)> = vec![
            (201, None, b"{}", Ok(201)),
            (204, None, b"", Ok(204)),
            (429, Some("7"), b"", Err(Failure::Throttled(Duration::from_secs(7)))),
            (429, None, b"", Err(Failure::Throttled(DEFAULT_RETRY_AFTER))),
            (503, Some("2"), b"", Err(Failure::Throttled(Duration::from_secs(2)))),
            (503, None, b"busy", Err(Failure::Transient { detail: "503: busy".into(), maybe_applied: true })),
            (401, None, b"", Err(Failure::Unauthorized(401))),
            (403, None, b"", Err(Failure::Unauthorized(403))),
            (404, None, b"", Err(Failure::NotFound)),
            (
                400,
                None,
                scim_error,
                Err(Failure::Rejected {
                    status: 400,
                    scim_type: Some("invalidValue".into()),
                    detail: "400: userName is bad".into(),
                }),
            ),
        ];
        for (status, after, body, want) in cases {
            let got = classify(status, after, body).map(|r| r.status);
            assert_eq!(got, want, "{status}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after(" 12 "), Some(Duration::from_secs(12)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(90)).to_rfc2822();
        let d = parse_retry_after(&later).unwrap();
        assert!(d > Duration::from_secs(80) && d <= Duration::from_secs(90), "{d:?}");
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
