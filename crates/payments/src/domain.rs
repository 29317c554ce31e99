//! Payment rules without I/O: methods and statuses, the state machine that decides what a
//! provider's outcome does to a payment, refund arithmetic, receipt references, and the
//! webhook signature (`Mercato-Signature`) both the mock provider and the service use.

use hmac::{Hmac, Mac};
use platform::error::ApiError;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

/// Largest amount one payment may carry (10 billion major units of a two-digit currency).
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000;

/// How the buyer pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Card,
    Upi,
    NetBanking,
    Wallet,
    /// Cash on delivery: no provider, collected by the courier.
    Cod,
}

impl Method {
    pub const ALL: [Method; 5] = [Self::Card, Self::Upi, Self::NetBanking, Self::Wallet, Self::Cod];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Card => "card",
            Self::Upi => "upi",
            Self::NetBanking => "net_banking",
            Self::Wallet => "wallet",
            Self::Cod => "cod",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == raw)
    }

    /// Paid through the provider (everything but cash on delivery).
    pub fn is_online(self) -> bool {
        self != Self::Cod
    }

    /// For people: "card", "UPI", "net banking", …
    pub fn label(self) -> &'static str {
        match self {
            Self::Card => "card",
            Self::Upi => "UPI",
            Self::NetBanking => "net banking",
            Self::Wallet => "wallet",
            Self::Cod => "cash on delivery",
        }
    }
}

/// Where a payment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Online: waiting for the buyer at the provider's hosted page.
    RequiresAction,
    /// Cash on delivery: collected when the order is delivered.
    AwaitingDelivery,
    /// The money was captured.
    Succeeded,
    /// The provider declined, or the buyer did.
    Failed,
    /// The order was cancelled before the money moved.
    Cancelled,
    /// Captured, and part of it was given back.
    PartiallyRefunded,
    /// Captured, and all of it was given back.
    Refunded,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 7] = [
        Self::RequiresAction,
        Self::AwaitingDelivery,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::PartiallyRefunded,
        Self::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequiresAction => "requires_action",
            Self::AwaitingDelivery => "awaiting_delivery",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::PartiallyRefunded => "partially_refunded",
            Self::Refunded => "refunded",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// The money moved: the payment holds a captured amount (some of it may be refunded).
    pub fn is_captured(self) -> bool {
        matches!(self, Self::Succeeded | Self::PartiallyRefunded | Self::Refunded)
    }

    /// Still waiting for money: a new payment for the order would be a second one.
    pub fn is_open(self) -> bool {
        matches!(self, Self::RequiresAction | Self::AwaitingDelivery)
    }
}

/// What the provider (or the courier, for cash on delivery) says happened to the money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
}

/// What an outcome does to a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Record the capture; the payment becomes `succeeded`.
    Capture,
    /// The order was cancelled while the buyer paid: record the capture (`succeeded`), then
    /// give all of it back.
    CaptureAndRefund,
    /// The payment becomes `failed`.
    Fail,
    /// Nothing changes (a duplicate, or a failure that lost to a success).
    Ignore,
}

/// The payment state machine. Success always wins: money that moved is recorded whatever
/// arrived before it, and a failure reported after a success is ignored.
pub fn on_outcome(status: PaymentStatus, outcome: Outcome) -> Transition {
    use PaymentStatus as S;
    match (status, outcome) {
        (S::RequiresAction | S::AwaitingDelivery | S::Failed, Outcome::Succeeded) => Transition::Capture,
        (S::Cancelled, Outcome::Succeeded) => Transition::CaptureAndRefund,
        (S::RequiresAction | S::AwaitingDelivery, Outcome::Failed) => Transition::Fail,
        (S::Failed | S::Cancelled, Outcome::Failed) => Transition::Ignore,
        (S::Succeeded | S::PartiallyRefunded | S::Refunded, _) => Transition::Ignore,
    }
}

/// The status of a captured payment once `refunded` of `captured` went back.
pub fn status_after_refunds(captured: i64, refunded: i64) -> PaymentStatus {
    if refunded <= 0 {
        PaymentStatus::Succeeded
    } else if refunded < captured {
        PaymentStatus::PartiallyRefunded
    } else {
        PaymentStatus::Refunded
    }
}

