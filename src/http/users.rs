//! `/Users`: create, read, replace, delete and list users (the flow shared with `/Groups` lives in
//! `resource`).

use axum::Router;
use scimlog_schemas::ScimKind;

use super::{resource, AppState};

pub fn router() -> Router<AppState> {
    resource::routes(ScimKind::User)
}
