//! The delivery domain, free of I/O: shipment statuses and the one state machine every change
//! goes through, who may set which status by hand, when a shipment may be (re)assigned, the
//! one-time delivery code (generation, hashing, constant-time check), service-area city keys
//! and tracking notes.

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

/// Where a shipment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShipmentStatus {
    /// Created for a paid (or cash-on-delivery) order; no agent serves it yet.
    Pending,
    /// An agent has it on their list but has not collected the parcel.
    Assigned,
    /// The agent collected the parcel from the warehouse.
    PickedUp,
    InTransit,
    OutForDelivery,
    /// Final: handed over (with the customer's code, for cash on delivery).
    Delivered,
    /// Nobody took the parcel on a delivery round.
    FailedAttempt,
    /// Another delivery round is planned.
    Rescheduled,
    /// The agent reports the parcel is on its way back to the warehouse. It is still with the
    /// agent (and counts towards their load) until an admin receives it (`returned`).
    ReturnedToSender,
    /// Final: an admin received the parcel back at the warehouse.
    Returned,
    /// Final: the order was cancelled before the parcel was picked up.
    Cancelled,
}

impl ShipmentStatus {
    pub const ALL: [ShipmentStatus; 11] = [
        Self::Pending,
        Self::Assigned,
        Self::PickedUp,
        Self::InTransit,
        Self::OutForDelivery,
        Self::Delivered,
        Self::FailedAttempt,
        Self::Rescheduled,
        Self::ReturnedToSender,
        Self::Returned,
        Self::Cancelled,
    ];

    /// The statuses that count towards an agent's load: the agent holds (or is about to
    /// collect) the parcel, also while bringing it back to the warehouse.
    pub const ACTIVE: [ShipmentStatus; 7] = [
        Self::Assigned,
        Self::PickedUp,
        Self::InTransit,
        Self::OutForDelivery,
        Self::FailedAttempt,
        Self::Rescheduled,
        Self::ReturnedToSender,
    ];

    /// The statuses in which a shipment is recalled when its order is cancelled: the parcel has
    /// left the warehouse with its agent and is not yet delivered nor heading back.
    pub const RECALLABLE: [ShipmentStatus; 5] = [
        Self::PickedUp,
        Self::InTransit,
        Self::OutForDelivery,
        Self::FailedAttempt,
        Self::Rescheduled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Assigned => "assigned",
            Self::PickedUp => "picked_up",
            Self::InTransit => "in_transit",
            Self::OutForDelivery => "out_for_delivery",
            Self::Delivered => "delivered",
            Self::FailedAttempt => "failed_attempt",
            Self::Rescheduled => "rescheduled",
            Self::ReturnedToSender => "returned_to_sender",
            Self::Returned => "returned",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Nothing moves a shipment out of these.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Returned | Self::Cancelled)
    }

    /// Whether a delivery may still lie ahead (so a delivery code still matters).
    pub fn may_be_delivered(self) -> bool {
        !matches!(
            self,
            Self::Delivered | Self::ReturnedToSender | Self::Returned | Self::Cancelled
        )
    }

    /// Whether an order's cancellation recalls a shipment in this status (see [`Self::RECALLABLE`]).
    pub fn is_recallable(self) -> bool {
        Self::RECALLABLE.contains(&self)
    }

    /// Counts towards the load of the agent it is assigned to.
    pub fn is_active(self) -> bool {
        Self::ACTIVE.contains(&self)
    }

    /// Whether the delivery agent (or an admin) sets this status through the status route.
    /// `pending` and `assigned` come from assignment, `cancelled` from the order's cancellation,
    /// `returned` from an admin receiving the parcel back (its own route).
    pub fn is_set_by_hand(self) -> bool {
        matches!(
            self,
            Self::PickedUp
                | Self::InTransit
                | Self::OutForDelivery
                | Self::Delivered
                | Self::FailedAttempt
                | Self::Rescheduled
                | Self::ReturnedToSender
        )
    }
}

/// The state machine's answer to "move from `from` to `to`".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Change the status.
    Move,
    /// Already there (a repeated request or event): change nothing, and it is not an error.
    Stay,
}

/// A move the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a shipment cannot go from {} to {}", .from.as_str(), .to.as_str())]
pub struct MoveRefused {
    pub from: ShipmentStatus,
    pub to: ShipmentStatus,
}

