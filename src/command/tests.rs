//! Given the events so far, when a command is decided, then these events (or this refusal).

use chrono::{DateTime, Utc};
use scimlog_projections::{apply, MemKv};
use scimlog_schemas::event::{Event, EventBody as B, EventHash, MemberType, NewEvent, ResourceKind};
use scimlog_schemas::resource::{parse_group, parse_user};
use serde_json::{json, Value};

use super::*;

/// Folds the decisions of `given` into a store, then decides `when`.
fn given_when(given: Vec<Command>, when: Command) -> Result<Decision, Refusal> {
    let mut kv = MemKv::default();
    let mut position = 0;
    for c in given {
        let d = decide(&kv, &CTX, c).expect("given commands succeed");
        for new in d.events {
            position += 1;
            apply(&mut kv, &stamp(position, new));
        }
    }
    decide(&kv, &CTX, when)
}

const CTX: Ctx<'static> =
    Ctx { tenant: "t", namespace: "testkube", default_organization: "acme", limits: WriteLimits::DEFAULT };

fn stamp(position: u64, new: NewEvent) -> Event {
    Event {
        id: uuid::Uuid::nil(),
        position,
        tenant: "t".into(),
        schema_version: 1,
        body: new.body,
        resource_type: new.resource_type,
        resource_id: new.resource_id,
        resource_version: new.resource_version,
        recorded_at: DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap(),
        actor: "test".into(),
        request_id: "r".into(),
        traceparent: None,
        prev_hash: EventHash::GENESIS,
    }
}

fn create_user(id: &str, body: Value) -> Command {
    Command::CreateUser { id: id.into(), input: parse_user(&body).unwrap() }
}
fn replace_user(id: &str, body: Value) -> Command {
    Command::ReplaceUser { id: id.into(), input: parse_user(&body).unwrap(), if_match: None }
}
fn create_group(id: &str, body: Value) -> Command {
    Command::CreateGroup { id: id.into(), input: parse_group(&body).unwrap() }
}
fn bodies(d: &Decision) -> Vec<(String, u64, Value)> {
    d.events
        .iter()
        .map(|e| (e.resource_id.clone(), e.resource_version, serde_json::to_value(&e.body).unwrap()))
        .collect()
}

#[test]
fn create_user_emits_user_created_without_password() {
    let d =
        given_when(vec![], create_user("u1", json!({"userName": "a", "password": "p", "active": "False"}))).unwrap();
    assert_eq!(
        bodies(&d),
        vec![(
            "u1".into(),
            1,
            json!({"type": "user.created", "data": {"attributes": {"userName": "a"}, "active": false}})
        )]
    );
    assert!(d.created);
}

#[test]
fn duplicate_user_name_is_refused_case_insensitively() {
    let r = given_when(
        vec![create_user("u1", json!({"userName": "Alice"}))],
        create_user("u2", json!({"userName": "ALICE"})),
    );
    assert_eq!(r.unwrap_err(), Refusal::Uniqueness("userName \"ALICE\" is already taken".into()));
}

/// A create reads each index once: what it finds decides between a refusal naming the value
/// taken, a reactivation, and a new user.
#[test]
fn a_create_is_refused_reactivates_or_creates_by_what_the_indexes_hold() {
    let given = || {
        vec![
            create_user("u1", json!({"userName": "ann", "externalId": "x-ann"})),
            create_user("u2", json!({"userName": "bob", "externalId": "x-bob", "active": false})),
        ]
    };
    let taken = |d: &str| Err(Refusal::Uniqueness(d.into()));
    let cases: Vec<(&str, Value, Result<(&str, bool), Refusal>)> = vec![
        ("userName of an active user", json!({"userName": "ANN"}), taken("userName \"ANN\" is already taken")),
        (
            "externalId of an active user",
            json!({"userName": "new", "externalId": "x-ann"}),
            taken("externalId \"x-ann\" is already taken by another user"),
        ),
        ("userName of an inactive user", json!({"userName": "bob"}), Ok(("u2", false))),
        ("externalId of an inactive user", json!({"userName": "bobby", "externalId": "x-bob"}), Ok(("u2", false))),
        ("both free", json!({"userName": "cy", "externalId": "x-cy"}), Ok(("u3", true))),
    ];
    for (case, body, want) in cases {
        let got = given_when(given(), create_user("u3", body)).map(|d| (d.resource_id, d.created));
        let want = want.map(|(id, created)| (id.to_string(), created));
        assert_eq!(got, want, "{case}");
    }
}

#[test]
fn post_matching_an_inactive_user_reactivates_it() {
    let d = given_when(
        vec![create_user("u1", json!({"userName": "a", "active": false}))],
        create_user("u2", json!({"userName": "A", "title": "Eng"})),
    )
    .unwrap();
    assert_eq!(d.resource_id, "u1");
    assert!(!d.created);
    let types: Vec<&str> = d.events.iter().map(|e| e.body.event_type().as_str()).collect();
    assert_eq!(types, ["user.updated", "user.reactivated"]);
    assert_eq!(d.events.last().unwrap().resource_version, 3);
}

#[test]
fn put_yields_semantic_events() {
    let given = vec![create_user("u1", json!({"userName": "a", "title": "x", "nickName": "n"}))];
    let d = given_when(given, replace_user("u1", json!({"userName": "a", "title": "y", "active": false}))).unwrap();
    assert_eq!(
        bodies(&d),
        vec![
            (
                "u1".into(),
                2,
                json!({"type": "user.updated", "data": {"changed": {"title": "y"}, "removed": ["nickName"]}})
            ),
            ("u1".into(), 3, json!({"type": "user.deactivated", "data": {}})),
        ]
    );
}

