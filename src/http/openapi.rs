//! The OpenAPI 3.1 description of `/api/v1`, generated from the handlers' `#[utoipa::path]`
//! annotations and their response types, and a docs page for it. Both are public (no token):
//! they describe the API, not the directory. SCIM itself is described by `/Schemas` and
//! `/ResourceTypes` (RFC 7643), not here.
//!
//! - `GET /api/v1/openapi.json`: the document (the same as `scimlog openapi` prints).
//! - `GET /api/docs/`: Swagger UI, its assets compiled into the binary (`utoipa-swagger-ui`'s
//!   `vendored` feature), so the page loads nothing from the network.
//!
//! Architecture Invariant: the routes and the document come from one `OpenApiRouter`, so a route
//! cannot be served without being described, nor described without being served.

use axum::Router;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::AppState;

pub const DOCUMENT_PATH: &str = "/api/v1/openapi.json";
pub const DOCS_PATH: &str = "/api/docs";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "scimlog access and admin API",
        description = "What applications ask the directory (access checks, effective grants, environments, \
                       host links) and what admins do to it (erasure). Every request carries a bearer token \
                       of the tenant; every error is a SCIM error document (RFC 7644 §3.12). Users are \
                       provisioned through SCIM 2.0 at /scim/v2, described by its /Schemas and /ResourceTypes."
    ),
    servers((url = "/api/v1")),
    modifiers(&BearerToken),
    security(("bearer" = [])),
    tags(
        (name = "access", description = "Who may do what, and why"),
        (name = "scopes", description = "Organizations, environments and resource groups"),
        (name = "hosts", description = "Devices linked to the user they belong to"),
        (name = "events", description = "The tenant's log in order (events or admin tokens)"),
        (name = "admin", description = "Admin tokens only"),
        (name = "outbound", description = "Provisioning onward to downstream SCIM applications (admin tokens)"),
    )
)]
struct ApiDoc;

/// Every request needs `Authorization: Bearer <token>` (`scimlog token create`).
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut Document) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("A token from `scimlog token create` (role scim, hosts, events or admin)"))
            .build();
        doc.components.get_or_insert_with(Default::default).add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// Errors are SCIM error documents (`application/scim+json`), and every operation can meet the
/// refusals that come before it runs: no or a bad token, its rate limit, a busy or stopping server.
/// Applied to the merged document (see [`api`]).
struct ErrorResponses;

const COMMON_ERRORS: [(&str, &str); 3] = [
    ("401", "No bearer token, or not a valid one"),
    ("429", "The token's rate limit is reached (see Retry-After)"),
    ("503", "The server is busy or stopping; nothing was written (see Retry-After)"),
];

impl Modify for ErrorResponses {
    fn modify(&self, doc: &mut Document) {
        let error_doc = || ContentBuilder::new().schema(Some(Ref::from_schema_name("ScimErrorDoc"))).build();
        for item in doc.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for op in operations.into_iter().flatten() {
                scim_json_errors(op);
                for (status, description) in COMMON_ERRORS {
                    let response = ResponseBuilder::new()
                        .description(description)
                        .content(super::SCIM_CONTENT_TYPE, error_doc())
                        .build();
                    op.responses.responses.entry(status.into()).or_insert(RefOr::T(response));
                }
            }
        }
    }
}

/// The SCIM error responses an operation declares, under the media type they are sent with
/// (other error bodies, such as RFC 8936's `{"err", "description"}`, stay `application/json`).
fn scim_json_errors(op: &mut Operation) {
    let scim_error = |c: &RefOr<utoipa::openapi::Content>| matches!(c, RefOr::T(c) if matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/ScimErrorDoc")));
    for (status, response) in op.responses.responses.iter_mut() {
        let (RefOr::T(response), true) = (response, status.parse::<u16>().is_ok_and(|s| s >= 400)) else { continue };
        if !response.content.get("application/json").is_some_and(scim_error) {
            continue;
        }
        if let Some(content) = response.content.shift_remove("application/json") {
            response.content.insert(super::SCIM_CONTENT_TYPE.into(), content);
        }
    }
}

/// The `/api/v1` routes (paths relative to it) and their description.
pub fn api() -> (Router<AppState>, Document) {
    let (routes, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(super::admin::router())
        .merge(super::access::router())
        .merge(super::events::router())
        .merge(super::sets::router())
        .merge(super::outbound::router())
        .split_for_parts();
    // After the merge: the derive's own modifiers run before the routes' paths are in.
    ErrorResponses.modify(&mut doc);
    (routes, doc)
}

/// The description alone, as served (`scimlog openapi`).
pub fn document() -> Document {
    api().1
}

/// The document and the docs page, to be merged at the root. Swagger UI's default validator is
/// an online service (a badge fetched from swagger.io): off, so the page makes no outside request.
pub fn docs_router(doc: Document) -> Router<AppState> {
    let config = Config::default().validator_url("none").persist_authorization(false);
    SwaggerUi::new(DOCS_PATH).url(DOCUMENT_PATH, doc).config(config).into()
}
