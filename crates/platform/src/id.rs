//! Identifiers: UUIDv7 everywhere, so ids sort by creation time and index well.

pub use uuid::Uuid;

/// A new time-ordered id.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

/// Parses an id taken from user input, answering `None` for anything that is not a UUID.
pub fn parse_id(raw: &str) -> Option<Uuid> {
    Uuid::parse_str(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_7_and_increase() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.get_version_num(), 7);
        assert!(b > a, "a later id sorts after an earlier one");
    }

    #[test]
    fn garbage_is_not_an_id() {
        assert!(parse_id("not-a-uuid").is_none());
        assert!(parse_id(&new_id().to_string()).is_some());
    }
}
