//! The delivery HTTP API: agents' assignments and status reports, the customer's tracking of an
//! order, and the admin side (shipments, assignment, delivery codes, agents and their areas).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Router};
use platform::auth::{Admin, CurrentUser, TokenVerifier};
use platform::error::{ApiError, ApiResult, Problem};
use platform::extract::{Json, OptionalJson, Path, Query};
use platform::page::{Page, PageParams};
use platform::telemetry::RequestIds;
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::domain::{Proof, ShipmentStatus};
use crate::service::{
    AdminFilter, AgentInput, AgentView, AssignmentFilter, Delivery, HistoryEntry, IssuedCode, ShipmentView,
    ShippingAddress, StatusUpdate, TrackingStep, TrackingView,
};

/// Routes anyone may call without a token: none.
pub const PUBLIC_ROUTES: &[&str] = &[];

pub fn router(delivery: Arc<Delivery>, verifier: Arc<TokenVerifier>) -> Router {
    Router::new()
        .route("/api/v1/delivery/assignments", get(assignments))
        .route("/api/v1/delivery/shipments/{id}", get(get_shipment))
        .route("/api/v1/delivery/shipments/{id}/status", post(update_status))
        .route("/api/v1/orders/{id}/tracking", get(tracking))
        .route("/api/v1/admin/delivery/shipments", get(admin_shipments))
        .route("/api/v1/admin/delivery/shipments/{id}", get(admin_shipment))
        .route("/api/v1/admin/delivery/shipments/{id}/assign", post(assign))
        .route("/api/v1/admin/delivery/shipments/{id}/code", post(issue_code))
        .route("/api/v1/admin/delivery/shipments/{id}/received", post(receive_return))
        .route("/api/v1/admin/delivery/agents", get(list_agents))
        .route("/api/v1/admin/delivery/agents/{user_id}", get(get_agent).put(put_agent))
        .layer(Extension(verifier))
        .with_state(delivery)
}

#[derive(OpenApi)]
#[openapi(
    paths(assignments, get_shipment, update_status, tracking, admin_shipments, admin_shipment, assign, issue_code,
          receive_return, list_agents, get_agent, put_agent),
    components(schemas(ShipmentView, ShipmentStatus, ShippingAddress, HistoryEntry, Proof, StatusUpdate, TrackingView,
                       TrackingStep, AgentView, AgentInput, AssignRequest, IssuedCode, ReceivedRequest)),
    tags((name = "delivery", description = "Shipments, delivery agents, tracking and proof of delivery"))
)]
pub struct DeliveryApi;

fn parse_status(raw: Option<&str>) -> Result<Option<ShipmentStatus>, ApiError> {
    raw.map(|raw| {
        ShipmentStatus::parse(raw.trim()).ok_or_else(|| ApiError::validation("status", "is not a shipment status"))
    })
    .transpose()
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AssignmentParams {
    /// Only shipments in this status (then `active` is not looked at).
    pub status: Option<String>,
    /// Only the shipments you hold now, assigned up to returned_to_sender (default `true`);
    /// `false` lists delivered and closed ones too.
    pub active: Option<bool>,
}

/// Your shipments, newest first (delivery agents). `recalled: true` marks a parcel whose order
/// was cancelled after pickup: bring it back (`returned_to_sender`), do not deliver it.
#[utoipa::path(get, path = "/api/v1/delivery/assignments", tag = "delivery", security(("bearer" = [])),
    params(AssignmentParams, PageParams),
    responses((status = 200, body = Page<ShipmentView>), (status = 403, body = Problem),
              (status = 422, body = Problem)))]
