//! `/Groups`: create, read, replace, delete and list groups with their members (the flow shared
//! with `/Users` lives in `resource`).

use axum::Router;
use scimlog_schemas::ScimKind;

use super::{resource, AppState};

pub fn router() -> Router<AppState> {
    resource::routes(ScimKind::Group)
}