#[test]
fn unchanged_put_emits_nothing() {
    let d = given_when(vec![create_user("u1", json!({"userName": "a"}))], replace_user("u1", json!({"userName": "a"})))
        .unwrap();
    assert!(d.events.is_empty());
}

#[test]
fn stale_if_match_is_refused() {
    let r = given_when(
        vec![create_user("u1", json!({"userName": "a"}))],
        Command::ReplaceUser {
            id: "u1".into(),
            input: parse_user(&json!({"userName": "b"})).unwrap(),
            if_match: Some(7),
        },
    );
    assert_eq!(r.unwrap_err(), Refusal::VersionMismatch { current: 1, expected: 7 });
}

#[test]
fn group_with_unknown_members_skips_and_reports_them() {
    let d = given_when(
        vec![create_user("u1", json!({"userName": "a"}))],
        create_group("g1", json!({"displayName": "Ops", "members": [{"value": "u1"}, {"value": "nope"}]})),
    )
    .unwrap();
    assert_eq!(d.skipped_members, vec!["nope".to_string()]);
    assert_eq!(
        bodies(&d)[1],
        ("g1".into(), 2, json!({"type": "group.member_added", "data": {"memberId": "u1", "memberType": "User"}}))
    );
}

#[test]
fn deleting_a_user_removes_its_memberships_first() {
    let given = vec![
        create_user("u1", json!({"userName": "a"})),
        create_group("g1", json!({"displayName": "A", "members": [{"value": "u1"}]})),
    ];
    let d = given_when(given, Command::DeleteUser { id: "u1".into(), if_match: None }).unwrap();
    let types: Vec<(&str, &str)> =
        d.events.iter().map(|e| (e.resource_id.as_str(), e.body.event_type().as_str())).collect();
    assert_eq!(types, [("g1", "group.member_removed"), ("u1", "user.deleted")]);
}

#[test]
fn group_put_diffs_members_and_renames() {
    let given = vec![
        create_user("u1", json!({"userName": "a"})),
        create_user("u2", json!({"userName": "b"})),
        create_group("g1", json!({"displayName": "A", "members": [{"value": "u1"}]})),
    ];
    let put = Command::ReplaceGroup {
        id: "g1".into(),
        input: parse_group(&json!({"displayName": "B", "members": [{"value": "u2"}]})).unwrap(),
        if_match: None,
    };
    let d = given_when(given, put).unwrap();
    let types: Vec<&str> = d.events.iter().map(|e| e.body.event_type().as_str()).collect();
    assert_eq!(types, ["group.renamed", "group.member_removed", "group.member_added"]);
    let versions: Vec<u64> = d.events.iter().map(|e| e.resource_version).collect();
    assert_eq!(versions, [3, 4, 5]);
    assert!(
        matches!(&d.events[2].body, B::GroupMemberAdded { member_id, member_type: MemberType::User } if member_id == "u2")
    );
}

#[test]
fn duplicate_group_name_and_missing_resources_are_refused() {
    let r = given_when(
        vec![create_group("g1", json!({"displayName": "Ops"}))],
        create_group("g2", json!({"displayName": "OPS"})),
    );
    assert!(matches!(r, Err(Refusal::Uniqueness(_))));
    let r = given_when(vec![], Command::DeleteGroup { id: "g9".into(), if_match: None });
    assert_eq!(r.unwrap_err(), Refusal::NotFound { kind: ResourceKind::Group, id: "g9".into() });
}

#[test]
fn a_role_naming_a_new_environment_creates_it_first() {
    let d = given_when(
        vec![],
        create_user("u1", json!({"userName": "a", "roles": ["urn:testkube:role:environment:Prod:admin"]})),
    )
    .unwrap();
    let got: Vec<(String, String, u64)> = d
        .events
        .iter()
        .map(|e| (e.body.event_type().as_str().to_string(), e.resource_id.clone(), e.resource_version))
        .collect();
    let want = [
        ("user.created", "u1", 1),
        ("organization.created", "acme", 1),
        ("environment.created", "prod", 1),
        ("role.assigned", "u1", 2),
    ];
    assert_eq!(got, want.map(|(a, b, c)| (a.to_string(), b.to_string(), c)));
    assert!(
        matches!(&d.events[0].body, B::UserCreated { attributes, .. } if !attributes.contains_key("roles")),
        "roles travel as their own events"
    );
}

#[test]
fn changing_roles_assigns_and_revokes_the_difference() {
    let given = vec![create_user(
        "u1",
        json!({"userName": "a", "roles": ["urn:testkube:role:environment:prod:admin", "Employee"]}),
    )];
    let d = given_when(
        given,
        replace_user(
            "u1",
            json!({"userName": "a", "roles": ["urn:testkube:role:environment:prod:viewer", "Employee"],
            "entitlements": ["urn:testkube:entitlement:environment:prod"]}),
        ),
    )
    .unwrap();
    let types: Vec<&str> = d.events.iter().map(|e| e.body.event_type().as_str()).collect();
    assert_eq!(
        types,
        ["entitlement.granted", "role.assigned", "role.revoked"],
        "the environment exists already; Employee is no grant"
    );
    let malformed =
        given_when(vec![], create_user("u2", json!({"userName": "b", "roles": ["urn:testkube:role:env:prod:admin"]})));
    assert!(matches!(malformed, Err(Refusal::Invalid(e)) if e.detail.contains("urn:testkube:role:env:prod:admin")));
}
