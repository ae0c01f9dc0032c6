//! Push delivery (RFC 8935): a stream whose receiver has an endpoint (`--set-push
//! TENANT/NAME=URL`, or `url` in the streams file) gets its SETs POSTed one at a time, in log
//! order, by a task of its own (`run.rs` starts and stops them).
//! A SET is acknowledged (and never sent again) when the receiver answers 202, or 400 with an
//! RFC 8935 error (it was received and refused: retrying would not help; the error is kept);
//! anything else is retried with backoff (1 s doubling to 60 s), and after
//! `PAUSE_AFTER` failures in a row the stream shows `paused` and is tried once a minute.
//! The bearer token, if any, is read from the stream's `token_file` (default
//! `<data-dir>/set-push-secrets/<NAME>`) at each attempt.
//!
//! A SET is sent again only when the server stopped between the receiver's 202 and the
//! acknowledgement's fsync: receivers dedupe by `jti`, which is stable.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use super::config::Stream;
use super::deliver::Deliverer;
use super::streams::StreamId;

/// Failures in a row after which a stream shows `paused` (and is tried once a minute).
pub const PAUSE_AFTER: u32 = 5;
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long a receiver has to answer one SET.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A push stream, parsed from `TENANT/NAME=URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushTarget {
    pub id: StreamId,
    pub url: String,
}

impl std::str::FromStr for PushTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<PushTarget, String> {
        let (id, url) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected TENANT/NAME=URL"))?;
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("{s:?}: {url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("{s:?}: the receiver's URL must be http or https"));
        }
        Ok(PushTarget { id: id.parse()?, url: url.to_string() })
    }
}

/// Where a push stream stands, for `GET /api/v1/sets/streams`.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushState {
    /// `idle` (all delivered), `delivering`, `retrying` (the last attempt failed), `paused`
    /// (`PAUSE_AFTER` failures in a row: tried once a minute) or `refused` (its URL names an
    /// address the SSRF guard forbids: nothing is sent).
    pub state: String,
    /// SETs the receiver accepted (202) since start.
    pub delivered: u64,
    /// SETs the receiver refused with an RFC 8935 error (400) since start; not sent again.
    pub refused: u64,
    /// Failed attempts in a row.
    pub failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

pub type Status = Arc<Mutex<PushState>>;

/// What a push task needs: what delivers SETs, the committed head (to wake on new events)
/// and its stop signal.
#[derive(Clone)]
pub struct Worker {
    pub deliver: Deliverer,
    /// `--allow-private-networks` (see `net_guard`).
    pub allow_private_networks: bool,
    pub committed: watch::Receiver<u64>,
    pub shutdown: watch::Receiver<bool>,
}

enum Outcome {
    Accepted,
    Refused(String),
    Failed(String),
}

impl Worker {
    /// Delivers a push stream's SETs until stopped.
    pub async fn run(mut self, target: Stream, status: Status) {
        let Some(push) = target.push.clone() else { return };
        if let Some(why) =
            (!self.allow_private_networks).then(|| crate::net_guard::check_url(&push.url).err()).flatten()
        {
            tracing::error!(stream = %target.id.name, error = %why, "a SET push stream's receiver is refused");
            *status.lock().expect("push status lock") =
                PushState { state: "refused".into(), last_error: Some(why), ..Default::default() };
            let _ = self.shutdown.changed().await;
            return;
        }
        let client = match crate::net_guard::client_builder(self.allow_private_networks).timeout(TIMEOUT).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "no HTTP client for SET push");
                return;
            }
        };
        let set = |f: &dyn Fn(&mut PushState)| f(&mut status.lock().expect("push status lock"));
        let mut backoff = Duration::from_secs(1);
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            let next = self.deliver.next(&target, vec![], 1).await;
            let batch = match next {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(stream = %target.id.name, error = %e, "a SET push stream cannot read the log");
                    if self.pause(BACKOFF_MAX).await {
                        return;
                    }
                    continue;
                }
            };
            let Some((jti, jws)) = batch.sets.into_iter().next() else {
                set(&|s| s.state = "idle".into());
                let head = batch.head;
                let woke = tokio::select! {
                    r = self.committed.wait_for(|h| *h > head) => r.is_ok(),
                    _ = self.shutdown.changed() => return,
                };
                // The writer is gone (the server is stopping): no busy loop meanwhile.
                if !woke && self.pause(BACKOFF_MAX).await {
                    return;
                }
                continue;
            };
            set(&|s| s.state = if s.failures == 0 { "delivering".into() } else { s.state.clone() });
            let outcome = send(&client, &push, jws.as_str().unwrap_or_default()).await;
            match outcome {
                Outcome::Accepted | Outcome::Refused(_) => {
                    if let Err(e) = self.deliver.next(&target, vec![jti.clone()], 0).await {
                        tracing::error!(stream = %target.id.name, %jti, error = %e, "a pushed SET cannot be acknowledged");
                    }
                    backoff = Duration::from_secs(1);
                    set(&|s| {
                        s.failures = 0;
                        match &outcome {
                            Outcome::Refused(why) => {
                                s.refused += 1;
                                s.last_error = Some(format!("{jti} refused: {why}"));
                            }
                            _ => s.delivered += 1,
                        }
                    });
                }
                Outcome::Failed(why) => {
                    tracing::warn!(stream = %target.id.name, %jti, error = %why, "pushing a SET failed; trying again");
                    let failures = {
                        let mut s = status.lock().expect("push status lock");
                        s.failures += 1;
                        s.state = if s.failures >= PAUSE_AFTER { "paused".into() } else { "retrying".into() };
                        s.last_error = Some(why);
                        s.failures
                    };
                    let wait = if failures >= PAUSE_AFTER { BACKOFF_MAX } else { backoff };
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    if self.pause(wait).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps `d`, or less when the server stops (then `true`).
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.shutdown.changed() => true,
        }
    }
}

/// POSTs one SET to the receiver.
async fn send(client: &reqwest::Client, push: &super::config::Push, jws: &str) -> Outcome {
    let mut req = client
        .post(&push.url)
        .header("content-type", "application/secevent+jwt")
        .header("accept", "application/json")
        .body(jws.to_string());
    if let Ok(token) = std::fs::read_to_string(&push.token_file) {
        req = req.bearer_auth(token.trim());
    }
    match req.send().await {
        Ok(r) if r.status().as_u16() == 202 => Outcome::Accepted,
        Ok(r) if r.status().as_u16() == 400 => {
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            match body["err"].as_str() {
                Some(err) => Outcome::Refused(format!("{err}: {}", body["description"].as_str().unwrap_or(""))),
                None => Outcome::Failed("400 without an RFC 8935 error".into()),
            }
        }
        Ok(r) => Outcome::Failed(format!("the receiver answered {}", r.status())),
        Err(e) => Outcome::Failed(format!("no answer: {}", crate::net_guard::describe(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_targets() {
        let t: PushTarget = "acme/siem=https://siem.example/events".parse().unwrap();
        assert_eq!(
            (t.id.tenant.as_str(), t.id.name.as_str(), t.url.as_str()),
            ("acme", "siem", "https://siem.example/events")
        );
        for bad in ["acme/siem", "acme/siem=not a url", "acme/siem=ftp://x/", "siem=https://x/"] {
            assert!(bad.parse::<PushTarget>().is_err(), "{bad}");
        }
    }
}