async fn assignments(
    State(delivery): State<Arc<Delivery>>,
    user: CurrentUser,
    Query(params): Query<AssignmentParams>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<ShipmentView>>> {
    let filter = AssignmentFilter {
        status: parse_status(params.status.as_deref())?,
        active_only: params.active.unwrap_or(true),
    };
    Ok(Json(delivery.assignments(&user, filter, &page.parse()?).await?))
}

/// One shipment with its history: for the agent it is assigned to, or an admin. Another
/// agent gets 404; other roles 403.
#[utoipa::path(get, path = "/api/v1/delivery/shipments/{id}", tag = "delivery", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ShipmentView), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn get_shipment(
    State(delivery): State<Arc<Delivery>>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ShipmentView>> {
    Ok(Json(delivery.shipment_for(id, &user).await?))
}

/// Report a shipment's status (its agent, or an admin): assigned → picked_up → in_transit →
/// out_for_delivery → delivered, or out_for_delivery → failed_attempt → rescheduled (→
/// out_for_delivery) or returned_to_sender (the parcel is on its way back; an admin marks it
/// `returned` once received, through the received route). The same status again changes
/// nothing. A recalled shipment (`recalled: true`: the order was cancelled after pickup) is
/// never delivered: delivered, out_for_delivery and rescheduled are a 409, and it may go
/// returned_to_sender from picked_up, in_transit, out_for_delivery, failed_attempt or
/// rescheduled. Delivering a cash-on-delivery shipment needs the customer's six-digit `code`; a
/// wrong code counts, and after too many the code is locked until an admin issues a new one.
/// `pending`, `assigned`, `returned` and `cancelled` are not set here (422).
#[utoipa::path(post, path = "/api/v1/delivery/shipments/{id}/status", tag = "delivery", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = StatusUpdate,
    responses((status = 200, body = ShipmentView),
              (status = 403, body = Problem, description = "not a delivery agent or an admin"),
              (status = 404, body = Problem, description = "no such shipment, or assigned to another agent"),
              (status = 409, body = Problem, description = "the move is not allowed, or the shipment is recalled; `from` and `to` name it (and `recalled`)"),
              (status = 422, body = Problem, description = "invalid status, note or code; a code missing, wrong or locked")))]
async fn update_status(
    State(delivery): State<Arc<Delivery>>,
    user: CurrentUser,
    ids: RequestIds,
    Path(id): Path<Uuid>,
    Json(body): Json<StatusUpdate>,
) -> ApiResult<Json<ShipmentView>> {
    Ok(Json(
        delivery
            .update_status(id, &user, &body, Some(&ids.correlation_id))
            .await?,
    ))
}

/// Where your order's parcel is: its status, who brings it, and every step with its time and
/// note, oldest first. The order's customer or an admin; anyone else (and an order without a
/// shipment yet) gets 404.
#[utoipa::path(get, path = "/api/v1/orders/{id}/tracking", tag = "delivery", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "the order's id")),
    responses((status = 200, body = TrackingView), (status = 404, body = Problem)))]
