//! Coupons, the admin side: create, read, list, edit (optimistic concurrency), delete. Their
//! use at checkout is in `checkout.rs`; the counters are taken atomically in the store.

use platform::clock::rfc3339;
use platform::error::{ApiError, FieldError};
use platform::id::new_id;
use platform::page::{Page, PageRequest};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{self, CouponKind};
use crate::service::Orders;
use crate::store::{self, CouponRow};

/// A coupon as admins write it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CouponInput {
    /// 3–40 of `A-Z 0-9 - _` (stored upper case).
    pub code: String,
    pub kind: CouponKind,
    /// Percent off (1–100) or minor units off (fixed).
    pub value: i64,
    #[serde(default)]
    pub min_subtotal_minor: i64,
    /// RFC 3339; absent = from now on.
    #[serde(default)]
    pub starts_at: Option<String>,
    /// RFC 3339, exclusive; absent = no end.
    #[serde(default)]
    pub ends_at: Option<String>,
    /// Uses in total; absent = unlimited.
    #[serde(default)]
    pub usage_limit: Option<i64>,
    /// Uses per customer; absent = unlimited.
    #[serde(default)]
    pub per_customer_limit: Option<i64>,
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default)]
    pub description: Option<String>,
    /// Required on edits: the version you read (or `If-Match`).
    #[serde(default)]
    pub version: Option<i64>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CouponView {
    pub id: String,
    pub code: String,
    pub kind: CouponKind,
    pub value: i64,
    pub min_subtotal_minor: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_customer_limit: Option<i64>,
    pub used_count: i64,
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl From<CouponRow> for CouponView {
    fn from(row: CouponRow) -> Self {
        Self {
            kind: CouponKind::parse(&row.kind).unwrap_or(CouponKind::Fixed),
            id: row.id,
            code: row.code,
            value: row.value,
            min_subtotal_minor: row.min_subtotal_minor,
            starts_at: row.starts_at.map(rfc3339),
            ends_at: row.ends_at.map(rfc3339),
            usage_limit: row.usage_limit,
            per_customer_limit: row.per_customer_limit,
            used_count: row.used_count,
            active: row.disabled_at.is_none(),
            description: row.description,
            version: row.version,
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
        }
    }
}

fn instant(raw: Option<&str>, field: &str, errors: &mut Vec<FieldError>) -> Option<i64> {
    let at = platform::clock::parse_rfc3339(raw?);
    if at.is_none() {
        errors.push(FieldError::new(field, "must be an RFC 3339 instant"));
    }
    at
}

/// Checks an input and turns it into the row it describes (id, counters and times aside).
fn validate(input: &CouponInput, now: i64) -> Result<CouponRow, ApiError> {
    let mut errors = Vec::new();
    let code = domain::normalize_coupon_code(&input.code).unwrap_or_else(|| {
        errors.push(FieldError::new("code", "must be 3–40 of A-Z, 0-9, - and _"));
        String::new()
    });
    match input.kind {
        CouponKind::Percent if !(1..=100).contains(&input.value) => {
            errors.push(FieldError::new("value", "must be 1–100 (percent)"));
        }
        CouponKind::Fixed if !(1..=1_000_000_000_000).contains(&input.value) => {
            errors.push(FieldError::new("value", "must be a positive amount in minor units"));
        }
        _ => {}
    }
    if !(0..=1_000_000_000_000).contains(&input.min_subtotal_minor) {
        errors.push(FieldError::new("min_subtotal_minor", "must be 0 or more minor units"));
    }
    let starts_at = instant(input.starts_at.as_deref(), "starts_at", &mut errors);
    let ends_at = instant(input.ends_at.as_deref(), "ends_at", &mut errors);
    if let (Some(start), Some(end)) = (starts_at, ends_at) {
        if end <= start {
            errors.push(FieldError::new("ends_at", "must be after starts_at"));
        }
    }
    for (field, limit) in [
        ("usage_limit", input.usage_limit),
        ("per_customer_limit", input.per_customer_limit),
    ] {
        if limit.is_some_and(|n| !(1..=1_000_000_000).contains(&n)) {
            errors.push(FieldError::new(field, "must be at least 1 (leave it out for no limit)"));
        }
    }
    let description = input.description.as_deref().map(str::trim).filter(|d| !d.is_empty());
    if description.is_some_and(|d| d.chars().count() > 500) {
        errors.push(FieldError::new("description", "must be at most 500 characters"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    Ok(CouponRow {
        id: String::new(),
        code,
        kind: input.kind.as_str().to_owned(),
        value: input.value,
        min_subtotal_minor: input.min_subtotal_minor,
        starts_at,
        ends_at,
        usage_limit: input.usage_limit,
        per_customer_limit: input.per_customer_limit,
        used_count: 0,
        disabled_at: (!input.active).then_some(now),
        description: description.map(str::to_owned),
        version: 1,
        created_at: now,
        updated_at: now,
    })
}

impl Orders {
    pub async fn create_coupon(&self, input: &CouponInput) -> Result<CouponView, ApiError> {
        let mut row = validate(input, self.now())?;
        row.id = new_id().to_string();
        store::insert_coupon(self.db.writer(), &row)
            .await
            .map_err(|err| ApiError::conflict_on_unique(err, format!("a coupon with code {} exists", row.code)))?;
        Ok(row.into())
    }

    pub async fn coupon(&self, id: Uuid) -> Result<CouponView, ApiError> {
        store::coupon(self.db.reader(), &id.to_string())
            .await?
            .map(CouponView::from)
            .ok_or_else(|| ApiError::not_found("coupon"))
    }

    pub async fn coupons(&self, page: &PageRequest) -> Result<Page<CouponView>, ApiError> {
        let rows = store::list_coupons(self.db.reader(), page.after.as_deref(), page.fetch_limit()).await?;
        Ok(Page::from_rows(rows, page, |row| row.code.clone()).map(CouponView::from))
    }

    /// Replaces a coupon's terms (its code stays). The version must be current (else 409), and
    /// a usage limit may not go below the uses already taken.
    pub async fn update_coupon(&self, id: Uuid, input: &CouponInput, version: i64) -> Result<CouponView, ApiError> {
        let current = store::coupon(self.db.reader(), &id.to_string())
            .await?
            .ok_or_else(|| ApiError::not_found("coupon"))?;
        let mut row = validate(input, self.now())?;
        if row.code != current.code {
            return Err(ApiError::validation(
                "code",
                "cannot change; create a new coupon instead",
            ));
        }
        if row.usage_limit.is_some_and(|limit| limit < current.used_count) {
            return Err(ApiError::validation(
                "usage_limit",
                format!("cannot be below the {} uses already taken", current.used_count),
            ));
        }
        row.id = current.id.clone();
        if row.disabled_at.is_some() {
            row.disabled_at = current.disabled_at.or(row.disabled_at);
        }
        let updated = store::update_coupon(self.db.writer(), &row, version)
            .await
            .map_err(|err| match err {
                sqlx::Error::Database(db) if db.message().to_ascii_lowercase().contains("check") => {
                    ApiError::Conflict("the coupon was used meanwhile; its usage limit is now too low".to_owned())
                }
                other => other.into(),
            })?;
        if !updated {
            return Err(ApiError::Conflict(
                "the coupon changed since you read it; read it again".to_owned(),
            ));
        }
        self.coupon(id).await
    }

    pub async fn delete_coupon(&self, id: Uuid) -> Result<(), ApiError> {
        if store::delete_coupon(self.db.writer(), &id.to_string()).await? {
            Ok(())
        } else {
            Err(ApiError::not_found("coupon"))
        }
    }
}
