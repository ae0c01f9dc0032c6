//! The recent requests of the SCIM and `/api/v1` routes, for the console's Requests page and
//! its per-connection health: a ring buffer of the last `--request-log-size` requests, and per
//! token name the last success, the last failure and 24 hourly counters.
//!
//! What is kept is what the access log line says (time, token, tenant, method, route template,
//! status, scimType, the error's detail, duration, request id): never a path, a query or a
//! body. A body holds personal values outside the sealed log, which an erasure could not reach;
//! a detail may name an offending value (a duplicate userName), so the buffer lives in memory
//! only, is bounded, and is gone at restart.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// One answered request.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub at: DateTime<Utc>,
    /// The token's name; empty when no valid token was presented.
    pub token: String,
    pub tenant: String,
    pub method: String,
    /// The route template (`/scim/v2/Users/{id}`), never the path.
    pub route: String,
    pub status: u16,
    pub scim_type: String,
    /// The SCIM error's `detail` (empty on success).
    pub detail: String,
    pub micros: u64,
    pub request_id: String,
}

impl RequestRecord {
    pub fn failed(&self) -> bool {
        self.status >= 400
    }
}

const HOURS: usize = 24;

/// One token's health: what Entra or Okta would see before it quarantines the app.
#[derive(Clone, Debug, Default)]
pub struct TokenHealth {
    pub last_success: Option<DateTime<Utc>>,
    pub last_failure: Option<(DateTime<Utc>, u16, String)>,
    /// (hour since the epoch, requests, failures), one slot per hour of the last day.
    hours: [(i64, u64, u64); HOURS],
}

impl TokenHealth {
    fn count(&mut self, r: &RequestRecord) {
        let hour = r.at.timestamp().div_euclid(3600);
        let slot = &mut self.hours[hour.rem_euclid(HOURS as i64) as usize];
        if slot.0 != hour {
            *slot = (hour, 0, 0);
        }
        slot.1 += 1;
        if r.failed() {
            slot.2 += 1;
            self.last_failure = Some((r.at, r.status, r.scim_type.clone()));
        } else {
            self.last_success = Some(r.at);
        }
    }

    /// Requests and failures over the 24 hours up to `now`.
    pub fn last_day(&self, now: DateTime<Utc>) -> (u64, u64) {
        let hour = now.timestamp().div_euclid(3600);
        self.hours
            .iter()
            .filter(|(h, _, _)| *h > hour - HOURS as i64 && *h <= hour)
            .fold((0, 0), |(n, f), (_, rn, rf)| (n + rn, f + rf))
    }
}

/// Most token names tracked (names come from the token file, so this is only a backstop).
const TOKENS_MAX: usize = 10_000;

pub struct RequestLog {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    recent: VecDeque<RequestRecord>,
    tokens: HashMap<(String, String), TokenHealth>,
}

impl RequestLog {
    /// Keeps the last `capacity` requests (0 keeps none, but still counts per token).
    pub fn new(capacity: usize) -> RequestLog {
        RequestLog { capacity, inner: Mutex::new(Inner::default()) }
    }

    pub fn record(&self, r: RequestRecord) {
        let mut inner = self.inner.lock().expect("request log lock");
        let key = (r.tenant.clone(), r.token.clone());
        if inner.tokens.len() < TOKENS_MAX || inner.tokens.contains_key(&key) {
            inner.tokens.entry(key).or_default().count(&r);
        }
        if self.capacity == 0 {
            return;
        }
        if inner.recent.len() == self.capacity {
            inner.recent.pop_front();
        }
        inner.recent.push_back(r);
    }

    /// The newest first: up to `limit` of `tenant`'s requests older than `before` (a request id)
    /// that `keep` accepts.
    pub fn recent(
        &self,
        tenant: &str,
        before: Option<&str>,
        limit: usize,
        keep: impl Fn(&RequestRecord) -> bool,
    ) -> Vec<RequestRecord> {
        let inner = self.inner.lock().expect("request log lock");
        let mut newest_first = inner.recent.iter().rev();
        if let Some(before) = before {
            // Ids are UUIDv7: a request id is also a place in time.
            let mut skipped = newest_first.by_ref().skip_while(|r| r.request_id.as_str() != before);
            skipped.next();
            return skipped.filter(|r| r.tenant == tenant && keep(r)).take(limit).cloned().collect();
        }
        newest_first.filter(|r| r.tenant == tenant && keep(r)).take(limit).cloned().collect()
    }

    /// Every token of `tenant` seen since start, with its health, by name.
    pub fn health(&self, tenant: &str) -> Vec<(String, TokenHealth)> {
        let inner = self.inner.lock().expect("request log lock");
        let mut out: Vec<(String, TokenHealth)> =
            inner.tokens.iter().filter(|((t, _), _)| t == tenant).map(|((_, n), h)| (n.clone(), h.clone())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(token: &str, status: u16, at: DateTime<Utc>, id: &str) -> RequestRecord {
        RequestRecord {
            at,
            token: token.into(),
            tenant: "acme".into(),
            method: "POST".into(),
            route: "/scim/v2/Users".into(),
            status,
            scim_type: if status == 409 { "uniqueness".into() } else { String::new() },
            detail: String::new(),
            micros: 100,
            request_id: id.into(),
        }
    }

    #[test]
    fn keeps_the_last_n_newest_first_and_pages_before_an_id() {
        let log = RequestLog::new(3);
        let now = Utc::now();
        for i in 0..5 {
            log.record(rec("okta", 201, now, &format!("r{i}")));
        }
        let ids = |v: Vec<RequestRecord>| v.into_iter().map(|r| r.request_id).collect::<Vec<_>>();
        assert_eq!(ids(log.recent("acme", None, 10, |_| true)), ["r4", "r3", "r2"]);
        assert_eq!(ids(log.recent("acme", Some("r3"), 10, |_| true)), ["r2"]);
        assert!(log.recent("other", None, 10, |_| true).is_empty(), "another tenant sees none");
    }

    #[test]
    fn health_counts_the_last_day_and_remembers_the_last_failure() {
        let log = RequestLog::new(0);
        let now = Utc::now();
        let two_days_ago = now - chrono::Duration::hours(48);
        log.record(rec("entra", 201, two_days_ago, "a"));
        log.record(rec("entra", 409, two_days_ago, "b"));
        log.record(rec("entra", 201, now - chrono::Duration::hours(3), "c"));
        log.record(rec("entra", 409, now, "d"));
        let health = log.health("acme");
        assert_eq!(health.len(), 1);
        let (name, h) = &health[0];
        assert_eq!(name, "entra");
        assert_eq!(h.last_day(now), (2, 1), "the requests of two days ago are not counted");
        assert_eq!(h.last_failure.as_ref().map(|f| f.1), Some(409));
        assert_eq!(h.last_success, Some(now - chrono::Duration::hours(3)));
        assert!(log.recent("acme", None, 10, |_| true).is_empty(), "capacity 0 keeps no request");
    }
}