async fn tracking(
    State(delivery): State<Arc<Delivery>>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<TrackingView>> {
    Ok(Json(delivery.tracking(id, &user).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdminShipmentParams {
    pub status: Option<String>,
    pub agent_id: Option<Uuid>,
    /// The delivery city, ignoring case and spacing.
    pub city: Option<String>,
    pub order_id: Option<Uuid>,
}

/// Every shipment, newest first, filtered (admin).
#[utoipa::path(get, path = "/api/v1/admin/delivery/shipments", tag = "delivery", security(("bearer" = [])),
    params(AdminShipmentParams, PageParams),
    responses((status = 200, body = Page<ShipmentView>), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn admin_shipments(
    State(delivery): State<Arc<Delivery>>,
    _admin: Admin,
    Query(params): Query<AdminShipmentParams>,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<ShipmentView>>> {
    let filter = AdminFilter {
        status: parse_status(params.status.as_deref())?,
        agent_id: params.agent_id,
        city: params.city,
        order_id: params.order_id,
    };
    Ok(Json(delivery.admin_list(&filter, &page.parse()?).await?))
}

/// One shipment with its history (admin).
#[utoipa::path(get, path = "/api/v1/admin/delivery/shipments/{id}", tag = "delivery", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = ShipmentView), (status = 404, body = Problem)))]
async fn admin_shipment(
    State(delivery): State<Arc<Delivery>>,
    _admin: Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<ShipmentView>> {
    Ok(Json(delivery.shipment(id).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct AssignRequest {
    /// The agent to give the shipment to; left out (or an empty body), the least-loaded active
    /// agent serving the shipment's city.
    #[serde(default)]
    pub agent_id: Option<Uuid>,
}

/// Give a shipment to an agent, or to the least-loaded agent serving its city (admin). A
/// pending shipment becomes assigned; reassigning (assigned, failed_attempt, rescheduled) keeps
/// the status and changes the agent. A parcel on the road (or on its way back) stays with its
/// agent. An agent named here is checked with the identity service first.
#[utoipa::path(post, path = "/api/v1/admin/delivery/shipments/{id}/assign", tag = "delivery", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = AssignRequest,
    responses((status = 200, body = ShipmentView), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "on the road or closed, or no agent serves the city"),
              (status = 422, body = Problem, description = "not an active delivery agent (an agent whose account is gone, disabled or no longer a delivery agent is also made inactive)")))]
async fn assign(
    State(delivery): State<Arc<Delivery>>,
    admin: Admin,
    ids: RequestIds,
    Path(id): Path<Uuid>,
    OptionalJson(body): OptionalJson<AssignRequest>,
) -> ApiResult<Json<ShipmentView>> {
    let agent = body.and_then(|b| b.agent_id);
    Ok(Json(
        delivery
            .assign(id, admin.0.id, agent, Some(&ids.correlation_id))
            .await?,
    ))
}

/// Issue a new delivery code (admin): the old one stops working, wrong tries start over, and the
/// customer is sent the new one. The code is in the answer, for reading it out to the customer.
#[utoipa::path(post, path = "/api/v1/admin/delivery/shipments/{id}/code", tag = "delivery", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = IssuedCode), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "no delivery lies ahead: closed, on its way back, or recalled")))]
async fn issue_code(
    State(delivery): State<Arc<Delivery>>,
    _admin: Admin,
    ids: RequestIds,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<IssuedCode>> {
    Ok(Json(delivery.issue_code(id, Some(&ids.correlation_id)).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ReceivedRequest {
    /// Up to 500 characters, such as the parcel's condition; kept in the history.
    #[serde(default)]
    pub note: Option<String>,
}

/// The parcel is back at the warehouse (admin): a shipment in `returned_to_sender` becomes
/// `returned`, which is final, frees the agent's load, and emits `shipment.returned` (on which
/// orders cancels the order, refunds and restocks). Agents cannot do this. Again on a returned
/// shipment it changes nothing.
#[utoipa::path(post, path = "/api/v1/admin/delivery/shipments/{id}/received", tag = "delivery", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = ReceivedRequest,
    responses((status = 200, body = ShipmentView), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "not returned_to_sender; `from` and `to` name the move"),
              (status = 422, body = Problem, description = "invalid note")))]
async fn receive_return(
    State(delivery): State<Arc<Delivery>>,
    admin: Admin,
    ids: RequestIds,
    Path(id): Path<Uuid>,
    OptionalJson(body): OptionalJson<ReceivedRequest>,
) -> ApiResult<Json<ShipmentView>> {
    let note = body.and_then(|b| b.note);
    Ok(Json(
        delivery
            .receive_return(id, admin.0.id, note.as_deref(), Some(&ids.correlation_id))
            .await?,
    ))
}

/// Delivery agents by user id, with their cities and current load (admin).
#[utoipa::path(get, path = "/api/v1/admin/delivery/agents", tag = "delivery", security(("bearer" = [])),
    params(PageParams), responses((status = 200, body = Page<AgentView>), (status = 403, body = Problem)))]
async fn list_agents(
    State(delivery): State<Arc<Delivery>>,
    _admin: Admin,
    Query(page): Query<PageParams>,
) -> ApiResult<Json<Page<AgentView>>> {
    Ok(Json(delivery.agents(&page.parse()?).await?))
}

/// One delivery agent (admin).
#[utoipa::path(get, path = "/api/v1/admin/delivery/agents/{user_id}", tag = "delivery", security(("bearer" = [])),
    params(("user_id" = Uuid, Path)), responses((status = 200, body = AgentView), (status = 404, body = Problem)))]
async fn get_agent(
    State(delivery): State<Arc<Delivery>>,
    _admin: Admin,
    Path(user_id): Path<Uuid>,
) -> ApiResult<Json<AgentView>> {
    Ok(Json(delivery.agent(user_id).await?))
}

/// Register a user as a delivery agent, or change an agent's cities and activity (admin). The
/// user must have the `delivery_agent` role. `version` (or `If-Match`) is optional; when given
/// it must be the agent's current version.
#[utoipa::path(put, path = "/api/v1/admin/delivery/agents/{user_id}", tag = "delivery", security(("bearer" = [])),
    params(("user_id" = Uuid, Path)), request_body = AgentInput,
    responses((status = 200, body = AgentView, description = "updated"), (status = 201, body = AgentView, description = "registered"),
              (status = 409, body = Problem, description = "stale version"),
              (status = 422, body = Problem, description = "invalid cities, or not a delivery agent")))]
async fn put_agent(
    State(delivery): State<Arc<Delivery>>,
    _admin: Admin,
    headers: HeaderMap,
    Path(user_id): Path<Uuid>,
    Json(body): Json<AgentInput>,
) -> ApiResult<(StatusCode, Json<AgentView>)> {
    let version = if body.version.is_some() || headers.contains_key(header::IF_MATCH) {
        Some(platform::extract::expected_version(body.version, &headers)?)
    } else {
        None
    };
    let (view, created) = delivery.put_agent(user_id, &body, version).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view)))
}
