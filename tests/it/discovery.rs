//! Discovery endpoints tell the truth about what is supported.

use crate::support::TestServer;

#[tokio::test]
async fn discovery_documents() {
    let s = TestServer::start().await;
    let spc = s.get("/ServiceProviderConfig").await;
    assert_eq!(spc.status, 200);
    assert_eq!(spc.body["etag"]["supported"], true);
    assert_eq!(spc.body["filter"]["supported"], true);
    assert_eq!(spc.body["patch"]["supported"], true);
    assert_eq!(spc.body["bulk"]["supported"], true);
    assert_eq!(spc.body["bulk"]["maxOperations"], 1000);
    assert_eq!(spc.body["bulk"]["maxPayloadSize"], 1048576);
    assert_eq!(spc.body["sort"]["supported"], true);
    assert_eq!(spc.body["pagination"]["cursor"], true);
    assert_eq!(spc.body["pagination"]["index"], true);
    assert_eq!(spc.body["pagination"]["defaultPaginationMethod"], "index");
    assert_eq!(spc.body["pagination"]["maxPageSize"], 1000);
    assert_eq!(spc.body["pagination"]["cursorTimeout"], 3600);
    assert_eq!(spc.body["authenticationSchemes"][0]["type"], "oauthbearertoken");
    assert_eq!(spc.body["meta"]["location"], s.url("/ServiceProviderConfig").as_str());

    let rts = s.get("/ResourceTypes").await;
    assert_eq!(rts.body["totalResults"], 4);
    let user_rt = s.get("/ResourceTypes/User").await;
    assert_eq!(user_rt.body["endpoint"], "/Users");
    assert_eq!(
        user_rt.body["schemaExtensions"][0]["schema"],
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
    );

    let schemas = s.get("/Schemas").await;
    assert_eq!(schemas.body["totalResults"], 7);
    let user = s.get("/Schemas/urn:ietf:params:scim:schemas:core:2.0:User").await;
    assert_eq!(user.status, 200);
    let user_name = user.body["attributes"].as_array().unwrap().iter().find(|a| a["name"] == "userName").unwrap();
    assert_eq!(user_name["uniqueness"], "server");
    assert_eq!(user_name["caseExact"], false);
    let password = user.body["attributes"].as_array().unwrap().iter().find(|a| a["name"] == "password").unwrap();
    assert_eq!(password["returned"], "never");
    // Entra's schema discovery looks for the common attributes in both core schemas.
    for urn in ["urn:ietf:params:scim:schemas:core:2.0:User", "urn:ietf:params:scim:schemas:core:2.0:Group"] {
        let doc = s.get(&format!("/Schemas/{urn}")).await.body;
        let attr = |n: &str| doc["attributes"].as_array().unwrap().iter().find(|a| a["name"] == n).cloned();
        let external_id = attr("externalId").unwrap_or_else(|| panic!("{urn} lists externalId"));
        assert_eq!(
            (external_id["mutability"].as_str(), external_id["caseExact"].as_bool()),
            (Some("readWrite"), Some(true))
        );
        let id = attr("id").unwrap_or_else(|| panic!("{urn} lists id"));
        assert_eq!((id["mutability"].as_str(), id["returned"].as_str()), (Some("readOnly"), Some("always")));
        let meta = attr("meta").unwrap_or_else(|| panic!("{urn} lists meta"));
        let subs: Vec<&str> =
            meta["subAttributes"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
        assert_eq!(subs, ["resourceType", "created", "lastModified", "location", "version"]);
    }
    s.get("/Schemas/urn:nope").await.assert_error(404, None, "urn:nope");
}
