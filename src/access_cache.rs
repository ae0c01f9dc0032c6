//! The access answers' cache of group nodes (`access::GroupNode`: a group's name, own grants and
//! parent groups), so that an access check reads the user's own grants and groups from the store
//! and everything above them from memory: O(groups of the user) reads, whatever the nesting.
//!
//! Never stale: the nodes kept are those of one *group generation* (see
//! `log::StateView::group_generation`), which every commit that changes a node moves on, before
//! the commit and again after it, and so before any write is answered. A view of a newer
//! generation empties the cache; a view taken while such a commit was under way, or of an older
//! generation, reads its nodes from itself and keeps nothing. Users joining and leaving groups
//! (an IdP's daily traffic) change no node and keep the cache.
//!
//! The same nodes name the groups of a user in SCIM answers (a user's `groups`). The scopes that
//! exist (an access check's environment) are kept by the same rules: a commit that creates one
//! moves the generation on too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use scimlog_projections::access::{self, Effective, GrantRecord, GroupNode, ScopeDoc, TooLarge, Via};
use scimlog_projections::UserHead;
use scimlog_schemas::access::ScopeKind;

use crate::log::StateView;

pub struct GroupCache {
    /// Most nodes kept (`--access-cache-groups`; 0: no cache). At the limit it starts over.
    max: usize,
    /// `--max-scan`: every node is read with its parents up to this limit (+ 1), whatever the
    /// budget of the answer that reads it, so a kept node is complete for every answer.
    node_limit: usize,
    inner: Mutex<Kept>,
}

/// tenant → key → kept value: looked up by `&str` without building a key (an access check
/// through nested groups looks up a dozen nodes), with foldhash (seeded per process) rather
/// than SipHash (0.8% of an access check's samples at 100k users, of 3% in these lookups).
type PerTenant<V> = HashMap<String, HashMap<String, V, Fast>, Fast>;
type Fast = foldhash::fast::RandomState;

#[derive(Default)]
struct Kept {
    generation: u64,
    /// Group nodes by group id.
    nodes: PerTenant<Arc<GroupNode>>,
    /// Scopes that exist, by `access::scope_key` (what is not found is not kept).
    scopes: PerTenant<Arc<ScopeDoc>>,
    /// How many nodes and scopes are kept together.
    count: usize,
}

impl Kept {
    fn clear(&mut self) {
        self.nodes.clear();
        self.scopes.clear();
        self.count = 0;
    }
}

fn kept_in<'a, V>(map: &'a PerTenant<V>, t: &str, key: &str) -> Option<&'a V> {
    map.get(t)?.get(key)
}

/// Keeps `value`; whether it was new.
fn keep_in<V>(map: &mut PerTenant<V>, t: &str, key: &str, value: V) -> bool {
    let tenant = match map.get_mut(t) {
        Some(tenant) => tenant,
        None => map.entry(t.to_string()).or_default(),
    };
    tenant.insert(key.to_string(), value).is_none()
}

impl GroupCache {
    pub fn new(max: usize, node_limit: usize) -> GroupCache {
        GroupCache { max, node_limit, inner: Mutex::default() }
    }

    /// A user's effective access, as `access::effective` answers it from `view`, reading at most
    /// `budget` memberships (at most `--max-scan`).
    pub fn effective(
        &self,
        view: &StateView<'_>,
        t: &str,
        user: &UserHead,
        budget: usize,
    ) -> Result<Vec<Effective>, TooLarge> {
        let mut out = Vec::new();
        self.walk(view, t, user, budget, &mut |g, via| out.push(Effective::new(g, via)))?;
        Ok(out)
    }

