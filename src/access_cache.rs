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
//! The same nodes name the groups of a user in SCIM answers (a user's `groups`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use scimlog_projections::access::{self, Effective, GroupNode, TooLarge};
use scimlog_projections::UserHead;

use crate::log::StateView;

pub struct GroupCache {
    /// Most nodes kept (`--access-cache-groups`; 0: no cache). At the limit it starts over.
    max: usize,
    /// `--max-scan`: every node is read with its parents up to this limit (+ 1), whatever the
    /// budget of the answer that reads it, so a kept node is complete for every answer.
    node_limit: usize,
    inner: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    generation: u64,
    /// tenant → group id → node: looked up by `&str` without building a key (an access check
    /// through nested groups looks up a dozen nodes).
    nodes: HashMap<String, HashMap<String, Arc<GroupNode>>>,
    /// How many nodes `nodes` holds.
    count: usize,
}

impl Kept {
    fn get(&self, t: &str, group: &str) -> Option<&Arc<GroupNode>> {
        self.nodes.get(t)?.get(group)
    }

    fn clear(&mut self) {
        self.nodes.clear();
        self.count = 0;
    }

    fn insert(&mut self, t: &str, group: &str, node: Arc<GroupNode>) {
        let tenant = match self.nodes.get_mut(t) {
            Some(tenant) => tenant,
            None => self.nodes.entry(t.to_string()).or_default(),
        };
        if tenant.insert(group.to_string(), node).is_none() {
            self.count += 1;
        }
    }
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
        let (budget, limit) = (budget.min(self.node_limit), self.node_limit);
        match view.group_generation() {
            Some(generation) if self.max > 0 => access::effective_with(view, t, user, budget, &mut |group: &str| {
                self.node(view, generation, t, group, limit)
            }),
            _ => access::effective(view, t, user, budget, limit),
        }
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

    fn node(&self, view: &StateView<'_>, generation: u64, t: &str, group: &str, limit: usize) -> Arc<GroupNode> {
        {
            let mut kept = self.inner.lock().expect("group cache lock");
            if kept.generation < generation {
                kept.generation = generation;
                kept.clear();
            }
            if kept.generation == generation {
                if let Some(n) = kept.get(t, group) {
                    return n.clone();
                }
            }
        }
        // Read outside the lock: other answers go on meanwhile.
        let node = Arc::new(access::group_node(view, t, group, limit));
        let mut kept = self.inner.lock().expect("group cache lock");
        // A node read while the store failed may be short: the answer fails, and keeps nothing.
        if kept.generation == generation && !view.failed() {
            if kept.count >= self.max {
                kept.clear();
            }
            kept.insert(t, group, node.clone());
        }
        node
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Store;
    use scimlog_projections::{keys, GroupDoc};

    /// The cache keeps at most `--access-cache-groups` nodes, per tenant apart, and a full cache
    /// starts over without changing an answer.
    #[test]
    fn kept_nodes_are_bounded_and_kept_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
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
        let writes = [group("a", "g1", "Ops of a"), group("b", "g1", "Ops of b"), group("a", "g2", "Sales")];
        store.commit(&[], writes.into_iter(), vec![], true).unwrap();
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
}
