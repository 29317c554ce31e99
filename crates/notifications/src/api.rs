//! The notifications HTTP API: the admins' notification log and template previews, and each
//! user's in-app inbox.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use platform::auth::{Admin, CurrentUser, TokenVerifier};
use platform::error::{ApiError, ApiResult, Problem};
use platform::extract::{Json, Path, Query};
use platform::page::{Page, PageParams};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::domain::{Channel, LogStatus, NotificationKind};
use crate::service::{InboxItem, InboxPage, LogFilter, LogView, Notifications, PreviewView, TemplateView};

/// Routes anyone may call without a token: none.
pub const PUBLIC_ROUTES: &[&str] = &[];

/// What a previewed HTML page may do: show itself, nothing more (no scripts, no requests).
const PREVIEW_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

pub fn router(notifications: Arc<Notifications>, verifier: Arc<TokenVerifier>) -> Router {
    Router::new()
        .route("/api/v1/admin/notifications", get(list_log))
        .route("/api/v1/admin/notifications/templates", get(list_templates))
        .route(
            "/api/v1/admin/notifications/templates/{kind}/preview",
            get(preview_template),
        )
        .route("/api/v1/users/me/notifications", get(my_inbox))
        .route("/api/v1/users/me/notifications/read-all", post(read_all))
        .route("/api/v1/users/me/notifications/{id}/read", post(mark_read))
        .route("/api/v1/users/me/notifications/{id}/unread", post(mark_unread))
        .layer(Extension(verifier))
        .with_state(notifications)
}

#[derive(OpenApi)]
#[openapi(
    paths(list_log, list_templates, preview_template, my_inbox, mark_read, mark_unread, read_all),
    components(schemas(LogView, TemplateView, TemplateList, PreviewView, InboxItem, InboxPage, ReadAll,
                       NotificationKind, Channel, LogStatus, PreviewFormat)),
    tags((name = "notifications", description = "Emails and in-app notifications: the log, templates and inboxes"))
)]
pub struct NotificationsApi;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogListParams {
    pub kind: Option<NotificationKind>,
    pub status: Option<LogStatus>,
    pub channel: Option<Channel>,
    /// An email address (exactly), or a user id for inbox entries.
    pub recipient: Option<String>,
    pub event_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
}

/// Every email and inbox entry the service made or tried, newest first (admin): status,
/// attempts and the last error.
#[utoipa::path(get, path = "/api/v1/admin/notifications", tag = "notifications", security(("bearer" = [])),
    params(LogListParams, PageParams),
    responses((status = 200, body = Page<LogView>), (status = 400, body = Problem), (status = 401, body = Problem),
              (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn list_log(
    State(notifications): State<Arc<Notifications>>,
    _admin: Admin,
    Query(params): Query<LogListParams>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<LogView>>> {
    let page = page.parse()?;
    let filter = LogFilter {
        kind: params.kind,
        status: params.status,
        channel: params.channel,
        recipient: params.recipient.map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()),
        event_id: params.event_id,
        user_id: params.user_id,
    };
    Ok(Json(notifications.log(&filter, &page).await?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateList {
    pub items: Vec<TemplateView>,
}

/// Every notification template and the event it answers (admin).
#[utoipa::path(get, path = "/api/v1/admin/notifications/templates", tag = "notifications", security(("bearer" = [])),
    responses((status = 200, body = TemplateList), (status = 401, body = Problem), (status = 403, body = Problem)))]
async fn list_templates(State(notifications): State<Arc<Notifications>>, _admin: Admin) -> Json<TemplateList> {
    Json(TemplateList {
        items: notifications.templates(),
    })
}

/// How a preview answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PreviewFormat {
    /// `{kind, subject, html, text}`
    #[default]
    Json,
    /// The HTML part, as `text/html`.
    Html,
    /// The plain-text part, as `text/plain`.
    Text,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PreviewParams {
    #[param(inline)]
    pub format: Option<PreviewFormat>,
}

/// A template rendered with sample data (admin). `kind` is a template's name
/// (`order_placed`) or the event type it answers (`order.created`).
#[utoipa::path(get, path = "/api/v1/admin/notifications/templates/{kind}/preview", tag = "notifications",
    security(("bearer" = [])),
    params(("kind" = String, Path, description = "e.g. `order_placed` or `order.created`"), PreviewParams),
    responses((status = 200, body = PreviewView, description = "JSON; `text/html` or `text/plain` with `format`"),
              (status = 401, body = Problem), (status = 403, body = Problem),
              (status = 404, body = Problem, description = "no such template")))]
async fn preview_template(
    State(notifications): State<Arc<Notifications>>,
    _admin: Admin,
    Path(kind): Path<String>,
    Query(params): Query<PreviewParams>,
) -> ApiResult<Response> {
    let kind = NotificationKind::lookup(&kind).ok_or_else(|| ApiError::not_found("template"))?;
    let preview = notifications.preview(kind);
    Ok(match params.format.unwrap_or_default() {
        PreviewFormat::Json => Json(preview).into_response(),
        PreviewFormat::Html => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                ),
                (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PREVIEW_CSP)),
            ],
            preview.html,
        )
            .into_response(),
        PreviewFormat::Text => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            preview.text,
        )
            .into_response(),
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InboxParams {
    /// Only unread entries.
    pub unread: Option<bool>,
}

/// Your in-app notifications, newest first, with how many are unread.
#[utoipa::path(get, path = "/api/v1/users/me/notifications", tag = "notifications", security(("bearer" = [])),
    params(InboxParams, PageParams),
    responses((status = 200, body = InboxPage), (status = 401, body = Problem), (status = 422, body = Problem)))]
async fn my_inbox(
    State(notifications): State<Arc<Notifications>>,
    user: CurrentUser,
    Query(params): Query<InboxParams>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<InboxPage>> {
    let page = page.parse()?;
    Ok(Json(
        notifications
            .inbox(user.id, params.unread.unwrap_or(false), &page)
            .await?,
    ))
}

/// Marks one of your notifications read.
#[utoipa::path(post, path = "/api/v1/users/me/notifications/{id}/read", tag = "notifications",
    security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = InboxItem), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn mark_read(
    State(notifications): State<Arc<Notifications>>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<InboxItem>> {
    Ok(Json(notifications.mark_read(user.id, id).await?))
}

/// Marks one of your notifications unread.
#[utoipa::path(post, path = "/api/v1/users/me/notifications/{id}/unread", tag = "notifications",
    security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = InboxItem), (status = 401, body = Problem), (status = 404, body = Problem)))]
async fn mark_unread(
    State(notifications): State<Arc<Notifications>>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<InboxItem>> {
    Ok(Json(notifications.mark_unread(user.id, id).await?))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadAll {
    /// How many notifications were unread and are read now.
    pub updated: u64,
}

/// Marks all your notifications read.
#[utoipa::path(post, path = "/api/v1/users/me/notifications/read-all", tag = "notifications",
    security(("bearer" = [])), responses((status = 200, body = ReadAll), (status = 401, body = Problem)))]
async fn read_all(State(notifications): State<Arc<Notifications>>, user: CurrentUser) -> ApiResult<Json<ReadAll>> {
    Ok(Json(ReadAll {
        updated: notifications.read_all(user.id).await?,
    }))
}
