//! Profiles: what one kind of downstream application needs, as a set of knobs. The effective
//! knobs are the profile's, then the target's `[target.overrides]`, then what the target's
//! `/ServiceProviderConfig` says where the profile trusts it (`trust_spc_patch`).

use serde::{Deserialize, Serialize};

use super::config::Overrides;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Any SCIM 2.0 service: PATCH when its ServiceProviderConfig says so, else PUT.
    #[default]
    Generic,
    /// AWS IAM Identity Center: at most 100 member changes per request, one value per
    /// multi-valued attribute, no `photos`, PATCH for groups whatever SPC says.
    AwsIdentityCenter,
    /// Slack: DELETE only deactivates; user writes are limited to 180 a minute.
    Slack,
    /// GitHub Enterprise Managed Users: a User-Agent is required; ≤1,000 users an hour.
    GithubEmu,
}

impl Profile {
    pub const ALL: [Profile; 4] = [Profile::Generic, Profile::AwsIdentityCenter, Profile::Slack, Profile::GithubEmu];

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Generic => "generic",
            Profile::AwsIdentityCenter => "aws-identity-center",
            Profile::Slack => "slack",
            Profile::GithubEmu => "github-emu",
        }
    }

    pub fn knobs(self) -> Knobs {
        let generic = Knobs {
            max_members_per_request: 1000,
            single_valued: false,
            drop_attributes: &[],
            patch: None,
            rate_per_s: None,
            delete_deactivates: false,
            user_agent: None,
            member_remove: MemberRemove::Filter,
            members_by_patch: false,
        };
        match self {
            Profile::Generic => generic,
            Profile::AwsIdentityCenter => Knobs {
                max_members_per_request: 100,
                single_valued: true,
                drop_attributes: &["photos", "x509Certificates", "entitlements", "roles", "ims"],
                patch: Some(true),
                ..generic
            },
            Profile::Slack => Knobs { delete_deactivates: true, rate_per_s: Some(3.0), ..generic },
            Profile::GithubEmu => Knobs { user_agent: Some("scimlog"), rate_per_s: Some(0.27), ..generic },
        }
    }
}

/// The knobs a profile sets (see README "Outbound provisioning" for each one's meaning).
#[derive(Clone, Debug, PartialEq)]
pub struct Knobs {
    /// Member adds and removes in one request (a PATCH's operations' values together).
    pub max_members_per_request: usize,
    /// Keep one value (the primary, else the first) of each multi-valued attribute.
    pub single_valued: bool,
    /// Attributes never sent.
    pub drop_attributes: &'static [&'static str],
    /// PATCH (`true`) or PUT (`false`) for updates; `None`: as the target's SPC says.
    pub patch: Option<bool>,
    /// Requests per second at most (before any 429 lowers it).
    pub rate_per_s: Option<f64>,
    /// The target's DELETE deactivates the account instead of removing it (a later create finds
    /// it by externalId and reactivates it).
    pub delete_deactivates: bool,
    pub user_agent: Option<&'static str>,
    /// How a member removal is phrased.
    pub member_remove: MemberRemove,
    /// Member changes go by PATCH even where updates are PUT (`patch = false`), and a group's
    /// PUT then carries its own attributes only: for targets whose PATCH takes members but not
    /// attributes, and whose PUT leaves members alone (django-scim2). On a target whose PUT
    /// replaces members, this would empty its groups at every group update.
    pub members_by_patch: bool,
}

/// How a PATCH removes members (RFC 7644 §3.5.2.2 allows both; targets take one or the other).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberRemove {
    /// One `remove` per member, by a value filter: `"path": "members[value eq \"<id>\"]"`.
    #[default]
    Filter,
    /// One `remove` with the members in `value`: `"path": "members", "value": [{"value": ...}]`
    /// (targets that do not parse filters in paths, such as django-scim2).
    Value,
}

impl Knobs {
    /// The knobs with a target's overrides; an override may tighten a profile's hard limit,
    /// never loosen it.
    pub fn with(mut self, o: &Overrides) -> Result<Knobs, String> {
        if let Some(n) = o.max_members_per_request {
            if n == 0 || n > self.max_members_per_request {
                return Err(format!(
                    "max_members_per_request {n} is outside 1..={} for this profile",
                    self.max_members_per_request
                ));
            }
            self.max_members_per_request = n;
        }
        if let Some(r) = o.rate_per_s {
            if !(r > 0.0 && r <= 10_000.0) {
                return Err(format!("rate_per_s {r} is outside (0, 10000]"));
            }
            self.rate_per_s = Some(r);
        }
        if o.patch.is_some() {
            self.patch = o.patch;
        }
        if let Some(m) = o.member_remove {
            self.member_remove = m;
        }
        if let Some(b) = o.members_by_patch {
            self.members_by_patch = b;
        }
        Ok(self)
    }
}
