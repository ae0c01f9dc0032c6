//! Listing: sorting, RFC 9865 cursors, and Entra's twice-encoded filter values.

use serde_json::json;

use crate::support::{q, TestServer};

fn names(body: &serde_json::Value) -> Vec<String> {
    body["Resources"].as_array().unwrap().iter().map(|r| r["userName"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn sort_by_and_sort_order() {
    let s = TestServer::start().await;
    for (n, title) in [("carol", Some("b")), ("alice", None), ("Bob", Some("a"))] {
        let mut body = json!({"userName": n});
        if let Some(t) = title {
            body["title"] = json!(t);
        }
        s.post("/Users", &body).await;
    }
    assert_eq!(names(&s.get("/Users?sortBy=userName").await.body), ["alice", "Bob", "carol"], "without case");
    assert_eq!(names(&s.get("/Users?sortBy=userName&sortOrder=descending").await.body), ["carol", "Bob", "alice"]);
    assert_eq!(names(&s.get("/Users?sortBy=title").await.body), ["Bob", "carol", "alice"], "missing values last");
    let page = s.get("/Users?sortBy=userName&startIndex=2&count=1").await.body;
    assert_eq!(names(&page), ["Bob"]);
    s.get("/Users?sortBy=userName&sortOrder=sideways").await.assert_error(400, Some("invalidValue"), "sideways");
    s.get("/Users?sortBy=1bad").await.assert_error(400, Some("invalidValue"), "1bad");
}

#[tokio::test]
async fn cursor_pagination() {
    let s = TestServer::start().await;
    for i in 0..12 {
        s.post("/Users", &json!({"userName": format!("c{i:02}")})).await;
    }
    let mut seen = Vec::new();
    let mut url = "/Users?cursor=&count=5".to_string();
    let mut pages = 0;
    loop {
        let page = s.get(&url).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert_eq!(page.body["totalResults"], 12);
        assert!(page.body.get("startIndex").is_none());
        seen.extend(names(&page.body));
        pages += 1;
        match page.body["nextCursor"].as_str() {
            Some(c) => url = format!("/Users?cursor={}&count=5", q(c)),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..12).map(|i| format!("c{i:02}")).collect();
    assert_eq!(seen, expected, "every user once, in a stable order");

    // A cursor continues only its own query, cannot be forged, and not mixed with startIndex.
    let first = s.get("/Users?cursor=&count=5").await.body["nextCursor"].as_str().unwrap().to_string();
    let other = s.get(&format!("/Users?cursor={}&count=5&filter={}", q(&first), q("userName sw \"c\""))).await;
    other.assert_error(400, Some("invalidCursor"), "not issued for this query");
    let mut forged = first.clone();
    forged.insert(3, 'x');
    s.get(&format!("/Users?cursor={}", q(&forged))).await.assert_error(400, Some("invalidCursor"), "");
    s.get(&format!("/Users?cursor={}&startIndex=2", q(&first))).await.assert_error(
        400,
        Some("invalidValue"),
        "not both",
    );

    // Deleting users on an earlier page does not make the next page skip anyone.
    let page1 = s.get("/Users?cursor=&count=5").await.body;
    let id0 = page1["Resources"][0]["id"].as_str().unwrap().to_string();
    s.delete(&format!("/Users/{id0}")).await;
    let page2 = s.get(&format!("/Users?cursor={}&count=5", q(page1["nextCursor"].as_str().unwrap()))).await.body;
    assert_eq!(names(&page2)[0], "c05");
}

#[tokio::test]
async fn twice_encoded_filter_values_are_decoded() {
    let s = TestServer::start().await;
    s.post("/Users", &json!({"userName": "entra@example.com"})).await;
    // `%2540` arrives as `%40` after the query is decoded once.
    let r = s.get("/Users?filter=userName%20eq%20%22entra%2540example.com%22").await;
    assert_eq!(r.body["totalResults"], 1, "{}", r.body);
}

#[tokio::test]
async fn meta_last_modified_ranges_use_the_index_and_follow_changes() {
    let s = TestServer::start().await;
    let mut stamps = Vec::new();
    let mut ids = Vec::new();
    for n in ["lm1", "lm2", "lm3"] {
        let r = s.post("/Users", &json!({"userName": n})).await;
        stamps.push(r.body["meta"]["lastModified"].as_str().unwrap().to_string());
        ids.push(r.id());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let count = |f: String| {
        let s = &s;
        async move { names(&s.get(&format!("/Users?filter={}&sortBy=userName", q(&f))).await.body) }
    };
    assert_eq!(count(format!("meta.lastModified gt \"{}\"", stamps[0])).await, ["lm2", "lm3"]);
    assert_eq!(count(format!("meta.lastModified ge \"{}\"", stamps[1])).await, ["lm2", "lm3"]);
    assert_eq!(count(format!("meta.lastModified lt \"{}\"", stamps[1])).await, ["lm1"]);
    assert_eq!(count(format!("meta.lastModified le \"{}\"", stamps[1])).await, ["lm1", "lm2"]);
    assert_eq!(count(format!("meta.lastModified eq \"{}\"", stamps[2])).await, ["lm3"]);
    // A change moves the resource in the index.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    s.put(&format!("/Users/{}", ids[0]), &json!({"userName": "lm1", "title": "moved"})).await;
    assert_eq!(count(format!("meta.lastModified gt \"{}\"", stamps[2])).await, ["lm1"]);
    assert_eq!(count(format!("meta.lastModified lt \"{}\"", stamps[1])).await, Vec::<String>::new());
}

/// RFC 7644 §3.4.2.2: a comparison the attribute's type does not allow is 400 `invalidFilter`
/// naming it, on every list and search, never an empty 200.
#[tokio::test]
async fn comparisons_the_type_does_not_allow_are_refused() {
    let s = TestServer::start().await;
    s.post("/Users", &json!({"userName": "typed", "active": true})).await;
    let filter = crate::support::q("active gt true");
    s.get(&format!("/Users?filter={filter}")).await.assert_error(400, Some("invalidFilter"), "active is a boolean");
    let search = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": "meta.lastModified co \"2026\""});
    s.post("/.search", &search).await.assert_error(400, Some("invalidFilter"), "is a dateTime");
    let ok = s.get(&format!("/Users?filter={}", crate::support::q("active eq true"))).await;
    assert_eq!(ok.body["totalResults"], 1);
    s.stop().await;
}

/// RFC 7644 §3.4.2.3: sorting by a multi-valued attribute sorts by each resource's primary value.
#[tokio::test]
async fn sorting_by_a_multi_valued_attribute_uses_the_primary_value() {
    let s = TestServer::start().await;
    // By first elements the order would be first, second; by primary values it is second, first.
    s.post(
        "/Users",
        &json!({"userName": "first", "emails": [{"value": "a@x.org"}, {"value": "z@x.org", "primary": true}]}),
    )
    .await;
    s.post(
        "/Users",
        &json!({"userName": "second", "emails": [{"value": "y@x.org"}, {"value": "m@x.org", "primary": true}]}),
    )
    .await;
    for path in ["emails", "emails.value"] {
        let r = s.get(&format!("/Users?sortBy={path}")).await;
        let names: Vec<&str> =
            r.body["Resources"].as_array().unwrap().iter().map(|u| u["userName"].as_str().unwrap()).collect();
        assert_eq!(names, ["second", "first"], "sortBy={path}");
    }
    s.stop().await;
}

/// `schemas eq "<extension urn>"` finds the resources that carry the extension, as their
/// `schemas` say.
#[tokio::test]
async fn schemas_filters_find_resources_by_extension() {
    let s = TestServer::start().await;
    let ent = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
    let with = s.post("/Users", &json!({"userName": "with-ext", ent: {"department": "Ops"}})).await;
    assert!(with.body["schemas"].as_array().unwrap().contains(&json!(ent)));
    s.post("/Users", &json!({"userName": "without-ext"})).await;
    let found = s.get(&format!("/Users?filter={}", crate::support::q(&format!("schemas eq \"{ent}\"")))).await;
    assert_eq!(names(&found.body), ["with-ext"]);
    let core = crate::support::q("schemas eq \"urn:ietf:params:scim:schemas:core:2.0:User\"");
    assert_eq!(s.get(&format!("/Users?filter={core}")).await.body["totalResults"], 2);
    let access = "urn:scimlog:params:scim:schemas:extension:access:2.0:Group";
    s.post(
        "/Groups",
        &json!({"displayName": "granting", access: {"roles": ["urn:scimlog:role:environment:prod:admin"]}}),
    )
    .await;
    s.post("/Groups", &json!({"displayName": "plain"})).await;
    let groups = s.get(&format!("/Groups?filter={}", crate::support::q(&format!("schemas eq \"{access}\"")))).await;
    assert_eq!(groups.body["totalResults"], 1, "{}", groups.body);
    assert_eq!(groups.body["Resources"][0]["displayName"], "granting");
    s.stop().await;
}
