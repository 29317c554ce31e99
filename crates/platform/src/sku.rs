//! SKU codes, shared by the services that key on them (catalog, inventory, cart).

use crate::error::FieldError;

/// The longest SKU code accepted.
pub const MAX_SKU_LEN: usize = 64;

/// A valid SKU code: 1–64 letters, digits, `-`, `_` or `.` (surrounding blanks ignored).
pub fn parse_sku(field: &str, raw: &str) -> Result<String, FieldError> {
    let sku = raw.trim();
    if sku.is_empty()
        || sku.len() > MAX_SKU_LEN
        || !sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(FieldError::new(field, "must be 1–64 letters, digits, `-`, `_` or `.`"));
    }
    Ok(sku.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_are_short_plain_codes() {
        assert_eq!(parse_sku("sku", " AB-1_2.x ").unwrap(), "AB-1_2.x");
        for bad in ["", "  ", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(parse_sku("sku", bad).is_err(), "{bad:?}");
        }
        assert!(parse_sku("sku", &"x".repeat(64)).is_ok());
    }
}