/// A refund's state. `pending` holds its amount while the provider is asked; a refund the
/// provider refuses is removed, so only `succeeded` refunds remain afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    Pending,
    Succeeded,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pending" => Some(Self::Pending),
            "succeeded" => Some(Self::Succeeded),
            _ => None,
        }
    }
}

/// Checks a refund amount against what can still be refunded.
pub fn check_refund_amount(amount_minor: i64, refundable_minor: i64) -> Result<(), ApiError> {
    if amount_minor < 1 {
        return Err(ApiError::validation("amount_minor", "must be at least 1"));
    }
    if amount_minor > refundable_minor {
        return Err(ApiError::Unprocessable(format!(
            "only {refundable_minor} (minor units) of this payment can still be refunded"
        )));
    }
    Ok(())
}

/// An idempotency key: 1–255 visible ASCII characters.
pub fn parse_idempotency_key(raw: &str) -> Result<String, ApiError> {
    if !platform::extract::valid_idempotency_key(raw) {
        return Err(ApiError::validation(
            "Idempotency-Key",
            "must be 1–255 visible ASCII characters",
        ));
    }
    Ok(raw.to_owned())
}

/// A refund reason: optional, trimmed, at most 500 characters.
pub fn parse_reason(raw: Option<&str>) -> Result<Option<String>, ApiError> {
    match raw.map(str::trim).filter(|r| !r.is_empty()) {
        None => Ok(None),
        Some(reason) if reason.chars().count() > 500 => {
            Err(ApiError::validation("reason", "must be at most 500 characters"))
        }
        Some(reason) => Ok(Some(reason.to_owned())),
    }
}

/// Crockford's base32 alphabet: no I, L, O or U, so a reference read aloud is unambiguous.
const REFERENCE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A human receipt reference, `PAY-` and 8 characters from 40 random bits.
pub fn reference(random: [u8; 5]) -> String {
    let mut bits = random.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let mut chars = [0u8; 8];
    for slot in chars.iter_mut().rev() {
        *slot = REFERENCE_ALPHABET[(bits & 31) as usize];
        bits >>= 5;
    }
    format!("PAY-{}", String::from_utf8_lossy(&chars))
}

// ----- webhook signatures -------------------------------------------------------------------

/// The header a provider signs its webhooks with: `t=<unix secs>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "Mercato-Signature";
/// How far a signature's timestamp may be from now, either way.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;
/// Longest header accepted, and most `v1=` entries looked at: bounds the work a forged header causes.
const MAX_HEADER_LEN: usize = 2_048;
const MAX_SIGNATURES: usize = 8;

type HmacSha256 = Hmac<Sha256>;

/// Why a webhook's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// 400: no `Mercato-Signature` header.
    #[error("the Mercato-Signature header is missing")]
    Missing,
    /// 400: the header is not `t=<secs>,v1=<hex>[,v1=<hex>…]`.
    #[error("the Mercato-Signature header is malformed")]
    Malformed,
    /// 401: the timestamp is outside the tolerance (a replay, or a badly wrong clock).
    #[error("the signature's timestamp is outside the tolerance")]
    Expired,
    /// 401: no signature matches any configured secret.
    #[error("the signature does not match")]
    Mismatch,
}

