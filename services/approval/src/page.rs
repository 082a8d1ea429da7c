//! The approver page: `GET /holds/{id}` shows one hold to a signed-in approver, who votes on
//! it there (through the API's vote call, with the session and its CSRF token). Chat messages
//! link to it; a rule with `step_up` counts votes from it only, after a fresh sign-in.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use gatehouse_events::ChannelKind;
use gatehouse_signin::SignIn;

use crate::service::Service;

#[derive(Clone)]
struct Page {
    service: Arc<Service>,
    signin: Arc<SignIn>,
}

/// The page, the sign-in routes and the page's assets.
pub fn routes(service: Arc<Service>, signin: Arc<SignIn>) -> Router {
    Router::new()
        .route("/holds/{id}", get(hold_page))
        .with_state(Page {
            service,
            signin: signin.clone(),
        })
        .merge(signin.routes())
        .merge(gatehouse_web::assets_router())
}

async fn hold_page(
    State(page): State<Page>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let here = uri.path().to_owned();
    let Some(session) = page.signin.session(&headers) else {
        return Redirect::to(&page.signin.signin_url(&here)).into_response();
    };
    let principal = session.subject().to_owned();
    if page
        .service
        .approvers()
        .voter(ChannelKind::Api, &principal)
        .is_none()
    {
        return gatehouse_web::refusal_page(
            StatusCode::FORBIDDEN,
            "Not an approver",
            &format!(
                "You are signed in as {principal}, who is not in Gatehouse's approver registry, \
                 so holds are not shown to you and you cannot vote on them."
            ),
        );
    }
    if ulid::Ulid::from_string(&id).is_err() {
        return gatehouse_web::refusal_page(
            StatusCode::NOT_FOUND,
            "No such hold",
            "That link does not name a hold: hold ids are 26 characters (a ULID).",
        );
    }
    gatehouse_web::approve_response(&gatehouse_web::Bootstrap {
        user: Some(gatehouse_web::SignedInUser {
            principal,
            name: session.name().map(str::to_owned),
        }),
        csrf_token: Some(session.csrf_token().to_owned()),
        api_base: Some(String::new()),
        page_base: Some("/holds/".into()),
        signin_path: Some("/signin".into()),
        hold_id: Some(id.to_ascii_uppercase()),
        ..Default::default()
    })
}
