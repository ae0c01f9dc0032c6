//! Per-token rate limits: each token gets a GCRA bucket (`governor`) of `--rate-limit-per-s`
//! requests per second with bursts of `--rate-limit-burst`, or its tenant's override
//! (`--tenant-rate-limit acme=RATE:BURST`). A request over it is answered 429 with `Retry-After`
//! before any work is done: one tenant's client cannot take the server from the others.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};

use super::error::ApiError;
use super::AppState;
use crate::auth::Principal;

/// A rate and its burst; `per_s` 0 means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_s: u32,
    pub burst: u32,
}

impl Rate {
    fn quota(self) -> Option<Quota> {
        let per_s = NonZeroU32::new(self.per_s)?;
        let burst = NonZeroU32::new(self.burst.max(self.per_s)).unwrap_or(per_s);
        Some(Quota::per_second(per_s).allow_burst(burst))
    }
}

/// `TENANT=RATE:BURST`, for `--tenant-rate-limit`.
pub fn parse_tenant_rate(s: &str) -> Result<(String, Rate), String> {
    let (tenant, rate) = s.split_once('=').ok_or_else(|| format!("expected TENANT=RATE:BURST, got {s:?}"))?;
    let (per_s, burst) = rate.split_once(':').unwrap_or((rate, rate));
    let number = |n: &str| n.parse::<u32>().map_err(|_| format!("{n:?} is not a whole number (in {s:?})"));
    Ok((tenant.to_string(), Rate { per_s: number(per_s)?, burst: number(burst)? }))
}

/// The buckets, one per token, made when a token is first seen. Bounded by the tokens there are.
pub struct RateLimits {
    default: Rate,
    tenants: HashMap<String, Rate>,
    buckets: Mutex<HashMap<(String, String), Option<Arc<DefaultDirectRateLimiter>>>>,
    clock: DefaultClock,
}

impl RateLimits {
    pub fn new(default: Rate, tenants: &[(String, Rate)]) -> RateLimits {
        RateLimits {
            default,
            tenants: tenants.iter().cloned().collect(),
            buckets: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    /// `Ok` when the token may make a request now; else how long until it may.
    pub fn check(&self, p: &Principal) -> Result<(), Duration> {
        let bucket = {
            let mut buckets = self.buckets.lock().expect("rate limit lock");
            let rate = self.tenants.get(&p.tenant).copied().unwrap_or(self.default);
            buckets
                .entry((p.tenant.clone(), p.name.clone()))
                .or_insert_with(|| rate.quota().map(|q| Arc::new(DefaultDirectRateLimiter::direct(q))))
                .clone()
        };
        match bucket {
            None => Ok(()),
            Some(b) => b.check().map_err(|not_until| not_until.wait_time_from(self.clock.now())),
        }
    }
}

/// Whether the token may make a request now (after authentication, in `token_gate`); else 429
/// with `Retry-After` (whole seconds, at least 1).
pub fn admit(state: &AppState, p: &Principal) -> Result<(), ApiError> {
    state.rates.check(p).map_err(|wait| {
        let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError::TooManyRequests { retry_after_s: retry_after.max(1) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn buckets_per_token_with_tenant_overrides() {
        let limits = RateLimits::new(Rate { per_s: 0, burst: 0 }, &[("slow".into(), Rate { per_s: 1, burst: 3 })]);
        let p = |tenant: &str, name: &str| Principal { name: name.into(), tenant: tenant.into(), role: Role::Scim };
        for _ in 0..100 {
            assert!(limits.check(&p("fast", "a")).is_ok(), "0 means no limit");
        }
        for _ in 0..3 {
            assert!(limits.check(&p("slow", "a")).is_ok(), "the burst");
        }
        let wait = limits.check(&p("slow", "a")).unwrap_err();
        assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limits.check(&p("slow", "b")).is_ok(), "each token has its own bucket");
        assert_eq!(parse_tenant_rate("acme=50:200"), Ok(("acme".into(), Rate { per_s: 50, burst: 200 })));
        assert_eq!(parse_tenant_rate("acme=50"), Ok(("acme".into(), Rate { per_s: 50, burst: 50 })));
        assert!(parse_tenant_rate("acme").is_err() && parse_tenant_rate("acme=x:1").is_err());
    }
}
