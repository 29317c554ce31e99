//! Identity's HTTP API: routes, request and response bodies, and their OpenAPI description.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Router};
use platform::auth::{Admin, CurrentUser, JwkSet, Role, TokenVerifier};
use platform::clock::rfc3339;
use platform::error::{ApiError, ApiResult, Problem};
use platform::extract::{ClientIp, Json, Path, Query};
use platform::page::{Page, PageParams};
use platform::telemetry::RequestIds;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::service::{AddressInput, Identity, Session};
use crate::store::{AddressRow, UserRow};

/// Routes anyone may call without a token, for the gateway's edge check.
pub const PUBLIC_ROUTES: &[&str] = &[
    "/api/v1/auth/register",
    "/api/v1/auth/login",
    "/api/v1/auth/refresh",
    "/api/v1/auth/logout",
    "/api/v1/auth/password/forgot",
    "/api/v1/auth/password/reset",
    "/api/v1/auth/email/verify",
    "/.well-known/jwks.json",
];

pub fn router(identity: Arc<Identity>, verifier: Arc<TokenVerifier>) -> Router {
    Router::new()
        .route("/api/v1/auth/register", post(register))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/refresh", post(refresh))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/password/forgot", post(forgot_password))
        .route("/api/v1/auth/password/reset", post(reset_password))
        .route("/api/v1/auth/email/verify", post(verify_email))
        .route("/api/v1/auth/email/verify/resend", post(resend_verification))
        .route("/api/v1/users/me", get(me).patch(update_me))
        .route("/api/v1/users/me/password", post(change_password))
        .route("/api/v1/users/me/sessions", get(list_sessions).delete(end_all_sessions))
        .route("/api/v1/users/me/sessions/{id}", axum::routing::delete(end_session))
        .route("/api/v1/users/me/addresses", get(list_addresses).post(create_address))
        .route(
            "/api/v1/users/me/addresses/{id}",
            get(get_address).patch(update_address).delete(delete_address),
        )
        .route("/api/v1/admin/users", get(admin_list_users))
        .route("/api/v1/admin/users/{id}", get(admin_get_user).patch(admin_update_user))
        .route("/.well-known/jwks.json", get(jwks))
        .layer(Extension(verifier))
        .with_state(identity)
}

#[derive(OpenApi)]
#[openapi(
    paths(
        register, login, refresh, logout, forgot_password, reset_password, verify_email, resend_verification,
        me, update_me, change_password, list_sessions, end_session, end_all_sessions, list_addresses, create_address, get_address, update_address, delete_address,
        admin_list_users, admin_get_user, admin_update_user, jwks
    ),
    components(schemas(Problem, Role, JwkSet)),
    tags((name = "auth", description = "Accounts and sessions"), (name = "users", description = "The caller's profile and addresses"),
         (name = "admin", description = "User administration"))
)]
pub struct IdentityApi;