/// The one place that decides every status change of a shipment.
pub fn next(from: ShipmentStatus, to: ShipmentStatus) -> Result<Step, MoveRefused> {
    use ShipmentStatus as S;
    if from == to {
        return Ok(Step::Stay);
    }
    let allowed = match from {
        S::Pending => matches!(to, S::Assigned | S::Cancelled),
        S::Assigned => matches!(to, S::PickedUp | S::Cancelled),
        S::PickedUp => to == S::InTransit,
        S::InTransit => to == S::OutForDelivery,
        S::OutForDelivery => matches!(to, S::Delivered | S::FailedAttempt),
        S::FailedAttempt => matches!(to, S::Rescheduled | S::ReturnedToSender),
        S::Rescheduled => matches!(to, S::OutForDelivery | S::ReturnedToSender),
        S::ReturnedToSender => to == S::Returned,
        S::Delivered | S::Returned | S::Cancelled => false,
    };
    if allowed {
        Ok(Step::Move)
    } else {
        Err(MoveRefused { from, to })
    }
}

/// Why a recalled shipment may not go somewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecallRefused {
    /// Towards the customer: the order was cancelled, the parcel goes back.
    #[error(
        "the order was cancelled: the parcel goes back to the sender and cannot go to {}; report returned_to_sender",
        .to.as_str()
    )]
    Recalled { from: ShipmentStatus, to: ShipmentStatus },
    /// Not a move of the state machine at all.
    #[error(transparent)]
    Move(#[from] MoveRefused),
}

/// The state machine for a recalled shipment (its order was cancelled after the parcel was
/// picked up). Nothing takes it towards the customer: `delivered`, `out_for_delivery` and
/// `rescheduled` are refused. It may head back to the sender from anywhere on the road
/// (`picked_up`, `in_transit`, `out_for_delivery`, `failed_attempt`, `rescheduled` →
/// `returned_to_sender`), and otherwise moves as [`next`] says.
pub fn next_recalled(from: ShipmentStatus, to: ShipmentStatus) -> Result<Step, RecallRefused> {
    use ShipmentStatus as S;
    if from == to {
        return Ok(Step::Stay);
    }
    match to {
        S::Delivered | S::OutForDelivery | S::Rescheduled => Err(RecallRefused::Recalled { from, to }),
        S::ReturnedToSender if from.is_recallable() => Ok(Step::Move),
        _ => Ok(next(from, to)?),
    }
}

/// Why a shipment cannot be (re)assigned now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AssignRefused {
    /// The parcel is on the road with its agent; a hand-over happens after a failed attempt.
    #[error("the parcel is on its way with its agent; reassign it after a failed attempt")]
    OnItsWay,
    /// The agent is bringing the parcel back to the warehouse.
    #[error("the parcel is on its way back to the warehouse with its agent")]
    HeadingBack,
    #[error("the shipment is closed")]
    Closed,
}

/// The status a shipment has after an admin (or the automatic assignment) gives it to an agent.
///
/// A `pending` shipment becomes `assigned` (through [`next`]). Reassigning keeps the status and
/// changes only the agent: an `assigned` parcel not yet collected, and one whose delivery
/// failed or was rescheduled, may change hands. A parcel on the road (`picked_up`,
/// `in_transit`, `out_for_delivery`, and `returned_to_sender` on its way back) stays with the
/// agent carrying it, and a closed shipment has nobody to assign.
pub fn status_after_assignment(from: ShipmentStatus) -> Result<ShipmentStatus, AssignRefused> {
    use ShipmentStatus as S;
    match from {
        S::Pending => Ok(S::Assigned),
        S::Assigned | S::FailedAttempt | S::Rescheduled => Ok(from),
        S::PickedUp | S::InTransit | S::OutForDelivery => Err(AssignRefused::OnItsWay),
        S::ReturnedToSender => Err(AssignRefused::HeadingBack),
        S::Delivered | S::Returned | S::Cancelled => Err(AssignRefused::Closed),
    }
}

// ----- proof of delivery ---------------------------------------------------------------------

/// Digits in a delivery code.
pub const CODE_LEN: usize = 6;

