//! One template per [`NotificationKind`], as plain Rust: each builds a [`Doc`] (a heading and
//! blocks of text, facts, order lines and totals) from the event's data, and one renderer turns
//! every `Doc` into the HTML part, the plain-text part and the inbox line.
//!
//! Escaping lives in that one renderer: templates only ever produce plain text and URLs, so
//! none can forget to escape a value that came from an event. Money is integer minor units
//! formatted by [`platform::money::Money`], never floating point.

use platform::money::{Currency, Money};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::domain::NotificationKind;

/// What a template needs besides the event's data.
#[derive(Debug, Clone, Copy)]
pub struct RenderContext<'a> {
    /// The shop's name, in subjects and the footer.
    pub shop_name: &'a str,
    /// The shop's public base URL; links in mails are built on it.
    pub public_url: &'a str,
    /// Whom to greet, when known (the event's name, else the directory's).
    pub recipient_name: Option<&'a str>,
}

/// A notification, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One line, no control characters.
    pub subject: String,
    pub html: String,
    pub text: String,
    /// One or two sentences for the in-app inbox.
    pub summary: String,
    /// Where the inbox entry leads, as a path below the public URL (e.g. `/orders/{id}`).
    pub link: Option<String>,
}

/// The event's data cannot make this notification (a required field is missing or malformed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the event data does not fit the `{kind}` template: {reason}")]
pub struct RenderError {
    pub kind: &'static str,
    pub reason: String,
}

impl RenderError {
    fn new(kind: NotificationKind, reason: impl Into<String>) -> Self {
        Self {
            kind: kind.as_str(),
            reason: reason.into(),
        }
    }
}

/// Renders `kind` from an event's `data`.
pub fn render(kind: NotificationKind, data: &Value, ctx: &RenderContext<'_>) -> Result<Rendered, RenderError> {
    let doc = match kind {
        NotificationKind::Welcome => welcome(&parse(kind, data)?, ctx),
        NotificationKind::VerifyEmail => verify_email(kind, &parse(kind, data)?, ctx)?,
        NotificationKind::PasswordReset => password_reset(kind, &parse(kind, data)?, ctx)?,
        NotificationKind::OrderPlaced
        | NotificationKind::OrderShipped
        | NotificationKind::OutForDelivery
        | NotificationKind::OrderDelivered
        | NotificationKind::OrderCancelled => order(kind, &parse(kind, data)?, ctx),
        NotificationKind::PaymentReceived | NotificationKind::PaymentFailed => payment(kind, &parse(kind, data)?, ctx),
        NotificationKind::RefundIssued => refund(&parse(kind, data)?, ctx),
        NotificationKind::ReturnRequested
        | NotificationKind::ReturnApproved
        | NotificationKind::ReturnRejected
        | NotificationKind::ReturnReceived
        | NotificationKind::ReturnRefunded => return_notice(kind, &parse(kind, data)?, ctx),
        NotificationKind::LowStock => low_stock(&parse(kind, data)?),
        NotificationKind::ShipmentCreated
        | NotificationKind::DeliveryCode
        | NotificationKind::DeliveryAttemptFailed => shipment(kind, &parse(kind, data)?, ctx)?,
    };
    Ok(doc.render(ctx))
}

/// `kind` rendered with built-in sample data (the admins' preview).
pub fn preview(kind: NotificationKind, shop_name: &str, public_url: &str) -> Rendered {
    let ctx = RenderContext {
        shop_name,
        public_url,
        recipient_name: Some("Asha Rao"),
    };
    // The samples are written to fit their templates; the unit tests hold them to it.
    render(kind, &sample(kind), &ctx).unwrap_or_else(|err| Rendered {
        subject: kind.as_str().to_owned(),
        html: String::new(),
        text: err.to_string(),
        summary: String::new(),
        link: None,
    })
}

fn parse<T: DeserializeOwned>(kind: NotificationKind, data: &Value) -> Result<T, RenderError> {
    serde_json::from_value(data.clone()).map_err(|err| RenderError::new(kind, err.to_string()))
}

// ----- the events' data ---------------------------------------------------------------------
//
// Every field is optional: events grow and old ones stay in logs and dead letters. No `Debug`
// derives on data that can hold a token, so none can end up in a log line.