// ----- bodies ---------------------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub email: String,
    pub full_name: String,
    /// At least 8 characters, not a common password.
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgotPasswordRequest {
    pub email: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetPasswordRequest {
    pub token: String,
    pub new_password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyEmailRequest {
    pub token: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMeRequest {
    pub full_name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    pub new_password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminUpdateUserRequest {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    /// The `version` last read; a stale one is refused with 409. `If-Match` works too.
    pub version: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdminUsersQuery {
    /// Only users whose email contains this text.
    pub email: Option<String>,
    /// 1..=100, default 20; larger values are capped at 100.
    #[param(minimum = 1)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub full_name: String,
    pub role: Role,
    pub email_verified: bool,
    pub disabled: bool,
    pub created_at: String,
    pub updated_at: String,
    /// For optimistic concurrency on admin edits.
    pub version: i64,
}

impl From<UserRow> for UserView {
    fn from(user: UserRow) -> Self {
        Self {
            id: Uuid::parse_str(&user.id).unwrap_or_default(),
            email: user.email,
            full_name: user.full_name,
            role: Role::parse(&user.role).unwrap_or(Role::Customer),
            email_verified: user.email_verified_at.is_some(),
            disabled: user.disabled_at.is_some(),
            created_at: rfc3339(user.created_at),
            updated_at: rfc3339(user.updated_at),
            version: user.version,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

impl From<Session> for TokenResponse {
    fn from(session: Session) -> Self {
        Self {
            access_token: session.access_token,
            refresh_token: session.refresh_token,
            token_type: "Bearer".to_owned(),
            expires_in: session.expires_in,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuthResponse {
    pub user: UserView,
    #[serde(flatten)]
    pub tokens: TokenResponse,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AcceptedResponse {
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AddressView {
    pub id: Uuid,
    pub label: Option<String>,
    pub full_name: String,
    pub phone: Option<String>,
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub region: Option<String>,
    pub postal_code: String,
    pub country: String,
    pub is_default: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl From<AddressRow> for AddressView {
    fn from(a: AddressRow) -> Self {
        Self {
            id: Uuid::parse_str(&a.id).unwrap_or_default(),
            label: a.label,
            full_name: a.full_name,
            phone: a.phone,
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            region: a.region,
            postal_code: a.postal_code,
            country: a.country,
            is_default: a.is_default == 1,
            created_at: rfc3339(a.created_at),
            updated_at: rfc3339(a.updated_at),
        }
    }
}

// ----- auth -----------------------------------------------------------------------------------

/// Create a customer account and log in.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = AuthResponse), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn register(
    State(identity): State<Arc<Identity>>,
    ids: RequestIds,
    Json(body): Json<RegisterRequest>,
) -> ApiResult<impl IntoResponse> {
    let user = identity
        .create_user(
            &body.email,
            &body.full_name,
            &body.password,
            Role::Customer,
            Some(&ids.correlation_id),
        )
        .await?;
    // The account exists now: open its first session directly. Going through `login` would
    // re-check the password and the throttles and could fail after the account was created.
    let session = identity.start_session(&user).await?;
    Ok((
        StatusCode::CREATED,
        Json(AuthResponse {
            user: user.into(),
            tokens: session.into(),
        }),
    ))
}

/// Log in with email and password.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = AuthResponse), (status = 401, body = Problem), (status = 403, body = Problem), (status = 429, body = Problem)))]
async fn login(
    State(identity): State<Arc<Identity>>,
    ClientIp(ip): ClientIp,
    Json(body): Json<LoginRequest>,
) -> ApiResult<Json<AuthResponse>> {
    let (user, session) = identity
        .login(&body.email, &body.password, ip.map(|ip| ip.to_string()).as_deref())
        .await?;
    Ok(Json(AuthResponse {
        user: user.into(),
        tokens: session.into(),
    }))
}

/// Trade a refresh token for a new pair. Each refresh token works once; reusing one ends the session.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = Problem)))]
async fn refresh(
    State(identity): State<Arc<Identity>>,
    Json(body): Json<RefreshRequest>,
) -> ApiResult<Json<TokenResponse>> {
    Ok(Json(identity.refresh(&body.refresh_token).await?.into()))
}

/// End the session the refresh token belongs to.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshRequest, responses((status = 204)))]
async fn logout(State(identity): State<Arc<Identity>>, Json(body): Json<RefreshRequest>) -> ApiResult<StatusCode> {
    identity.logout(&body.refresh_token).await?;
    Ok(StatusCode::NO_CONTENT)
}

const FORGOT_ANSWER: &str = "if an account exists for this email, a reset link is on its way";

/// Ask for a password-reset link. The answer is the same whether or not the account exists.
#[utoipa::path(post, path = "/api/v1/auth/password/forgot", tag = "auth", request_body = ForgotPasswordRequest,
    responses((status = 202, body = AcceptedResponse)))]
async fn forgot_password(
    State(identity): State<Arc<Identity>>,
    ids: RequestIds,
    Json(body): Json<ForgotPasswordRequest>,
) -> ApiResult<impl IntoResponse> {
    identity.forgot_password(&body.email, Some(&ids.correlation_id)).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(AcceptedResponse {
            message: FORGOT_ANSWER.to_owned(),
        }),
    ))
}

/// Set a new password with a reset token (single use, expires). Ends every session.
#[utoipa::path(post, path = "/api/v1/auth/password/reset", tag = "auth", request_body = ResetPasswordRequest,
    responses((status = 204), (status = 400, body = Problem), (status = 422, body = Problem)))]
async fn reset_password(
    State(identity): State<Arc<Identity>>,
    Json(body): Json<ResetPasswordRequest>,
) -> ApiResult<StatusCode> {
    identity.reset_password(&body.token, &body.new_password).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Confirm the email address with the token sent to it.
#[utoipa::path(post, path = "/api/v1/auth/email/verify", tag = "auth", request_body = VerifyEmailRequest,
    responses((status = 204), (status = 400, body = Problem)))]
async fn verify_email(
    State(identity): State<Arc<Identity>>,
    Json(body): Json<VerifyEmailRequest>,
) -> ApiResult<StatusCode> {
    identity.verify_email(&body.token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Send a new verification email.
#[utoipa::path(post, path = "/api/v1/auth/email/verify/resend", tag = "auth", security(("bearer" = [])),
    responses((status = 202, body = AcceptedResponse), (status = 409, body = Problem)))]
async fn resend_verification(
    State(identity): State<Arc<Identity>>,
    user: CurrentUser,
    ids: RequestIds,
) -> ApiResult<impl IntoResponse> {
    identity.resend_verification(user.id, Some(&ids.correlation_id)).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(AcceptedResponse {
            message: "a new verification email is on its way".to_owned(),
        }),
    ))
}

// ----- profile --------------------------------------------------------------------------------

/// The caller's profile.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 401, body = Problem)))]
async fn me(State(identity): State<Arc<Identity>>, user: CurrentUser) -> ApiResult<Json<UserView>> {
    Ok(Json(identity.user(user.id).await?.into()))
}

/// Change the caller's name. Unknown fields (such as `role`) are rejected.
#[utoipa::path(patch, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])), request_body = UpdateMeRequest,
    responses((status = 200, body = UserView), (status = 422, body = Problem)))]
async fn update_me(
    State(identity): State<Arc<Identity>>,
    user: CurrentUser,
    Json(body): Json<UpdateMeRequest>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(
        identity
            .update_profile(user.id, body.full_name.as_deref())
            .await?
            .into(),
    ))
}

/// Change the password, knowing the current one. Ends every session.
#[utoipa::path(post, path = "/api/v1/users/me/password", tag = "users", security(("bearer" = [])), request_body = ChangePasswordRequest,
    responses((status = 204), (status = 422, body = Problem)))]