impl From<SignatureError> for ApiError {
    fn from(err: SignatureError) -> Self {
        match err {
            SignatureError::Missing | SignatureError::Malformed => ApiError::BadRequest(err.to_string()),
            SignatureError::Expired | SignatureError::Mismatch => ApiError::Unauthorized(err.to_string()),
        }
    }
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Mercato-Signature` value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex(&digest))
}

/// Verifies a `Mercato-Signature` header: valid when its timestamp is within `tolerance_secs`
/// of `now_secs` and ANY of its `v1` signatures matches ANY of `secrets` (so secrets can be
/// rotated: sign with the new one while both verify). Comparison is constant-time.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[String],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if header.len() > MAX_HEADER_LEN {
        return Err(SignatureError::Malformed);
    }
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed);
                }
                let secs = value.parse::<i64>().map_err(|_| SignatureError::Malformed)?;
                timestamp = Some(secs);
            }
            // A v1 that is not 64 hex digits matches nothing; the others may still match.
            "v1" => signatures.extend(unhex(value)),
            // Other schemes (a future v2) are not ours to judge.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now_secs.abs_diff(timestamp) > tolerance_secs.unsigned_abs() {
        return Err(SignatureError::Expired);
    }
    let matched = signatures.iter().take(MAX_SIGNATURES).any(|signature| {
        secrets
            .iter()
            .any(|secret| mac(secret, timestamp, body).verify_slice(signature).is_ok())
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 bytes from 64 hex digits, or nothing.
fn unhex(raw: &str) -> Option<Vec<u8>> {
    if raw.len() != 64 {
        return None;
    }
    (0..raw.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(raw.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A random secret for signing webhooks, 64 hex digits.
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("whsec_{}", hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_statuses_round_trip() {
        for method in Method::ALL {
            assert_eq!(Method::parse(method.as_str()), Some(method));
            let json = serde_json::to_value(method).unwrap();
            assert_eq!(json, method.as_str());
        }
        assert!(!Method::Cod.is_online());
        assert!(Method::NetBanking.is_online());
        assert_eq!(Method::parse("cash"), None);
        for status in PaymentStatus::ALL {
            assert_eq!(PaymentStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }

    #[test]
    fn every_status_and_outcome_pair_has_its_transition() {
        use PaymentStatus as S;
        use Transition as T;
        let expected = |status: S, outcome: Outcome| match (status, outcome) {
            (S::RequiresAction, Outcome::Succeeded) => T::Capture,
            (S::RequiresAction, Outcome::Failed) => T::Fail,
            (S::AwaitingDelivery, Outcome::Succeeded) => T::Capture,
            (S::AwaitingDelivery, Outcome::Failed) => T::Fail,
            // A success after a failure: money moved, success wins.
            (S::Failed, Outcome::Succeeded) => T::Capture,
            (S::Failed, Outcome::Failed) => T::Ignore,
            // The order was cancelled while the buyer paid: capture, then refund in full.
            (S::Cancelled, Outcome::Succeeded) => T::CaptureAndRefund,
            (S::Cancelled, Outcome::Failed) => T::Ignore,
            // After a success nothing a provider reports changes the status (refunds do that).
            (S::Succeeded | S::PartiallyRefunded | S::Refunded, _) => T::Ignore,
        };
        let mut pairs = 0;
        for status in PaymentStatus::ALL {
            for outcome in [Outcome::Succeeded, Outcome::Failed] {
                assert_eq!(
                    on_outcome(status, outcome),
                    expected(status, outcome),
                    "{status:?} + {outcome:?}"
                );
                pairs += 1;
            }
        }
        assert_eq!(pairs, 14);
    }

    #[test]
    fn success_wins_whichever_order_the_outcomes_arrive_in() {
        let apply = |status: PaymentStatus, outcome| match on_outcome(status, outcome) {
            Transition::Capture | Transition::CaptureAndRefund => PaymentStatus::Succeeded,
            Transition::Fail => PaymentStatus::Failed,
            Transition::Ignore => status,
        };
        let start = PaymentStatus::RequiresAction;
        let fail_then_succeed = apply(apply(start, Outcome::Failed), Outcome::Succeeded);
        let succeed_then_fail = apply(apply(start, Outcome::Succeeded), Outcome::Failed);
        assert_eq!(fail_then_succeed, PaymentStatus::Succeeded);
        assert_eq!(succeed_then_fail, PaymentStatus::Succeeded);
    }

    #[test]
    fn refunds_move_the_status_by_amounts() {
        assert_eq!(status_after_refunds(500, 0), PaymentStatus::Succeeded);
        assert_eq!(status_after_refunds(500, 1), PaymentStatus::PartiallyRefunded);
        assert_eq!(status_after_refunds(500, 499), PaymentStatus::PartiallyRefunded);
        assert_eq!(status_after_refunds(500, 500), PaymentStatus::Refunded);
        assert!(check_refund_amount(0, 500).is_err());
        assert!(check_refund_amount(-3, 500).is_err());
        assert!(check_refund_amount(501, 500).is_err());
        assert!(check_refund_amount(500, 500).is_ok());
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        assert!(parse_idempotency_key("refund-1").is_ok());
        assert!(parse_idempotency_key(&"k".repeat(255)).is_ok());
        for bad in ["", "with space", "tab\t", "é", &"k".repeat(256)] {
            assert!(parse_idempotency_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn references_are_short_and_unambiguous() {
        assert_eq!(reference([0; 5]), "PAY-00000000");
        assert_eq!(reference([255; 5]), "PAY-ZZZZZZZZ");
        let r = reference([0x12, 0x34, 0x56, 0x78, 0x9a]);
        assert_eq!(r.len(), 12);
        assert!(r[4..].bytes().all(|b| REFERENCE_ALPHABET.contains(&b)));
    }

    const SECRET: &str = "whsec_test";
    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;

    fn check(header: Option<&str>, body: &[u8], secrets: &[&str]) -> Result<(), SignatureError> {
        let secrets: Vec<String> = secrets.iter().map(|s| (*s).to_owned()).collect();
        verify(header, body, &secrets, NOW, DEFAULT_TOLERANCE_SECS)
    }

    #[test]
    fn a_signed_body_verifies() {
        let header = sign(SECRET, NOW, BODY);
        assert!(header.starts_with(&format!("t={NOW},v1=")));
        assert_eq!(check(Some(&header), BODY, &[SECRET]), Ok(()));
        // Within the tolerance either way.
        assert_eq!(check(Some(&sign(SECRET, NOW - 300, BODY)), BODY, &[SECRET]), Ok(()));
        assert_eq!(check(Some(&sign(SECRET, NOW + 300, BODY)), BODY, &[SECRET]), Ok(()));
    }

    #[test]
    fn a_flipped_byte_in_the_body_or_the_signature_is_refused() {
        let header = sign(SECRET, NOW, BODY);
        let mut body = BODY.to_vec();
        body[10] ^= 1;
        assert_eq!(check(Some(&header), &body, &[SECRET]), Err(SignatureError::Mismatch));
        // Flip the last hex digit of the signature.
        let mut tampered = header.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == '0' { '1' } else { '0' });
        assert_eq!(check(Some(&tampered), BODY, &[SECRET]), Err(SignatureError::Mismatch));
        assert_eq!(check(Some(&header), BODY, &["another"]), Err(SignatureError::Mismatch));
    }

    #[test]
    fn a_stale_or_future_timestamp_is_refused() {
        let old = sign(SECRET, NOW - 301, BODY);
        assert_eq!(check(Some(&old), BODY, &[SECRET]), Err(SignatureError::Expired));
        let future = sign(SECRET, NOW + 301, BODY);
        assert_eq!(check(Some(&future), BODY, &[SECRET]), Err(SignatureError::Expired));
        // Moving the timestamp forward breaks the signature, which covers it.
        let moved = old.replacen(&format!("t={}", NOW - 301), &format!("t={NOW}"), 1);
        assert_eq!(check(Some(&moved), BODY, &[SECRET]), Err(SignatureError::Mismatch));
    }

    #[test]
    fn any_v1_may_match_any_secret() {
        let good = sign(SECRET, NOW, BODY);
        let good_v1 = good.split_once(",v1=").unwrap().1;
        let bad_v1 = "ab".repeat(32);
        let both = format!("t={NOW},v1={bad_v1},v1={good_v1}");
        assert_eq!(check(Some(&both), BODY, &[SECRET]), Ok(()));
        // Rotation: the old secret still verifies while both are configured.
        assert_eq!(check(Some(&good), BODY, &["whsec_new", SECRET]), Ok(()));
        // A v1 that is not hex is skipped, not fatal.
        let junk_then_good = format!("t={NOW},v1=zz,v1={good_v1}");
        assert_eq!(check(Some(&junk_then_good), BODY, &[SECRET]), Ok(()));
        let only_bad = format!("t={NOW},v1={bad_v1}");
        assert_eq!(check(Some(&only_bad), BODY, &[SECRET]), Err(SignatureError::Mismatch));
    }

    #[test]
    fn a_missing_or_garbage_header_is_refused() {
        assert_eq!(check(None, BODY, &[SECRET]), Err(SignatureError::Missing));
        for garbage in [
            "",
            "garbage",
            "t=abc,v1=00",
            "v1=0011",
            &format!("t={NOW}"),
            &format!("t={NOW},t={NOW},v1={}", "00".repeat(32)),
            &format!("t={NOW},v1=nothex"),
            &"x".repeat(5_000),
        ] {
            assert_eq!(
                check(Some(garbage), BODY, &[SECRET]),
                Err(SignatureError::Malformed),
                "{garbage:?}"
            );
        }
        assert_eq!(
            check(Some(&sign(SECRET, NOW, BODY)), BODY, &[]),
            Err(SignatureError::Mismatch),
            "no configured secret verifies nothing"
        );
    }
}
