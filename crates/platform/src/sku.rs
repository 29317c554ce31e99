//! SKU codes, shared by the services that key on them (catalog, inventory, cart).

use crate::error::{ApiError, FieldError};

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

/// A SKU named in a path or body, as the field `sku`: a 422 problem when it is not one.
pub fn sku_param(raw: &str) -> Result<String, ApiError> {
    parse_sku("sku", raw).map_err(|e| ApiError::Validation(vec![e]))
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