async fn change_password(
    State(identity): State<Arc<Identity>>,
    user: CurrentUser,
    Json(body): Json<ChangePasswordRequest>,
) -> ApiResult<StatusCode> {
    identity
        .change_password(user.id, &body.current_password, &body.new_password)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- sessions -------------------------------------------------------------------------------

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// The session id (the `sid` claim of its access tokens).
    pub id: String,
    pub started_at: String,
    pub refreshed_at: String,
    pub expires_at: String,
    /// True for the session the request's access token belongs to.
    pub current: bool,
}

/// The caller's open sessions, most recently refreshed first.
#[utoipa::path(get, path = "/api/v1/users/me/sessions", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = Vec<SessionView>)))]
async fn list_sessions(State(identity): State<Arc<Identity>>, user: CurrentUser) -> ApiResult<Json<Vec<SessionView>>> {
    let sessions = identity.sessions(user.id).await?;
    Ok(Json(
        sessions
            .into_iter()
            .map(|s| SessionView {
                current: s.family_id == user.session_id,
                id: s.family_id,
                started_at: rfc3339(s.started_at),
                refreshed_at: rfc3339(s.refreshed_at),
                expires_at: rfc3339(s.expires_at),
            })
            .collect(),
    ))
}

/// End one of the caller's sessions: its refresh token stops working.
#[utoipa::path(delete, path = "/api/v1/users/me/sessions/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 204), (status = 404, body = Problem)))]
async fn end_session(
    State(identity): State<Arc<Identity>>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    identity.end_session(user.id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Log out everywhere: every session of the caller ends.
#[utoipa::path(delete, path = "/api/v1/users/me/sessions", tag = "users", security(("bearer" = [])),
    responses((status = 204)))]