/// A fresh one-time delivery code: six decimal digits from the operating system's CSPRNG,
/// uniformly distributed (leading zeros kept).
pub fn generate_code() -> String {
    let n: u32 = rand::rngs::OsRng.gen_range(0..1_000_000);
    format!("{n:06}")
}

/// Whether `raw` looks like a delivery code: exactly six ASCII digits.
pub fn is_code(raw: &str) -> bool {
    raw.len() == CODE_LEN && raw.bytes().all(|b| b.is_ascii_digit())
}

/// What is stored instead of the code: hex SHA-256 over the shipment id and the code, so a
/// hash copied to another shipment does not verify there.
pub fn hash_code(shipment_id: &str, code: &str) -> String {
    let digest = Sha256::new()
        .chain_update(shipment_id.as_bytes())
        .chain_update(b":")
        .chain_update(code.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `code` is the one whose hash is `stored_hash`, compared in constant time.
pub fn verify_code(shipment_id: &str, code: &str, stored_hash: &str) -> bool {
    let candidate = hash_code(shipment_id, code);
    candidate.len() == stored_hash.len() && bool::from(candidate.as_bytes().ct_eq(stored_hash.as_bytes()))
}

/// How a delivery was proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Proof {
    /// The customer's one-time code was given and verified.
    Code,
    /// No code was given (allowed for prepaid orders only).
    None,
}

impl Proof {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Code => "code",
            Self::None => "none",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "code" => Some(Self::Code),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

// ----- service areas and notes ---------------------------------------------------------------

/// Longest city name accepted in a service area.
pub const MAX_CITY_CHARS: usize = 100;
/// Most cities one agent may serve.
pub const MAX_CITIES: usize = 50;
/// Longest tracking note.
pub const MAX_NOTE_CHARS: usize = 500;

/// The key a city is matched on: trimmed, inner runs of white space made one space, lower
/// case (Unicode). `None` when nothing is left.
pub fn city_key(raw: &str) -> Option<String> {
    let key = raw.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    (!key.is_empty()).then_some(key)
}

/// A city as an admin typed it into a service area: trimmed (inner white space made single),
/// 1–100 characters, no control characters.
pub fn parse_city(raw: &str) -> Option<String> {
    let city = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    ((1..=MAX_CITY_CHARS).contains(&city.chars().count()) && !city.chars().any(char::is_control)).then_some(city)
}

/// A tracking note as a person typed it: trimmed, at most 500 characters, no control characters
/// but line breaks; empty is none. `Err` says what is wrong.
pub fn parse_note(raw: Option<&str>) -> Result<Option<String>, &'static str> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text)
            if text.chars().count() > MAX_NOTE_CHARS
                || text.chars().any(|c| c.is_control() && c != '\n' && c != '\r') =>
        {
            Err("must be at most 500 characters of text")
        }
        Some(text) => Ok(Some(text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ShipmentStatus as S;

    /// Every move the machine allows, written out independently of `next`.
    const MOVES: &[(ShipmentStatus, ShipmentStatus)] = &[
        (S::Pending, S::Assigned),
        (S::Pending, S::Cancelled),
        (S::Assigned, S::PickedUp),
        (S::Assigned, S::Cancelled),
        (S::PickedUp, S::InTransit),
        (S::InTransit, S::OutForDelivery),
        (S::OutForDelivery, S::Delivered),
        (S::OutForDelivery, S::FailedAttempt),
        (S::FailedAttempt, S::Rescheduled),
        (S::FailedAttempt, S::ReturnedToSender),
        (S::Rescheduled, S::OutForDelivery),
        (S::Rescheduled, S::ReturnedToSender),
        (S::ReturnedToSender, S::Returned),
    ];

    /// Every move a recalled shipment may make, written out independently of `next_recalled`.
    const RECALLED_MOVES: &[(ShipmentStatus, ShipmentStatus)] = &[
        (S::Pending, S::Assigned),
        (S::Pending, S::Cancelled),
        (S::Assigned, S::PickedUp),
        (S::Assigned, S::Cancelled),
        (S::PickedUp, S::InTransit),
        (S::PickedUp, S::ReturnedToSender),
        (S::InTransit, S::ReturnedToSender),
        (S::OutForDelivery, S::FailedAttempt),
        (S::OutForDelivery, S::ReturnedToSender),
        (S::FailedAttempt, S::ReturnedToSender),
        (S::Rescheduled, S::ReturnedToSender),
        (S::ReturnedToSender, S::Returned),
    ];

    /// Where a recalled shipment is refused for going towards the customer.
    const TOWARDS_THE_CUSTOMER: &[ShipmentStatus] = &[S::Delivered, S::OutForDelivery, S::Rescheduled];

    #[test]
    fn every_pair_of_statuses_is_decided_as_specified() {
        let mut pairs = 0;
        for from in ShipmentStatus::ALL {
            for to in ShipmentStatus::ALL {
                let expected = if from == to {
                    Ok(Step::Stay)
                } else if MOVES.contains(&(from, to)) {
                    Ok(Step::Move)
                } else {
                    Err(MoveRefused { from, to })
                };
                assert_eq!(next(from, to), expected, "{from:?} → {to:?}");
                pairs += 1;
            }
        }
        assert_eq!(pairs, 121);
    }

    #[test]
    fn every_pair_of_statuses_is_decided_as_specified_for_a_recalled_shipment() {
        let mut pairs = 0;
        for from in ShipmentStatus::ALL {
            for to in ShipmentStatus::ALL {
                let expected = if from == to {
                    Ok(Step::Stay)
                } else if RECALLED_MOVES.contains(&(from, to)) {
                    Ok(Step::Move)
                } else if TOWARDS_THE_CUSTOMER.contains(&to) {
                    Err(RecallRefused::Recalled { from, to })
                } else {
                    Err(RecallRefused::Move(MoveRefused { from, to }))
                };
                assert_eq!(next_recalled(from, to), expected, "{from:?} → {to:?}");
                pairs += 1;
            }
        }
        assert_eq!(pairs, 121);
        assert!(next_recalled(S::OutForDelivery, S::Delivered)
            .unwrap_err()
            .to_string()
            .contains("order was cancelled"));
    }

    #[test]
    fn final_statuses_never_move() {
        for from in ShipmentStatus::ALL.into_iter().filter(|s| s.is_final()) {
            for to in ShipmentStatus::ALL.into_iter().filter(|to| *to != from) {
                assert!(next(from, to).is_err(), "{from:?} → {to:?}");
            }
        }
        assert_eq!(
            ShipmentStatus::ALL.iter().filter(|s| s.is_final()).count(),
            3,
            "delivered, returned, cancelled"
        );
        assert!(!S::ReturnedToSender.is_final(), "the parcel is still on its way back");
    }

    #[test]
    fn the_happy_path_and_the_failed_attempt_loop_are_walkable() {
        let walk = |path: &[ShipmentStatus]| path.windows(2).all(|w| next(w[0], w[1]) == Ok(Step::Move));
        assert!(walk(&[
            S::Pending,
            S::Assigned,
            S::PickedUp,
            S::InTransit,
            S::OutForDelivery,
            S::Delivered
        ]));
        assert!(walk(&[
            S::OutForDelivery,
            S::FailedAttempt,
            S::Rescheduled,
            S::OutForDelivery,
            S::FailedAttempt,
            S::ReturnedToSender,
            S::Returned
        ]));
        // Only a parcel nobody has collected yet is cancelled with its order.
        assert!(next(S::PickedUp, S::Cancelled).is_err());
    }

    #[test]
    fn agents_set_only_the_statuses_of_the_road() {
        let by_hand: Vec<ShipmentStatus> = ShipmentStatus::ALL.into_iter().filter(|s| s.is_set_by_hand()).collect();
        assert_eq!(
            by_hand,
            [
                S::PickedUp,
                S::InTransit,
                S::OutForDelivery,
                S::Delivered,
                S::FailedAttempt,
                S::Rescheduled,
                S::ReturnedToSender
            ]
        );
    }

    #[test]
    fn assignment_moves_a_pending_shipment_and_keeps_the_status_of_others() {
        let expected = |from: ShipmentStatus| match from {
            S::Pending => Ok(S::Assigned),
            S::Assigned => Ok(S::Assigned),
            S::FailedAttempt => Ok(S::FailedAttempt),
            S::Rescheduled => Ok(S::Rescheduled),
            S::PickedUp | S::InTransit | S::OutForDelivery => Err(AssignRefused::OnItsWay),
            S::ReturnedToSender => Err(AssignRefused::HeadingBack),
            S::Delivered | S::Returned | S::Cancelled => Err(AssignRefused::Closed),
        };
        for from in ShipmentStatus::ALL {
            assert_eq!(status_after_assignment(from), expected(from), "{from:?}");
        }
    }

    #[test]
    fn the_load_counts_what_an_agent_holds() {
        let active: Vec<ShipmentStatus> = ShipmentStatus::ALL.into_iter().filter(|s| s.is_active()).collect();
        assert_eq!(active, ShipmentStatus::ACTIVE);
        assert!(!S::Pending.is_active() && !S::Delivered.is_active() && !S::Cancelled.is_active());
        assert!(
            S::ReturnedToSender.is_active(),
            "the agent holds the parcel until it is back"
        );
        assert!(!S::Returned.is_active());
        let recallable: Vec<ShipmentStatus> = ShipmentStatus::ALL.into_iter().filter(|s| s.is_recallable()).collect();
        assert_eq!(
            recallable,
            [
                S::PickedUp,
                S::InTransit,
                S::OutForDelivery,
                S::FailedAttempt,
                S::Rescheduled
            ]
        );
        let deliverable: Vec<ShipmentStatus> = ShipmentStatus::ALL
            .into_iter()
            .filter(|s| s.may_be_delivered())
            .collect();
        assert_eq!(
            deliverable,
            [
                S::Pending,
                S::Assigned,
                S::PickedUp,
                S::InTransit,
                S::OutForDelivery,
                S::FailedAttempt,
                S::Rescheduled
            ]
        );
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for status in ShipmentStatus::ALL {
            assert_eq!(ShipmentStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(ShipmentStatus::parse("shipped"), None);
        assert_eq!(ShipmentStatus::parse("Delivered"), None);
        for proof in [Proof::Code, Proof::None] {
            assert_eq!(Proof::parse(proof.as_str()), Some(proof));
        }
    }

    #[test]
    fn codes_are_six_digits_and_vary() {
        let codes: Vec<String> = (0..200).map(|_| generate_code()).collect();
        for code in &codes {
            assert!(is_code(code), "{code}");
        }
        let distinct: std::collections::HashSet<&String> = codes.iter().collect();
        // 200 draws from a million collide rarely; a constant generator gives one value.
        assert!(distinct.len() > 190, "{} distinct codes", distinct.len());
        for bad in ["", "12345", "1234567", "12a456", " 123456", "１２３４５６"] {
            assert!(!is_code(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_code_verifies_against_its_own_shipment_only() {
        let hash = hash_code("shipment-1", "004711");
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains("004711"));
        assert!(verify_code("shipment-1", "004711", &hash));
        assert!(!verify_code("shipment-1", "004712", &hash));
        assert!(!verify_code("shipment-2", "004711", &hash), "bound to the shipment");
        assert!(!verify_code("shipment-1", "004711", ""));
        assert!(!verify_code("shipment-1", "004711", &hash.to_uppercase()));
    }

    #[test]
    fn city_keys_ignore_case_and_spacing() {
        assert_eq!(city_key("  New   York ").as_deref(), Some("new york"));
        assert_eq!(city_key("MÜNCHEN"), city_key("münchen"));
        assert_eq!(city_key("Bengaluru\t"), Some("bengaluru".to_owned()));
        assert_eq!(city_key("   "), None);
        assert_eq!(parse_city("  São   Paulo ").as_deref(), Some("São Paulo"));
        assert_eq!(parse_city(""), None);
        assert_eq!(parse_city(&"x".repeat(101)), None);
        assert!(parse_city(&"x".repeat(100)).is_some());
    }

    #[test]
    fn notes_are_trimmed_and_limited() {
        assert_eq!(parse_note(None), Ok(None));
        assert_eq!(parse_note(Some("   ")), Ok(None));
        assert_eq!(
            parse_note(Some(" left at the door\n")),
            Ok(Some("left at the door".to_owned()))
        );
        assert_eq!(parse_note(Some("line\nbreak")), Ok(Some("line\nbreak".to_owned())));
        assert!(parse_note(Some(&"n".repeat(500))).is_ok());
        assert!(parse_note(Some(&"n".repeat(501))).is_err());
        assert!(parse_note(Some("bell\u{7}")).is_err());
    }
}