    /// `access::walk_grants` over `view`, the nodes from this cache: each of a user's grants in
    /// [`Self::effective`]'s order, handed to `visit` without a copy.
    pub fn walk(
        &self,
        view: &StateView<'_>,
        t: &str,
        user: &UserHead,
        budget: usize,
        visit: &mut dyn FnMut(&GrantRecord, Via<'_>),
    ) -> Result<(), TooLarge> {
        let (budget, limit) = (budget.min(self.node_limit), self.node_limit);
        let kept = view.group_generation().filter(|_| self.max > 0);
        let mut node = |group: &str| match kept {
            Some(generation) => self.node(view, generation, t, group, limit),
            None => Arc::new(access::group_node(view, t, group, limit)),
        };
        access::walk_grants(view, t, user, budget, &mut node, visit)
    }

    /// A group's displayName, `None` when the group does not exist: from the kept node when
    /// there is one (kept by the same rules as [`Self::effective`]'s, so never stale), else
    /// read. A user's `groups` in SCIM answers name each group, so a page of users in n groups
    /// each costs n lookups here per user rather than n reads and decodes of group documents.
    pub fn display_name(&self, view: &StateView<'_>, t: &str, group: &str) -> Option<String> {
        let name = match view.group_generation() {
            Some(generation) if self.max > 0 => {
                self.node(view, generation, t, group, self.node_limit).display_name.clone()
            }
            _ => return scimlog_projections::query::group(view, t, group).map(|g| g.display_name),
        };
        // A node of a group that does not exist has no name (a group's displayName is never
        // empty: parsing refuses it).
        (!name.is_empty()).then_some(name)
    }

    /// An organization, environment or resource group by its slug (any case), `None` when it
    /// does not exist: kept by the same rules as the group nodes (a commit that creates a scope
    /// moves the generation on, see `access::changes_kept_nodes`), else read.
    pub fn scope(&self, view: &StateView<'_>, t: &str, kind: ScopeKind, slug: &str) -> Option<Arc<ScopeDoc>> {
        let read = || access::scope(view, t, kind, slug).map(Arc::new);
        match view.group_generation() {
            Some(generation) if self.max > 0 => {
                let key = access::scope_key(kind, slug);
                self.through(
                    view,
                    generation,
                    |kept| kept_in(&kept.scopes, t, &key).cloned(),
                    read,
                    |kept, scope| keep_in(&mut kept.scopes, t, &key, scope),
                )
            }
            _ => read(),
        }
    }

    fn node(&self, view: &StateView<'_>, generation: u64, t: &str, group: &str, limit: usize) -> Arc<GroupNode> {
        let node = self.through(
            view,
            generation,
            |kept| kept_in(&kept.nodes, t, group).cloned(),
            || Some(Arc::new(access::group_node(view, t, group, limit))),
            |kept, node| keep_in(&mut kept.nodes, t, group, node),
        );
        node.expect("a group node is always read")
    }

    /// What `get` finds kept for `generation`, else what `read` reads from `view`, kept when it
    /// is something (`put` says whether it was new).
    fn through<T: Clone>(
        &self,
        view: &StateView<'_>,
        generation: u64,
        get: impl Fn(&Kept) -> Option<T>,
        read: impl FnOnce() -> Option<T>,
        put: impl FnOnce(&mut Kept, T) -> bool,
    ) -> Option<T> {
        {
            let mut kept = self.inner.lock().expect("group cache lock");
            if kept.generation < generation {
                kept.generation = generation;
                kept.clear();
            }
            if kept.generation == generation {
                if let Some(found) = get(&kept) {
                    return Some(found);
                }
            }
        }
        // Read outside the lock: other answers go on meanwhile.
        let value = read()?;
        let mut kept = self.inner.lock().expect("group cache lock");
        // A value read while the store failed may be short: the answer fails, and keeps nothing.
        if kept.generation == generation && !view.failed() {
            if kept.count >= self.max {
                kept.clear();
            }
            if put(&mut kept, value.clone()) {
                kept.count += 1;
            }
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Store;
    use scimlog_projections::{keys, GroupDoc};

    /// A store in a temp dir holding `writes` in its read models.
    fn store_holding(writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.commit(&[], writes, vec![], true).unwrap();
        (dir, store)
    }

    /// The cache keeps at most `--access-cache-groups` nodes, per tenant apart, and a full cache
    /// starts over without changing an answer.
    #[test]
    fn kept_nodes_are_bounded_and_kept_per_tenant() {
        let group = |t: &str, id: &str, name: &str| {
            let at = chrono::Utc::now();
            let doc = GroupDoc {
                id: id.into(),
                version: 1,
                created: at,
                last_modified: at,
                display_name: name.into(),
                attributes: Default::default(),
                member_count: 0,
            };
            (keys::group(t, id), Some(serde_json::to_vec(&doc).unwrap()))
        };
        // The same group id in two tenants, and a third group.
        let (_dir, store) =
            store_holding(vec![group("a", "g1", "Ops of a"), group("b", "g1", "Ops of b"), group("a", "g2", "Sales")]);
        let cache = GroupCache::new(2, 100);
        let cases = [
            ("a", "g1", Some("Ops of a"), 1),
            ("b", "g1", Some("Ops of b"), 2),
            ("a", "g1", Some("Ops of a"), 2),
            // The third node finds the cache full: it starts over with that node alone.
            ("a", "g2", Some("Sales"), 1),
            ("b", "g1", Some("Ops of b"), 2),
            ("a", "nope", None, 1),
        ];
        for (i, (t, id, name, kept)) in cases.into_iter().enumerate() {
            let view = store.view();
            assert!(view.group_generation().is_some(), "a view of an idle store has a generation");
            assert_eq!(cache.display_name(&view, t, id).as_deref(), name, "step {i}: {t}/{id}");
            assert_eq!(cache.inner.lock().unwrap().count, kept, "step {i}: nodes kept");
        }
    }

    /// Scopes that exist are kept beside the nodes, per tenant, within the same bound; a scope
    /// not found is not kept (a client naming environments at random fills nothing).
    #[test]
    fn kept_scopes_are_those_found_per_tenant_within_the_bound() {
        let env = |t: &str, slug: &str, organization: &str| {
            let doc = ScopeDoc {
                kind: ScopeKind::Environment,
                slug: slug.into(),
                created: chrono::Utc::now(),
                created_by: "test".into(),
                position: 1,
                organization: Some(organization.into()),
            };
            (keys::scope(t, ScopeKind::Environment.as_str(), slug), Some(serde_json::to_vec(&doc).unwrap()))
        };
        let (_dir, store) =
            store_holding(vec![env("a", "prod", "org-a"), env("b", "prod", "org-b"), env("a", "stage", "org-a")]);
        let cache = GroupCache::new(2, 100);
        let cases = [
            ("a", "prod", Some("org-a"), 1),
            ("a", "PROD", Some("org-a"), 1),
            ("b", "prod", Some("org-b"), 2),
            ("a", "nope", None, 2),
            ("a", "stage", Some("org-a"), 1),
        ];
        for (i, (t, slug, organization, kept)) in cases.into_iter().enumerate() {
            let view = store.view();
            let found = cache.scope(&view, t, ScopeKind::Environment, slug);
            assert_eq!(found.as_ref().and_then(|d| d.organization.as_deref()), organization, "step {i}: {t}/{slug}");
            assert_eq!(cache.inner.lock().unwrap().count, kept, "step {i}: kept");
        }
    }
}
