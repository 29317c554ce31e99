//! Returns: a customer asks to return delivered items within the window → an admin approves or
//! rejects → the items are received (stock goes back) → the money is refunded. Each step is a
//! compare-and-set on the return's status and moves the order through the state machine.

use platform::clock::rfc3339;
use platform::error::{ApiError, FieldError};
use platform::id::new_id;
use platform::page::{Page, PageRequest};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{self, OrderStatus, ReturnStatus, Step, Trigger};
use crate::service::{clean_reason, Actor, Orders};
use crate::store::{self, ReturnLineRow, ReturnRow, TimelineEntry};

pub const RETURN_REQUESTED: &str = "return.requested";
pub const RETURN_APPROVED: &str = "return.approved";
pub const RETURN_REJECTED: &str = "return.rejected";
/// `{return_id, order_id, lines}`: the items are back; inventory restocks them.
pub const RETURN_RECEIVED: &str = "return.received";
pub const RETURN_REFUNDED: &str = "return.refunded";

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ReturnItem {
    pub sku: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ReturnRequest {
    pub items: Vec<ReturnItem>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReturnLineView {
    pub sku: String,
    pub quantity: i64,
    /// What these units refund (minor units).
    pub refund: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReturnView {
    pub id: String,
    pub order_id: String,
    pub status: ReturnStatus,
    pub reason: String,
    pub items: Vec<ReturnLineView>,
    /// What the return refunds in total (minor units).
    pub refund: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_note: Option<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl ReturnView {
    fn from_rows(row: ReturnRow, lines: Vec<ReturnLineRow>) -> Self {
        Self {
            status: ReturnStatus::parse(&row.status).unwrap_or(ReturnStatus::Requested),
            items: lines
                .into_iter()
                .map(|l| ReturnLineView {
                    sku: l.sku,
                    quantity: l.quantity,
                    refund: l.refund_minor,
                })
                .collect(),
            id: row.id,
            order_id: row.order_id,
            reason: row.reason,
            refund: row.refund_minor,
            decision_note: row.decision_note,
            version: row.version,
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
        }
    }
}

/// What an admin decides on a return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnDecision {
    Approve,
    Reject,
    /// The items arrived back: restock, refund.
    Receive,
}

/// The share of what was paid for goods that `value` of them stands for (discount and tax
/// included, shipping not), rounded down so refunds never exceed the capture.
fn refund_for(value: i64, subtotal: i64, total: i64, shipping: i64) -> i64 {
    if subtotal <= 0 {
        return 0;
    }
    let paid_for_goods = i128::from((total - shipping).max(0));
    i64::try_from(i128::from(value) * paid_for_goods / i128::from(subtotal)).unwrap_or(0)
}

impl Orders {
    /// The customer asks to return delivered items, within the return window.
    pub async fn request_return(
        &self,
        order_id: Uuid,
        caller: Uuid,
        request: &ReturnRequest,
        correlation_id: Option<&str>,
    ) -> Result<ReturnView, ApiError> {
        let order = self.row(&order_id.to_string()).await?;
        if order.user_id != caller.to_string() {
            return Err(ApiError::not_found("order"));
        }
        let reason = clean_reason(Some(&request.reason))?
            .ok_or_else(|| ApiError::validation("reason", "tell us why (1–500 characters)"))?;
        if request.items.is_empty() || request.items.len() > 100 {
            return Err(ApiError::validation("items", "name 1–100 items to return"));
        }
        let lines = store::lines_of(self.db.reader(), std::slice::from_ref(&order.id)).await?;
        let mut errors = Vec::new();
        let mut return_lines = Vec::new();
        for (index, item) in request.items.iter().enumerate() {
            let Some(line) = lines.iter().find(|l| l.sku == item.sku) else {
                errors.push(FieldError::new(format!("items/{index}/sku"), "is not in this order"));
                continue;
            };
            if return_lines.iter().any(|l: &ReturnLineRow| l.sku == item.sku) {
                errors.push(FieldError::new(format!("items/{index}/sku"), "is named twice"));
                continue;
            }
            let left = line.quantity - line.returned_quantity;
            if item.quantity < 1 || item.quantity > left {
                errors.push(FieldError::new(
                    format!("items/{index}/quantity"),
                    format!("must be 1–{left} (what is left to return)"),
                ));
                continue;
            }
            return_lines.push(ReturnLineRow {
                return_id: String::new(),
                line_no: i64::try_from(return_lines.len()).unwrap_or(0) + 1,
                sku: item.sku.clone(),
                quantity: item.quantity,
                refund_minor: refund_for(
                    line.unit_price_minor * item.quantity,
                    order.subtotal_minor,
                    order.total_minor,
                    order.shipping_minor,
                ),
            });
        }
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        let now = self.now();
        let window = i64::try_from(self.settings.return_window.as_millis()).unwrap_or(i64::MAX);
        if let Some(delivered) = order.delivered_at {
            if now > delivered.saturating_add(window) {
                return Err(ApiError::Unprocessable(format!(
                    "the return window of {} days after delivery has passed",
                    window / 86_400_000
                )));
            }
        }
        let from = OrderStatus::parse(&order.status).unwrap_or(OrderStatus::Pending);
        let to = match domain::next(from, Trigger::RequestReturn) {
            Step::Move(to) => to,
            Step::Refuse(why) => return Err(ApiError::Conflict(why.to_owned())),
            Step::Stay => return Err(ApiError::Conflict("a return is already open for this order".to_owned())),
        };
        let id = new_id().to_string();
        for line in &mut return_lines {
            line.return_id = id.clone();
        }
        let row = ReturnRow {
            id: id.clone(),
            order_id: order.id.clone(),
            user_id: order.user_id.clone(),
            status: ReturnStatus::Requested.as_str().to_owned(),
            reason: reason.clone(),
            refund_minor: return_lines.iter().map(|l| l.refund_minor).sum(),
            decision_note: None,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.db.begin().await?;
        if store::set_status(&mut tx, &order.id, from.as_str(), to.as_str(), None, now)
            .await?
            .is_none()
        {
            tx.rollback().await?;
            return Err(ApiError::Conflict("the order changed meanwhile; try again".to_owned()));
        }
        let actor = Actor::Customer(caller);
        self.record_move(
            &mut tx,
            &order,
            from,
            to,
            Trigger::RequestReturn,
            &actor,
            Some(&reason),
            now,
            correlation_id,
        )
        .await?;
        store::insert_return(&mut tx, &row, &return_lines).await?;
        Self::emit(
            &mut tx,
            RETURN_REQUESTED,
            &order.id,
            json!({
                "return_id": id, "order_id": order.id, "number": order.number, "user_id": order.user_id,
                "status": ReturnStatus::Requested.as_str(), "reason": reason, "refund_minor": row.refund_minor,
                "currency": order.currency,
                "lines": return_lines.iter().map(|l| json!({"sku": l.sku, "quantity": l.quantity})).collect::<Vec<_>>(),
            }),
            correlation_id,
        )
        .await?;
        tx.commit().await?;
        self.outbox.wake();
        Ok(ReturnView::from_rows(row, return_lines))
    }

    pub async fn returns_of(&self, order_id: Uuid, caller: Uuid, admin: bool) -> Result<Vec<ReturnView>, ApiError> {
        let order = self.row(&order_id.to_string()).await?;
        if !admin && order.user_id != caller.to_string() {
            return Err(ApiError::not_found("order"));
        }
        let rows = store::returns_of_order(self.db.reader(), &order.id).await?;
        self.return_views(rows).await
    }

    async fn return_views(&self, rows: Vec<ReturnRow>) -> Result<Vec<ReturnView>, ApiError> {
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let mut lines = store::return_lines(self.db.reader(), &ids).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let own: Vec<ReturnLineRow> = lines.extract_if(.., |l| l.return_id == row.id).collect();
                ReturnView::from_rows(row, own)
            })
            .collect())
    }

    pub async fn return_by_id(&self, id: Uuid) -> Result<ReturnView, ApiError> {
        let row = store::return_row(self.db.reader(), &id.to_string())
            .await?
            .ok_or_else(|| ApiError::not_found("return"))?;
        Ok(self.return_views(vec![row]).await?.remove(0))
    }

    pub async fn list_returns(&self, status: Option<&str>, page: &PageRequest) -> Result<Page<ReturnView>, ApiError> {
        if let Some(status) = status {
            ReturnStatus::parse(status).ok_or_else(|| ApiError::validation("status", "is not a return status"))?;
        }
        let rows = store::list_returns(self.db.reader(), status, page.after.as_deref(), page.fetch_limit()).await?;
        let page = Page::from_rows(rows, page, |r| r.id.clone());
        let next_cursor = page.next_cursor;
        Ok(Page {
            items: self.return_views(page.items).await?,
            next_cursor,
        })
    }

    /// An admin approves, rejects or receives a return. Receiving restocks the items (through
    /// return.received) and refunds the return's amount through payments, then closes the order
    /// as refunded.
    pub async fn decide_return(
        &self,
        id: Uuid,
        admin: Uuid,
        decision: ReturnDecision,
        note: Option<&str>,
        correlation_id: Option<&str>,
    ) -> Result<ReturnView, ApiError> {
        let note = clean_reason(note)?;
        let row = store::return_row(self.db.reader(), &id.to_string())
            .await?
            .ok_or_else(|| ApiError::not_found("return"))?;
        let status = ReturnStatus::parse(&row.status).unwrap_or(ReturnStatus::Requested);
        let (from, to, order_trigger, event) = match (decision, status) {
            (ReturnDecision::Approve, ReturnStatus::Requested) => {
                (status, ReturnStatus::Approved, None, RETURN_APPROVED)
            }
            (ReturnDecision::Reject, ReturnStatus::Requested | ReturnStatus::Approved) => (
                status,
                ReturnStatus::Rejected,
                Some(Trigger::RejectReturn),
                RETURN_REJECTED,
            ),
            (ReturnDecision::Receive, ReturnStatus::Approved) => (
                status,
                ReturnStatus::Received,
                Some(Trigger::ReceiveReturn),
                RETURN_RECEIVED,
            ),
            (ReturnDecision::Receive, ReturnStatus::Received) => {
                // Received before but the refund did not go through: try the refund again.
                return self.refund_return(row, admin, correlation_id).await;
            }
            (_, current) => {
                return Err(ApiError::Conflict(format!(
                    "the return is {}; it cannot be {}",
                    current.as_str(),
                    match decision {
                        ReturnDecision::Approve => "approved",
                        ReturnDecision::Reject => "rejected",
                        ReturnDecision::Receive => "received (approve it first)",
                    }
                )))
            }
        };
        let order = self.row(&row.order_id).await?;
        let now = self.now();
        let actor = Actor::Admin(admin);
        let lines = store::return_lines(self.db.reader(), std::slice::from_ref(&row.id)).await?;
        let mut tx = self.db.begin().await?;
        if !store::set_return_status(&mut tx, &row.id, from.as_str(), to.as_str(), note.as_deref(), now).await? {
            tx.rollback().await?;
            return Err(ApiError::Conflict(
                "the return changed meanwhile; read it again".to_owned(),
            ));
        }
        if let Some(trigger) = order_trigger {
            let order_from = OrderStatus::parse(&order.status).unwrap_or(OrderStatus::Pending);
            match domain::next(order_from, trigger) {
                Step::Move(order_to) => {
                    if store::set_status(&mut tx, &order.id, order_from.as_str(), order_to.as_str(), None, now)
                        .await?
                        .is_none()
                    {
                        tx.rollback().await?;
                        return Err(ApiError::Conflict("the order changed meanwhile; try again".to_owned()));
                    }
                    self.record_move(
                        &mut tx,
                        &order,
                        order_from,
                        order_to,
                        trigger,
                        &actor,
                        note.as_deref(),
                        now,
                        correlation_id,
                    )
                    .await?;
                }
                Step::Stay => {}
                Step::Refuse(why) => {
                    tx.rollback().await?;
                    return Err(ApiError::Conflict(why.to_owned()));
                }
            }
        }
        if decision == ReturnDecision::Receive {
            for line in &lines {
                if !store::add_returned_quantity(&mut tx, &order.id, &line.sku, line.quantity).await? {
                    tx.rollback().await?;
                    return Err(ApiError::Conflict(format!(
                        "more units of {} would be returned than were bought",
                        line.sku
                    )));
                }
            }
        }
        let label = actor.label();
        store::append_timeline(
            &mut tx,
            TimelineEntry {
                order_id: &order.id,
                at: now,
                kind: "return",
                from_status: Some(from.as_str()),
                to_status: Some(to.as_str()),
                actor: &label,
                reason: note.as_deref(),
            },
        )
        .await?;
        Self::emit(
            &mut tx,
            event,
            &order.id,
            json!({
                "return_id": row.id, "order_id": order.id, "number": order.number, "user_id": order.user_id,
                "status": to.as_str(), "note": note, "refund_minor": row.refund_minor, "currency": order.currency,
                "lines": lines.iter().map(|l| json!({"sku": l.sku, "quantity": l.quantity})).collect::<Vec<_>>(),
            }),
            correlation_id,
        )
        .await?;
        tx.commit().await?;
        self.outbox.wake();
        if decision == ReturnDecision::Receive {
            let received = store::return_row(self.db.reader(), &row.id)
                .await?
                .ok_or_else(|| ApiError::not_found("return"))?;
            return self.refund_return(received, admin, correlation_id).await;
        }
        self.return_by_id(id).await
    }

    /// Refunds a received return through payments (once: the key is the return's id), then
    /// marks it refunded and the order refunded.
    async fn refund_return(
        &self,
        row: ReturnRow,
        admin: Uuid,
        correlation_id: Option<&str>,
    ) -> Result<ReturnView, ApiError> {
        let order_id = Uuid::parse_str(&row.order_id).map_err(|err| ApiError::Internal(err.into()))?;
        let id = Uuid::parse_str(&row.id).map_err(|err| ApiError::Internal(err.into()))?;
        if row.refund_minor > 0 {
            self.clients
                .payments
                .refund(
                    order_id,
                    Some(row.refund_minor),
                    "return",
                    &format!("return:{}", row.id),
                    correlation_id,
                )
                .await?;
        }
        let order = self.row(&row.order_id).await?;
        let returned = store::return_lines(self.db.reader(), std::slice::from_ref(&row.id)).await?;
        let now = self.now();
        let mut tx = self.db.begin().await?;
        if store::set_return_status(
            &mut tx,
            &row.id,
            ReturnStatus::Received.as_str(),
            ReturnStatus::Refunded.as_str(),
            None,
            now,
        )
        .await?
        {
            Self::emit(
                &mut tx,
                RETURN_REFUNDED,
                &row.order_id,
                json!({
                    "return_id": row.id, "order_id": row.order_id, "number": order.number, "user_id": row.user_id,
                    "status": ReturnStatus::Refunded.as_str(), "refund_minor": row.refund_minor,
                    "currency": order.currency,
                    "lines": returned.iter().map(|l| json!({"sku": l.sku, "quantity": l.quantity})).collect::<Vec<_>>(),
                }),
                correlation_id,
            )
            .await?;
        }
        tx.commit().await?;
        self.outbox.wake();
        // Everything back: the order is refunded. Some of it: delivered again, so the rest can
        // still be returned within the window.
        let lines = store::lines_of(self.db.reader(), std::slice::from_ref(&row.order_id)).await?;
        let trigger = if lines.iter().all(|l| l.returned_quantity >= l.quantity) {
            Trigger::Refund
        } else {
            Trigger::PartRefund
        };
        self.apply(
            &row.order_id,
            trigger,
            &Actor::Admin(admin),
            Some("return refunded"),
            None,
            correlation_id,
        )
        .await?;
        self.return_by_id(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_return_refunds_its_share_of_what_was_paid_for_goods() {
        // Goods 10 000, 10 % off, shipping 499, 19 % tax on 9 499: total 11 303.
        // The goods' share paid: 10 804; half the goods → 5 402.
        assert_eq!(refund_for(5_000, 10_000, 11_303, 499), 5_402);
        assert_eq!(refund_for(10_000, 10_000, 11_303, 499), 10_804);
        assert_eq!(refund_for(1, 3, 10, 0), 3, "rounded down");
        assert_eq!(refund_for(5, 0, 10, 0), 0);
    }
}