async fn end_all_sessions(State(identity): State<Arc<Identity>>, user: CurrentUser) -> ApiResult<StatusCode> {
    identity.end_all_sessions(user.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- addresses ------------------------------------------------------------------------------

/// The caller's addresses, default first.
#[utoipa::path(get, path = "/api/v1/users/me/addresses", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = Vec<AddressView>)))]
async fn list_addresses(State(identity): State<Arc<Identity>>, user: CurrentUser) -> ApiResult<Json<Vec<AddressView>>> {
    Ok(Json(
        identity.addresses(user.id).await?.into_iter().map(Into::into).collect(),
    ))
}

/// Add an address. The first one becomes the default.
#[utoipa::path(post, path = "/api/v1/users/me/addresses", tag = "users", security(("bearer" = [])), request_body = AddressInput,
    responses((status = 201, body = AddressView), (status = 422, body = Problem)))]
async fn create_address(
    State(identity): State<Arc<Identity>>,
    user: CurrentUser,
    Json(body): Json<AddressInput>,
) -> ApiResult<impl IntoResponse> {
    let address = identity.save_address(user.id, None, body).await?;
    Ok((StatusCode::CREATED, Json(AddressView::from(address))))
}

/// One of the caller's addresses.
#[utoipa::path(get, path = "/api/v1/users/me/addresses/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = AddressView), (status = 404, body = Problem)))]
async fn get_address(
    State(identity): State<Arc<Identity>>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<AddressView>> {
    Ok(Json(identity.address(user.id, id).await?.into()))
}

/// Change an address; `is_default: true` makes it the default.
#[utoipa::path(patch, path = "/api/v1/users/me/addresses/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = AddressInput,
    responses((status = 200, body = AddressView), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn update_address(
    State(identity): State<Arc<Identity>>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
    Json(body): Json<AddressInput>,
) -> ApiResult<Json<AddressView>> {
    Ok(Json(identity.save_address(user.id, Some(id), body).await?.into()))
}

/// Delete an address; if it was the default, the newest other address becomes the default.
#[utoipa::path(delete, path = "/api/v1/users/me/addresses/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 204), (status = 404, body = Problem)))]
async fn delete_address(
    State(identity): State<Arc<Identity>>,
    user: CurrentUser,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    identity.delete_address(user.id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ----- admin ----------------------------------------------------------------------------------

/// Users, oldest first, optionally searched by email.
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin", security(("bearer" = [])), params(AdminUsersQuery),
    responses((status = 200, body = Page<UserView>), (status = 403, body = Problem)))]
async fn admin_list_users(
    State(identity): State<Arc<Identity>>,
    _admin: Admin,
    Query(query): Query<AdminUsersQuery>,
) -> ApiResult<Json<Page<UserView>>> {
    let page = PageParams {
        limit: query.limit,
        cursor: query.cursor,
    }
    .parse()?;
    Ok(Json(
        identity
            .list_users(query.email.as_deref(), &page)
            .await?
            .map(Into::into),
    ))
}

/// One user.
#[utoipa::path(get, path = "/api/v1/admin/users/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = UserView), (status = 404, body = Problem)))]
async fn admin_get_user(
    State(identity): State<Arc<Identity>>,
    _admin: Admin,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(identity.user(id).await?.into()))
}

/// Change a user's role or disable the account (which ends its sessions).
#[utoipa::path(patch, path = "/api/v1/admin/users/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = AdminUpdateUserRequest,
    responses((status = 200, body = UserView), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn admin_update_user(
    State(identity): State<Arc<Identity>>,
    Admin(admin): Admin,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<AdminUpdateUserRequest>,
) -> ApiResult<Json<UserView>> {
    let if_match = match headers.get(http::header::IF_MATCH) {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
                .and_then(|v| v.parse::<i64>().ok())
                .ok_or_else(|| ApiError::validation("If-Match", "must be the user's version number"))?,
        ),
        None => None,
    };
    let version = body.version.or(if_match);
    Ok(Json(
        identity
            .admin_update_user(admin.id, id, body.role, body.disabled, version)
            .await?
            .into(),
    ))
}

/// The public keys access tokens are signed with.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth", responses((status = 200, body = JwkSet)))]
async fn jwks(State(identity): State<Arc<Identity>>) -> ApiResult<impl IntoResponse> {
    let set = identity.keys().jwks().await?;
    Ok(([(http::header::CACHE_CONTROL, "public, max-age=60")], Json(set)))
}