#[derive(Deserialize, Default)]
#[serde(default)]
struct AccountData {
    email: Option<String>,
    full_name: Option<String>,
    /// The one-time token of a verification or reset link. Never logged.
    token: Option<String>,
    /// RFC 3339.
    expires_at: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct OrderData {
    order_id: Option<String>,
    number: Option<String>,
    reason: Option<String>,
    payment_method: Option<String>,
    currency: Option<String>,
    total_minor: Option<i64>,
    subtotal_minor: Option<i64>,
    discount_minor: Option<i64>,
    shipping_minor: Option<i64>,
    tax_minor: Option<i64>,
    coupon_code: Option<String>,
    items: Option<Vec<OrderItem>>,
    shipping_address: Option<Address>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct OrderItem {
    sku: Option<String>,
    name: Option<String>,
    quantity: Option<i64>,
    unit_price_minor: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct Address {
    full_name: Option<String>,
    phone: Option<String>,
    line1: Option<String>,
    line2: Option<String>,
    city: Option<String>,
    region: Option<String>,
    postal_code: Option<String>,
    country: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct PaymentData {
    order_id: Option<String>,
    order_number: Option<String>,
    method: Option<String>,
    amount_minor: Option<i64>,
    currency: Option<String>,
    reference: Option<String>,
    reason: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RefundData {
    order_id: Option<String>,
    order_number: Option<String>,
    amount_minor: Option<i64>,
    currency: Option<String>,
    refunded_total_minor: Option<i64>,
    fully_refunded: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct ReturnData {
    order_id: Option<String>,
    number: Option<String>,
    note: Option<String>,
    reason: Option<String>,
    refund_minor: Option<i64>,
    /// Not carried by the orders service yet; without it no amount is shown.
    currency: Option<String>,
    lines: Option<Vec<ReturnLine>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct ReturnLine {
    sku: Option<String>,
    quantity: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct LowStockData {
    sku: Option<String>,
    product_id: Option<String>,
    available: Option<i64>,
    on_hand: Option<i64>,
    threshold: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ShipmentData {
    order_id: Option<String>,
    order_number: Option<String>,
    /// The code the customer gives the courier at the door.
    delivery_code: Option<String>,
    /// Cash on delivery: `true`, or the amount to collect `{amount_minor, currency}`.
    cod: Option<Value>,
    note: Option<String>,
}

// ----- the templates ------------------------------------------------------------------------

fn welcome(data: &AccountData, ctx: &RenderContext<'_>) -> Doc {
    let shop = ctx.shop_name;
    let name = data.full_name.as_deref().or(ctx.recipient_name);
    Doc::new(format!("Welcome to {shop}!"), format!("Welcome to {shop}"))
        .para(greeting(name))
        .para(format!(
            "Your account{} is ready. Browse the catalogue, keep a wishlist and follow your orders from your account page.",
            data.email.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
        ))
        .button("Start shopping", site_url(ctx, "/"))
        .summary(format!("Welcome to {shop}: your account is ready."))
}

fn verify_email(kind: NotificationKind, data: &AccountData, ctx: &RenderContext<'_>) -> Result<Doc, RenderError> {
    let token = required(kind, "token", data.token.as_deref())?;
    let link = format!("{}?token={}", site_url(ctx, "/verify-email"), encode_component(token));
    let name = data.full_name.as_deref().or(ctx.recipient_name);
    let mut doc = Doc::new(
        format!("Confirm your email address for {}", ctx.shop_name),
        "Confirm your email address",
    )
    .para(greeting(name))
    .para(match &data.email {
        Some(email) => format!("Please confirm that {email} is your email address."),
        None => "Please confirm your email address.".to_owned(),
    })
    .button("Confirm my email address", link);
    if let Some(expires) = &data.expires_at {
        doc = doc.para(format!("The link works once and expires at {expires}."));
    }
    Ok(doc
        .para("If you did not create an account, ignore this email.")
        .summary("Confirm your email address."))
}

fn password_reset(kind: NotificationKind, data: &AccountData, ctx: &RenderContext<'_>) -> Result<Doc, RenderError> {
    let token = required(kind, "token", data.token.as_deref())?;
    let link = format!("{}?token={}", site_url(ctx, "/reset-password"), encode_component(token));
    let name = data.full_name.as_deref().or(ctx.recipient_name);
    let mut doc = Doc::new(format!("Reset your {} password", ctx.shop_name), "Reset your password")
        .para(greeting(name))
        .para("Someone (we hope you) asked to reset the password of your account. Choose a new one here:")
        .button("Choose a new password", link);
    if let Some(expires) = &data.expires_at {
        doc = doc.para(format!("The link works once and expires at {expires}."));
    }
    Ok(doc
        .para("If you did not ask for this, ignore this email: your password stays as it is.")
        .summary("Reset your password."))
}

fn order(kind: NotificationKind, data: &OrderData, ctx: &RenderContext<'_>) -> Doc {
    let number = order_ref(data.number.as_deref());
    let name = ctx
        .recipient_name
        .or_else(|| data.shipping_address.as_ref().and_then(|a| a.full_name.as_deref()));
    let currency = data.currency.as_deref().unwrap_or("");
    let total = data.total_minor.map(|t| format_money(t, currency));
    let method = data.payment_method.as_deref().map(method_label);
    let cod = data.payment_method.as_deref() == Some("cod");
    let (subject, heading, intro, summary) = match kind {
        NotificationKind::OrderPlaced => (
            format!("Order placed — {number}"),
            "Thank you for your order".to_owned(),
            format!("We received your order {number}. We will write again when it ships."),
            format!(
                "We received your order {number}{}.",
                total.as_deref().map(|t| format!(" ({t})")).unwrap_or_default()
            ),
        ),
        NotificationKind::OrderShipped => (
            format!("Order shipped — {number}"),
            "Your order is on its way".to_owned(),
            format!("Your order {number} has shipped."),
            format!("Your order {number} has shipped."),
        ),
        NotificationKind::OutForDelivery => (
            format!("Out for delivery — {number}"),
            "Out for delivery".to_owned(),
            format!("Your order {number} is out for delivery and should reach you today."),
            format!("Your order {number} is out for delivery."),
        ),
        NotificationKind::OrderDelivered => (
            format!("Delivered — {number}"),
            "Delivered".to_owned(),
            format!("Your order {number} was delivered. We hope you enjoy it."),
            format!("Your order {number} was delivered."),
        ),
        _ => (
            format!("Order cancelled — {number}"),
            "Your order was cancelled".to_owned(),
            format!(
                "Your order {number} was cancelled{}.",
                data.reason
                    .as_deref()
                    .map(|r| format!(" ({})", reason_label(r)))
                    .unwrap_or_default()
            ),
            format!("Your order {number} was cancelled."),
        ),
    };
    let mut doc = Doc::new(subject, heading).para(greeting(name)).para(intro);
    match kind {
        NotificationKind::OrderPlaced => {
            if let Some(method) = method {
                doc = doc.facts(vec![("Payment".to_owned(), method)]);
            }
            doc = doc
                .order_lines(data)
                .order_totals(data)
                .address(data.shipping_address.as_ref());
        }
        NotificationKind::OrderShipped => {
            doc = doc.order_lines(data).address(data.shipping_address.as_ref());
        }
        NotificationKind::OutForDelivery => {
            if cod {
                if let Some(total) = &total {
                    doc = doc.para(format!("Cash on delivery: please have {total} ready for the courier."));
                }
            }
            doc = doc.address(data.shipping_address.as_ref());
        }
        NotificationKind::OrderDelivered => {
            doc = doc
                .order_lines(data)
                .para("Something not right? You can ask for a return from the order's page.");
        }
        _ => {
            doc = doc.order_lines(data).order_totals(data);
            if !cod {
                doc = doc.para("Anything you paid for this order goes back to you in full.");
            }
        }
    }
    let mut doc = doc.summary(summary);
    if let Some(id) = &data.order_id {
        doc = doc.order_link(ctx, id);
    }
    doc
}

fn payment(kind: NotificationKind, data: &PaymentData, ctx: &RenderContext<'_>) -> Doc {
    let number = order_ref(data.order_number.as_deref());
    let mut doc = if kind == NotificationKind::PaymentReceived {
        let amount = match (data.amount_minor, &data.currency) {
            (Some(amount), Some(currency)) => Some(format_money(amount, currency)),
            _ => None,
        };
        let mut facts = vec![("Order".to_owned(), number.clone())];
        facts.extend(amount.clone().map(|a| ("Amount".to_owned(), a)));
        facts.extend(data.method.as_deref().map(|m| ("Method".to_owned(), method_label(m))));
        facts.extend(data.reference.clone().map(|r| ("Reference".to_owned(), r)));
        Doc::new(format!("Payment received — {number}"), "Payment received")
            .para(greeting(ctx.recipient_name))
            .para(format!("Thank you: we received your payment for order {number}."))
            .facts(facts)
            .summary(format!(
                "We received your payment{} for order {number}.",
                amount.map(|a| format!(" of {a}")).unwrap_or_default()
            ))
    } else {
        let reason = data.reason.as_deref().map(reason_label);
        let mut facts = vec![("Order".to_owned(), number.clone())];
        facts.extend(data.method.as_deref().map(|m| ("Method".to_owned(), method_label(m))));
        facts.extend(reason.clone().map(|r| ("Reason".to_owned(), r)));
        Doc::new(format!("Payment failed — {number}"), "Your payment did not go through")
            .para(greeting(ctx.recipient_name))
            .para(format!(
                "The payment for order {number} failed and nothing was charged. You can place the order again with another payment method."
            ))
            .facts(facts)
            .summary(format!(
                "The payment for order {number} failed{}.",
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            ))
    };
    if let Some(id) = &data.order_id {
        doc = doc.order_link(ctx, id);
    }
    doc
}

fn refund(data: &RefundData, ctx: &RenderContext<'_>) -> Doc {
    let number = order_ref(data.order_number.as_deref());
    let currency = data.currency.as_deref().unwrap_or("");
    let amount = data.amount_minor.map(|a| format_money(a, currency));
    let mut facts = vec![("Order".to_owned(), number.clone())];
    facts.extend(amount.clone().map(|a| ("Refunded now".to_owned(), a)));
    facts.extend(
        data.refunded_total_minor
            .map(|t| ("Refunded in all".to_owned(), format_money(t, currency))),
    );
    let mut doc = Doc::new(format!("Refund issued — {number}"), "Your refund is on its way")
        .para(greeting(ctx.recipient_name))
        .para(format!(
            "We refunded {} for order {number}{}. Depending on your bank it can take a few days to show.",
            amount.as_deref().unwrap_or("money"),
            if data.fully_refunded == Some(true) {
                " in full"
            } else {
                ""
            }
        ))
        .facts(facts)
        .summary(format!(
            "We refunded {} for order {number}.",
            amount.as_deref().unwrap_or("your payment")
        ));
    if let Some(id) = &data.order_id {
        doc = doc.order_link(ctx, id);
    }
    doc
}

fn return_notice(kind: NotificationKind, data: &ReturnData, ctx: &RenderContext<'_>) -> Doc {
    let number = order_ref(data.number.as_deref());
    let refund = match (data.refund_minor, &data.currency) {
        (Some(amount), Some(currency)) => Some(format_money(amount, currency)),
        _ => None,
    };
    let (subject, heading, intro) = match kind {
        NotificationKind::ReturnRequested => (
            format!("Return requested — {number}"),
            "We received your return request",
            format!("We received your request to return items of order {number} and will answer it shortly."),
        ),
        NotificationKind::ReturnApproved => (
            format!("Return approved — {number}"),
            "Your return was approved",
            format!("Your return for order {number} was approved. Please send the items back to us."),
        ),
        NotificationKind::ReturnRejected => (
            format!("Return rejected — {number}"),
            "Your return was not approved",
            format!("We are sorry: your return for order {number} was not approved."),
        ),
        NotificationKind::ReturnReceived => (
            format!("Return received — {number}"),
            "We received your return",
            format!("The items you returned from order {number} have arrived. Your refund follows."),
        ),
        _ => (
            format!("Return refunded — {number}"),
            "Your return was refunded",
            format!(
                "We refunded {} for the items you returned from order {number}.",
                refund.as_deref().unwrap_or("the returned items")
            ),
        ),
    };
    let mut doc = Doc::new(subject, heading)
        .para(greeting(ctx.recipient_name))
        .para(intro.clone());
    let lines: Vec<String> = data
        .lines
        .iter()
        .flatten()
        .map(|l| format!("{} × {}", l.sku.as_deref().unwrap_or("item"), l.quantity.unwrap_or(0)))
        .collect();
    if !lines.is_empty() {
        doc = doc.bullets(lines);
    }
    let mut facts = Vec::new();
    facts.extend(data.reason.clone().map(|r| ("Reason".to_owned(), r)));
    facts.extend(data.note.clone().map(|n| ("Note".to_owned(), n)));
    if kind != NotificationKind::ReturnRefunded {
        facts.extend(refund.map(|r| ("Refund".to_owned(), r)));
    }
    let mut doc = doc.facts(facts).summary(intro);
    if let Some(id) = &data.order_id {
        doc = doc.order_link(ctx, id);
    }
    doc
}

fn low_stock(data: &LowStockData) -> Doc {
    let sku = data.sku.as_deref().unwrap_or("a SKU");
    let mut facts = vec![("SKU".to_owned(), sku.to_owned())];
    facts.extend(data.available.map(|n| ("Available".to_owned(), n.to_string())));
    facts.extend(data.on_hand.map(|n| ("On hand".to_owned(), n.to_string())));
    facts.extend(data.threshold.map(|n| ("Alert threshold".to_owned(), n.to_string())));
    facts.extend(data.product_id.clone().map(|p| ("Product".to_owned(), p)));
    Doc::new(format!("Low stock alert: {sku}"), "Low stock alert")
        .para(format!(
            "Stock of {sku} fell to {} available. Restock it before it sells out.",
            data.available
                .map(|n| n.to_string())
                .unwrap_or_else(|| "its threshold".to_owned())
        ))
        .facts(facts)
        .summary(format!("Stock of {sku} is low."))
}

fn shipment(kind: NotificationKind, data: &ShipmentData, ctx: &RenderContext<'_>) -> Result<Doc, RenderError> {
    let number = order_ref(data.order_number.as_deref());
    let code = data.delivery_code.as_deref().filter(|c| !c.trim().is_empty());
    let mut doc = match kind {
        NotificationKind::ShipmentCreated => {
            let mut doc = Doc::new(
                format!("Shipment created — {number}"),
                "Your order is with our couriers",
            )
            .para(greeting(ctx.recipient_name))
            .para(format!("Your order {number} was handed to our delivery team."));
            let summary = match code {
                Some(code) => {
                    doc = doc
                        .para("Give this code to the courier when your parcel arrives:")
                        .code(code);
                    format!("Your delivery code for {number}: {code}")
                }
                None => format!("Your order {number} was handed to our delivery team."),
            };
            doc.summary(summary)
        }
        NotificationKind::DeliveryCode => {
            let code = required(kind, "delivery_code", code)?;
            Doc::new(format!("Your delivery code for {number}"), "Your delivery code")
                .para(greeting(ctx.recipient_name))
                .para(format!(
                    "Give this code to the courier when order {number} arrives. Keep it to yourself until then:"
                ))
                .code(code)
                .summary(format!("Your delivery code for {number}: {code}"))
        }
        _ => {
            let mut doc = Doc::new(format!("We missed you — {number}"), "We missed you")
                .para(greeting(ctx.recipient_name))
                .para(format!(
                    "Our courier tried to deliver your order {number} but could not. We will try again."
                ));
            if let Some(note) = &data.note {
                doc = doc.facts(vec![("Courier's note".to_owned(), note.clone())]);
            }
            doc.summary(format!("We missed you: the delivery of {number} will be tried again."))
        }
    };
    if kind != NotificationKind::DeliveryAttemptFailed {
        if let Some(amount) = cod_amount(data.cod.as_ref()) {
            doc = doc.para(amount);
        }
    }
    if let Some(id) = &data.order_id {
        doc = doc.order_link(ctx, id);
    }
    Ok(doc)
}

fn cod_amount(cod: Option<&Value>) -> Option<String> {
    match cod? {
        Value::Bool(true) => Some("Cash on delivery: please have the order's total ready.".to_owned()),
        Value::Object(fields) => {
            let amount = fields.get("amount_minor")?.as_i64()?;
            let currency = fields.get("currency")?.as_str()?;
            Some(format!(
                "Cash on delivery: please have {} ready.",
                format_money(amount, currency)
            ))
        }
        _ => None,
    }
}

// ----- helpers ------------------------------------------------------------------------------

fn required<'a>(kind: NotificationKind, field: &str, value: Option<&'a str>) -> Result<&'a str, RenderError> {
    value
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| RenderError::new(kind, format!("`{field}` is missing")))
}

fn greeting(name: Option<&str>) -> String {
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(name) => format!("Hi {name},"),
        None => "Hello,".to_owned(),
    }
}

fn order_ref(number: Option<&str>) -> String {
    number
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or("your order")
        .to_owned()
}

fn method_label(method: &str) -> String {
    match method {
        "card" => "Card".to_owned(),
        "upi" => "UPI".to_owned(),
        "netbanking" | "net_banking" => "Net banking".to_owned(),
        "wallet" => "Wallet".to_owned(),
        "cod" => "Cash on delivery".to_owned(),
        other => other.to_owned(),
    }
}

fn reason_label(reason: &str) -> String {
    match reason {
        "payment_timeout" => "the payment was not completed in time".to_owned(),
        "payment_failed" => "the payment failed".to_owned(),
        "out_of_stock" => "an item is out of stock".to_owned(),
        "customer" | "customer_request" => "at your request".to_owned(),
        other => other.replace('_', " "),
    }
}

/// `minor` units of `currency` as `12.50 USD` (integer arithmetic only). A code that is not
/// ISO 4217 is shown as given, with two decimals.
pub fn format_money(minor: i64, currency: &str) -> String {
    match Currency::parse(currency) {
        Ok(currency) => Money::new(minor, currency).to_string(),
        Err(_) => {
            let sign = if minor < 0 { "-" } else { "" };
            let abs = minor.unsigned_abs();
            format!("{sign}{}.{:02} {currency}", abs / 100, abs % 100)
                .trim_end()
                .to_owned()
        }
    }
}

/// `public_url` joined with `path`.
fn site_url(ctx: &RenderContext<'_>, path: &str) -> String {
    format!("{}{path}", ctx.public_url.trim_end_matches('/'))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode_component(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Escapes text for HTML content and attribute values.
pub fn escape_html(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One line of plain text: control characters (line breaks included) become spaces, so a
/// value from an event cannot add a header.
fn one_line(raw: &str) -> String {
    let spaced: String = raw.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ----- the document and its two renderings --------------------------------------------------

/// A notification before rendering: plain text only, escaped by [`Doc::render`].
#[derive(Debug, Clone)]
struct Doc {
    subject: String,
    heading: String,
    blocks: Vec<Block>,
    summary: String,
    link: Option<(String, String)>,
}

#[derive(Debug, Clone)]
enum Block {
    Para(String),
    Button {
        label: String,
        url: String,
    },
    /// A short code shown large (a delivery code).
    Code(String),
    Facts(Vec<(String, String)>),
    Bullets(Vec<String>),
    Lines(Vec<LineView>),
    Totals(Vec<(String, String)>),
    Address(Vec<String>),
}

#[derive(Debug, Clone)]
struct LineView {
    name: String,
    quantity: i64,
    unit_price: String,
    line_total: String,
}

impl Doc {
    fn new(subject: impl Into<String>, heading: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            heading: heading.into(),
            blocks: Vec::new(),
            summary: String::new(),
            link: None,
        }
    }

    fn block(mut self, block: Block) -> Self {
        self.blocks.push(block);
        self
    }

    fn para(self, text: impl Into<String>) -> Self {
        self.block(Block::Para(text.into()))
    }

    fn button(self, label: &str, url: String) -> Self {
        self.block(Block::Button {
            label: label.to_owned(),
            url,
        })
    }

    fn code(self, code: &str) -> Self {
        self.block(Block::Code(code.to_owned()))
    }

    fn facts(self, facts: Vec<(String, String)>) -> Self {
        if facts.is_empty() {
            self
        } else {
            self.block(Block::Facts(facts))
        }
    }

    fn bullets(self, items: Vec<String>) -> Self {
        self.block(Block::Bullets(items))
    }

    fn summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = summary.into();
        self
    }

    /// A "View your order" button in the mail and the inbox entry's link.
    fn order_link(mut self, ctx: &RenderContext<'_>, order_id: &str) -> Self {
        let path = format!("/orders/{}", encode_component(order_id));
        self.blocks.push(Block::Button {
            label: "View your order".to_owned(),
            url: site_url(ctx, &path),
        });
        self.link = Some(("View your order".to_owned(), path));
        self
    }

    fn order_lines(self, data: &OrderData) -> Self {
        let currency = data.currency.as_deref().unwrap_or("");
        let lines: Vec<LineView> = data
            .items
            .iter()
            .flatten()
            .map(|item| {
                let quantity = item.quantity.unwrap_or(0);
                let unit = item.unit_price_minor.unwrap_or(0);
                LineView {
                    name: item
                        .name
                        .clone()
                        .or_else(|| item.sku.clone())
                        .unwrap_or_else(|| "item".to_owned()),
                    quantity,
                    unit_price: format_money(unit, currency),
                    line_total: unit
                        .checked_mul(quantity)
                        .map(|total| format_money(total, currency))
                        .unwrap_or_else(|| "—".to_owned()),
                }
            })
            .collect();
        if lines.is_empty() {
            self
        } else {
            self.block(Block::Lines(lines))
        }
    }

    fn order_totals(self, data: &OrderData) -> Self {
        let currency = data.currency.as_deref().unwrap_or("");
        let mut rows = Vec::new();
        if let Some(subtotal) = data.subtotal_minor {
            rows.push(("Subtotal".to_owned(), format_money(subtotal, currency)));
        }
        if let Some(discount) = data.discount_minor.filter(|d| *d != 0) {
            let label = match &data.coupon_code {
                Some(code) => format!("Discount ({code})"),
                None => "Discount".to_owned(),
            };
            rows.push((label, format_money(-discount.abs(), currency)));
        }
        if let Some(shipping) = data.shipping_minor {
            rows.push(("Shipping".to_owned(), format_money(shipping, currency)));
        }
        if let Some(tax) = data.tax_minor {
            rows.push(("Tax".to_owned(), format_money(tax, currency)));
        }
        if let Some(total) = data.total_minor {
            rows.push(("Total".to_owned(), format_money(total, currency)));
        }
        if rows.is_empty() {
            self
        } else {
            self.block(Block::Totals(rows))
        }
    }

    fn address(self, address: Option<&Address>) -> Self {
        let Some(a) = address else {
            return self;
        };
        let city_line = [a.postal_code.as_deref(), a.city.as_deref(), a.region.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.trim().is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let lines: Vec<String> = [
            a.full_name.clone(),
            a.line1.clone(),
            a.line2.clone(),
            Some(city_line),
            a.country.clone(),
            a.phone.clone(),
        ]
        .into_iter()
        .flatten()
        .filter(|l| !l.trim().is_empty())
        .collect();
        if lines.is_empty() {
            self
        } else {
            self.block(Block::Address(lines))
        }
    }

    fn render(self, ctx: &RenderContext<'_>) -> Rendered {
        let html = self.html(ctx);
        let text = self.text(ctx);
        Rendered {
            subject: one_line(&self.subject),
            summary: one_line(&self.summary),
            link: self.link.map(|(_, path)| path),
            html,
            text,
        }
    }

    fn html(&self, ctx: &RenderContext<'_>) -> String {
        const CELL: &str = "padding:6px 8px;border-bottom:1px solid #e5e7eb;";
        let mut body = String::new();
        body.push_str(&format!(
            "<h1 style=\"font-size:22px;margin:0 0 16px;color:#111827;\">{}</h1>\n",
            escape_html(&self.heading)
        ));
        for block in &self.blocks {
            match block {
                Block::Para(text) => body.push_str(&format!("<p style=\"margin:0 0 14px;\">{}</p>\n", escape_html(text))),
                Block::Button { label, url } => body.push_str(&format!(
                    "<p style=\"margin:20px 0;\"><a href=\"{}\" style=\"background:#4f46e5;color:#ffffff;padding:10px 18px;border-radius:6px;text-decoration:none;display:inline-block;\">{}</a></p>\n",
                    escape_html(url),
                    escape_html(label)
                )),
                Block::Code(code) => body.push_str(&format!(
                    "<p style=\"font-size:28px;letter-spacing:6px;font-weight:bold;font-family:monospace;margin:16px 0;\">{}</p>\n",
                    escape_html(code)
                )),
                Block::Facts(facts) => {
                    body.push_str("<table role=\"presentation\" style=\"border-collapse:collapse;margin:0 0 16px;\">\n");
                    for (label, value) in facts {
                        body.push_str(&format!(
                            "<tr><th style=\"{CELL}text-align:left;color:#6b7280;font-weight:normal;\">{}</th><td style=\"{CELL}\">{}</td></tr>\n",
                            escape_html(label),
                            escape_html(value)
                        ));
                    }
                    body.push_str("</table>\n");
                }
                Block::Bullets(items) => {
                    body.push_str("<ul style=\"margin:0 0 16px;\">\n");
                    for item in items {
                        body.push_str(&format!("<li>{}</li>\n", escape_html(item)));
                    }
                    body.push_str("</ul>\n");
                }
                Block::Lines(lines) => {
                    body.push_str(&format!(
                        "<table style=\"border-collapse:collapse;width:100%;margin:0 0 8px;\">\n<thead><tr><th style=\"{CELL}text-align:left;\">Item</th><th style=\"{CELL}text-align:right;\">Qty</th><th style=\"{CELL}text-align:right;\">Price</th><th style=\"{CELL}text-align:right;\">Total</th></tr></thead>\n<tbody>\n"
                    ));
                    for line in lines {
                        body.push_str(&format!(
                            "<tr><td style=\"{CELL}\">{}</td><td style=\"{CELL}text-align:right;\">{}</td><td style=\"{CELL}text-align:right;\">{}</td><td style=\"{CELL}text-align:right;\">{}</td></tr>\n",
                            escape_html(&line.name),
                            line.quantity,
                            escape_html(&line.unit_price),
                            escape_html(&line.line_total)
                        ));
                    }
                    body.push_str("</tbody>\n</table>\n");
                }
                Block::Totals(rows) => {
                    body.push_str("<table style=\"border-collapse:collapse;width:100%;margin:0 0 16px;\">\n");
                    let last = rows.len().saturating_sub(1);
                    for (index, (label, value)) in rows.iter().enumerate() {
                        let weight = if index == last { "font-weight:bold;" } else { "" };
                        body.push_str(&format!(
                            "<tr><td style=\"padding:4px 8px;text-align:right;{weight}\">{}</td><td style=\"padding:4px 8px;text-align:right;width:30%;{weight}\">{}</td></tr>\n",
                            escape_html(label),
                            escape_html(value)
                        ));
                    }
                    body.push_str("</table>\n");
                }
                Block::Address(lines) => {
                    body.push_str("<p style=\"margin:0 0 4px;color:#6b7280;\">Delivery address</p>\n<p style=\"margin:0 0 16px;\">");
                    let escaped: Vec<String> = lines.iter().map(|l| escape_html(l)).collect();
                    body.push_str(&escaped.join("<br>"));
                    body.push_str("</p>\n");
                }
            }
        }
        let shop = escape_html(ctx.shop_name);
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head>\n<body style=\"margin:0;background:#f3f4f6;font-family:Helvetica,Arial,sans-serif;font-size:15px;line-height:1.5;color:#1f2937;\">\n<div style=\"max-width:600px;margin:0 auto;padding:24px;\">\n<p style=\"font-size:18px;font-weight:bold;color:#4f46e5;margin:0 0 16px;\">{shop}</p>\n<div style=\"background:#ffffff;border-radius:8px;padding:24px;\">\n{body}</div>\n<p style=\"font-size:12px;color:#6b7280;margin:16px 0 0;\">You receive this email because of your account or an order at {shop}. <a href=\"{home}\" style=\"color:#6b7280;\">{shop}</a></p>\n</div>\n</body>\n</html>\n",
            title = escape_html(&one_line(&self.subject)),
            home = escape_html(&site_url(ctx, "/")),
        )
    }

    fn text(&self, ctx: &RenderContext<'_>) -> String {
        let mut out = String::new();
        out.push_str(&self.heading);
        out.push_str("\n\n");
        for block in &self.blocks {
            match block {
                Block::Para(text) => out.push_str(&format!("{text}\n\n")),
                Block::Button { label, url } => out.push_str(&format!("{label}: {url}\n\n")),
                Block::Code(code) => out.push_str(&format!("    {code}\n\n")),
                Block::Facts(facts) => {
                    for (label, value) in facts {
                        out.push_str(&format!("{label}: {value}\n"));
                    }
                    out.push('\n');
                }
                Block::Bullets(items) => {
                    for item in items {
                        out.push_str(&format!("- {item}\n"));
                    }
                    out.push('\n');
                }
                Block::Lines(lines) => {
                    for line in lines {
                        out.push_str(&format!(
                            "- {} × {} at {} = {}\n",
                            line.name, line.quantity, line.unit_price, line.line_total
                        ));
                    }
                    out.push('\n');
                }
                Block::Totals(rows) => {
                    for (label, value) in rows {
                        out.push_str(&format!("{label}: {value}\n"));
                    }
                    out.push('\n');
                }
                Block::Address(lines) => {
                    out.push_str("Delivery address:\n");
                    for line in lines {
                        out.push_str(&format!("  {line}\n"));
                    }
                    out.push('\n');
                }
            }
        }
        out.push_str(&format!("— {}\n", ctx.shop_name));
        out
    }
}

// ----- sample data for previews -------------------------------------------------------------

fn sample_order() -> Value {
    json!({
        "order_id": "01930000-0000-7000-8000-000000000001", "number": "ORD-2026-000123",
        "user_id": "01930000-0000-7000-8000-0000000000aa", "customer_email": "asha@example.com",
        "status": "pending", "payment_method": "card", "currency": "EUR",
        "subtotal_minor": 7_450, "discount_minor": 745, "shipping_minor": 499, "tax_minor": 1_274,
        "total_minor": 8_478, "coupon_code": "WELCOME10",
        "items": [
            {"sku": "TEE-BLK-M", "product_id": "p1", "seller_id": "s1", "name": "Organic cotton tee, black, M",
             "quantity": 2, "unit_price_minor": 1_950},
            {"sku": "MUG-ENAMEL", "product_id": "p2", "seller_id": "s1", "name": "Enamel camping mug",
             "quantity": 1, "unit_price_minor": 3_550},
        ],
        "shipping_address": {"full_name": "Asha Rao", "phone": "+49 30 1234567", "line1": "Torstraße 12",
                             "line2": "3rd floor", "city": "Berlin", "region": "BE", "postal_code": "10119",
                             "country": "DE"},
    })
}

/// Data shaped like the event each kind answers, for previews and tests.
pub fn sample(kind: NotificationKind) -> Value {
    let account = json!({"user_id": "01930000-0000-7000-8000-0000000000aa", "email": "asha@example.com",
                         "full_name": "Asha Rao", "role": "customer",
                         "token": "sample-token", "expires_at": "2026-11-22T12:00:00Z"});
    let order_id = "01930000-0000-7000-8000-000000000001";
    let user_id = "01930000-0000-7000-8000-0000000000aa";
    let number = "ORD-2026-000123";
    let return_data = |status: &str| {
        json!({"return_id": "01930000-0000-7000-8000-0000000000e1", "order_id": order_id, "number": number,
               "user_id": user_id, "status": status, "reason": "too small", "note": null,
               "refund_minor": 3_900, "currency": "EUR",
               "lines": [{"sku": "TEE-BLK-M", "quantity": 2}]})
    };
    let shipment = json!({"shipment_id": "01930000-0000-7000-8000-0000000000d1", "order_id": order_id,
                          "order_number": number, "user_id": user_id, "status": "assigned",
                          "delivery_code": "482913", "cod": false,
                          "note": "nobody answered the door"});
    match kind {
        NotificationKind::Welcome | NotificationKind::VerifyEmail | NotificationKind::PasswordReset => account,
        NotificationKind::OrderPlaced
        | NotificationKind::OrderShipped
        | NotificationKind::OutForDelivery
        | NotificationKind::OrderDelivered => sample_order(),
        NotificationKind::OrderCancelled => {
            let mut order = sample_order();
            order["reason"] = json!("payment_timeout");
            order
        }
        NotificationKind::PaymentReceived => json!({
            "payment_id": "01930000-0000-7000-8000-0000000000b1", "order_id": order_id, "order_number": number,
            "user_id": user_id, "method": "card", "amount_minor": 8_478, "currency": "EUR",
            "reference": "PAY-7F3K2Q9A"}),
        NotificationKind::PaymentFailed => json!({
            "payment_id": "01930000-0000-7000-8000-0000000000b1", "order_id": order_id, "order_number": number,
            "user_id": user_id, "method": "card", "reason": "card declined"}),
        NotificationKind::RefundIssued => json!({
            "refund_id": "01930000-0000-7000-8000-0000000000f1", "payment_id": "01930000-0000-7000-8000-0000000000b1",
            "order_id": order_id, "order_number": number, "user_id": user_id, "amount_minor": 3_900,
            "currency": "EUR", "refunded_total_minor": 3_900, "captured_minor": 8_478, "fully_refunded": false}),
        NotificationKind::ReturnRequested => return_data("requested"),
        NotificationKind::ReturnApproved => return_data("approved"),
        NotificationKind::ReturnRejected => return_data("rejected"),
        NotificationKind::ReturnReceived => return_data("received"),
        NotificationKind::ReturnRefunded => return_data("refunded"),
        NotificationKind::LowStock => json!({"sku": "TEE-BLK-M", "product_id": "01930000-0000-7000-8000-0000000000c1",
                                             "available": 3, "on_hand": 5, "threshold": 5}),
        NotificationKind::ShipmentCreated
        | NotificationKind::DeliveryCode
        | NotificationKind::DeliveryAttemptFailed => shipment,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: RenderContext<'static> = RenderContext {
        shop_name: "Mercato",
        public_url: "https://shop.example/",
        recipient_name: None,
    };

    fn check(kind: NotificationKind, data: Value, expected: &[&str]) -> Rendered {
        let rendered = render(kind, &data, &CTX).unwrap_or_else(|err| panic!("{kind:?}: {err}"));
        for needle in expected {
            assert!(
                rendered.text.contains(needle),
                "{kind:?} text lacks {needle:?}:\n{}",
                rendered.text
            );
            assert!(
                rendered.html.contains(&escape_html(needle)),
                "{kind:?} html lacks {needle:?}:\n{}",
                rendered.html
            );
        }
        rendered
    }

    #[test]
    fn every_kind_renders_a_subject_html_and_text_from_its_sample() {
        for kind in NotificationKind::ALL {
            let rendered = render(kind, &sample(kind), &CTX).unwrap_or_else(|err| panic!("{kind:?}: {err}"));
            assert!(!rendered.subject.is_empty(), "{kind:?}");
            assert!(!rendered.subject.contains('\n'), "{kind:?}");
            assert!(rendered.html.starts_with("<!DOCTYPE html>"), "{kind:?}");
            assert!(rendered.html.contains("</html>"), "{kind:?}");
            assert!(rendered.text.len() > 40, "{kind:?}: {}", rendered.text);
            assert!(!rendered.summary.is_empty(), "{kind:?}");
            assert_eq!(
                preview(kind, "Mercato", "https://shop.example").subject,
                rendered.subject
            );
            if kind.has_inbox_entry() {
                assert_eq!(
                    rendered.link.as_deref(),
                    Some("/orders/01930000-0000-7000-8000-000000000001"),
                    "{kind:?}"
                );
            }
        }
    }

    #[test]
    fn every_kind_renders_from_empty_data_or_names_what_is_missing() {
        for kind in NotificationKind::ALL {
            match render(kind, &json!({}), &CTX) {
                Ok(rendered) => assert!(!rendered.subject.is_empty()),
                Err(err) => assert!(
                    matches!(
                        kind,
                        NotificationKind::VerifyEmail
                            | NotificationKind::PasswordReset
                            | NotificationKind::DeliveryCode
                    ),
                    "{kind:?}: {err}"
                ),
            }
        }
        let err = render(NotificationKind::VerifyEmail, &json!({"email": "a@b.c"}), &CTX).unwrap_err();
        assert!(err.to_string().contains("`token` is missing"), "{err}");
        // Data of the wrong shape is an error, not a panic.
        assert!(render(NotificationKind::OrderPlaced, &json!({"items": "many"}), &CTX).is_err());
        assert!(render(NotificationKind::OrderPlaced, &json!(null), &CTX).is_err());
    }

    #[test]
    fn subjects_follow_the_seed() {
        let subject = |kind| render(kind, &sample(kind), &CTX).unwrap().subject;
        assert_eq!(subject(NotificationKind::OrderPlaced), "Order placed — ORD-2026-000123");
        assert_eq!(
            subject(NotificationKind::OrderShipped),
            "Order shipped — ORD-2026-000123"
        );
        assert_eq!(subject(NotificationKind::OrderDelivered), "Delivered — ORD-2026-000123");
        assert_eq!(
            subject(NotificationKind::OrderCancelled),
            "Order cancelled — ORD-2026-000123"
        );
        assert_eq!(
            subject(NotificationKind::PaymentReceived),
            "Payment received — ORD-2026-000123"
        );
        assert_eq!(
            subject(NotificationKind::PaymentFailed),
            "Payment failed — ORD-2026-000123"
        );
        assert_eq!(subject(NotificationKind::Welcome), "Welcome to Mercato!");
        assert_eq!(subject(NotificationKind::LowStock), "Low stock alert: TEE-BLK-M");
        assert_eq!(
            subject(NotificationKind::DeliveryAttemptFailed),
            "We missed you — ORD-2026-000123"
        );
    }

    #[test]
    fn money_is_formatted_from_minor_units() {
        assert_eq!(format_money(1_250, "USD"), "12.50 USD");
        assert_eq!(format_money(5, "EUR"), "0.05 EUR");
        assert_eq!(format_money(-745, "EUR"), "-7.45 EUR");
        assert_eq!(format_money(500, "JPY"), "500 JPY");
        assert_eq!(format_money(1_234_567, "KWD"), "1234.567 KWD");
        assert_eq!(format_money(i64::MIN, "EUR"), "-92233720368547758.08 EUR");
        assert_eq!(format_money(1_250, "usd"), "12.50 usd");
        assert_eq!(format_money(1_250, ""), "12.50");
    }

    #[test]
    fn an_order_email_shows_every_line_and_the_totals() {
        let rendered = check(
            NotificationKind::OrderPlaced,
            sample_order(),
            &[
                "Organic cotton tee, black, M",
                "Enamel camping mug",
                "19.50 EUR",
                "39.00 EUR",
                "35.50 EUR",
                "Subtotal",
                "74.50 EUR",
                "Discount (WELCOME10)",
                "-7.45 EUR",
                "4.99 EUR",
                "12.74 EUR",
                "84.78 EUR",
                "Torstraße 12",
                "10119 Berlin BE",
                "https://shop.example/orders/01930000-0000-7000-8000-000000000001",
            ],
        );
        for line in [
            "- Organic cotton tee, black, M × 2 at 19.50 EUR = 39.00 EUR",
            "- Enamel camping mug × 1 at 35.50 EUR = 35.50 EUR",
            "Subtotal: 74.50 EUR",
            "Discount (WELCOME10): -7.45 EUR",
            "Shipping: 4.99 EUR",
            "Tax: 12.74 EUR",
            "Total: 84.78 EUR",
        ] {
            assert!(rendered.text.contains(line), "text lacks {line:?}:\n{}", rendered.text);
        }
        assert!(rendered.html.contains(">84.78 EUR</td>"));
        assert_eq!(rendered.summary, "We received your order ORD-2026-000123 (84.78 EUR).");
    }

    #[test]
    fn values_from_events_are_escaped_in_html() {
        let mut data = sample_order();
        data["items"][0]["name"] = json!("<script>alert('x')</script>");
        data["shipping_address"]["full_name"] = json!("Eve <img src=x onerror=alert(1)>");
        data["number"] = json!("ORD-\"><b>1</b>\r\nBcc: victim@example.com");
        let rendered = render(NotificationKind::OrderPlaced, &data, &CTX).unwrap();
        assert!(!rendered.html.contains("<script>"), "{}", rendered.html);
        assert!(!rendered.html.contains("<img"), "{}", rendered.html);
        assert!(!rendered.html.contains("<b>1</b>"), "{}", rendered.html);
        assert!(rendered
            .html
            .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(
            rendered.text.contains("<script>alert('x')</script>"),
            "text is not HTML"
        );
        assert!(!rendered.subject.contains(['\r', '\n']), "{:?}", rendered.subject);

        let hostile = json!({"email": "a@b.c", "full_name": "<script>x</script>", "token": "t\"><a href=evil>"});
        let rendered = render(NotificationKind::VerifyEmail, &hostile, &CTX).unwrap();
        assert!(!rendered.html.contains("<script>"));
        assert!(rendered.html.contains("Hi &lt;script&gt;x&lt;/script&gt;,"));
        assert!(rendered
            .text
            .contains("https://shop.example/verify-email?token=t%22%3E%3Ca%20href%3Devil%3E"));
    }

    #[test]
    fn account_links_carry_the_token_and_the_greeting_prefers_the_events_name() {
        let rendered = check(
            NotificationKind::PasswordReset,
            sample(NotificationKind::PasswordReset),
            &[
                "https://shop.example/reset-password?token=sample-token",
                "Hi Asha Rao,",
                "2026-11-22T12:00:00Z",
            ],
        );
        assert!(!rendered.subject.contains("sample-token"));
        assert!(!rendered.summary.contains("sample-token"));
        check(
            NotificationKind::VerifyEmail,
            sample(NotificationKind::VerifyEmail),
            &["https://shop.example/verify-email?token=sample-token"],
        );
    }

    #[test]
    fn the_delivery_code_is_in_the_body_and_inbox_line_not_the_subject() {
        let rendered = check(
            NotificationKind::DeliveryCode,
            sample(NotificationKind::DeliveryCode),
            &["482913", "ORD-2026-000123"],
        );
        assert_eq!(rendered.subject, "Your delivery code for ORD-2026-000123");
        assert_eq!(rendered.summary, "Your delivery code for ORD-2026-000123: 482913");
        let created = render(
            NotificationKind::ShipmentCreated,
            &sample(NotificationKind::ShipmentCreated),
            &CTX,
        )
        .unwrap();
        assert!(created.text.contains("482913"));
        assert!(!created.subject.contains("482913"));
        assert!(render(NotificationKind::DeliveryCode, &json!({"order_number": "ORD-1"}), &CTX).is_err());
    }

    #[test]
    fn returns_list_their_lines_and_show_a_refund_only_with_a_currency() {
        let rendered = check(
            NotificationKind::ReturnRefunded,
            sample(NotificationKind::ReturnRefunded),
            &["TEE-BLK-M × 2", "39.00 EUR"],
        );
        assert_eq!(rendered.subject, "Return refunded — ORD-2026-000123");
        let without_currency = json!({"order_id": "o", "refund_minor": 3_900, "lines": []});
        let rendered = render(NotificationKind::ReturnRefunded, &without_currency, &CTX).unwrap();
        assert!(!rendered.text.contains("39.00"), "{}", rendered.text);
        assert!(rendered.subject.ends_with("your order"));
    }
}
