//! Identity's rules, without I/O: what a valid email, password, name and address are, and how
//! secrets are generated and hashed for storage.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use platform::FieldError;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A normalized email address: trimmed, lower case, one `@`, a dot in the domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let email = raw.trim().to_lowercase();
        let invalid = || FieldError::new("email", "must be a valid email address");
        if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let (local, domain) = email.split_once('@').ok_or_else(invalid)?;
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && !domain.contains('@');
        if local.is_empty() || local.len() > 64 || !domain_ok {
            return Err(invalid());
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The most common passwords, refused at registration and reset.
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "password1",
    "password12",
    "password123",
    "password1234",
    "12345678",
    "123456789",
    "1234567890",
    "12345678910",
    "qwertyuiop",
    "qwerty123",
    "qwerty1234",
    "1q2w3e4r",
    "1q2w3e4r5t",
    "iloveyou",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "welcome1",
    "welcome123",
    "admin123",
    "administrator",
    "letmein1",
    "trustno1",
    "abc12345",
    "abcd1234",
    "11111111",
    "00000000",
    "87654321",
    "88888888",
    "asdfghjk",
    "asdfghjkl",
    "zxcvbnm1",
    "superman",
    "iloveyou1",
    "starwars",
    "whatever",
    "computer",
    "michelle",
    "jennifer",
    "passw0rd",
    "p@ssw0rd",
    "p@ssword",
    "changeme",
    "changeme1",
    "mercato123",
    "shopping",
    "q1w2e3r4",
    "1qaz2wsx",
    "dragon12",
    "monkey123",
    "master123",
    "qazwsxedc",
    "password!",
    "aaaaaaaa",
];

/// A password fit to be hashed: 8 to 128 characters and not a well-known one.
#[derive(Clone)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

impl Password {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let length = raw.chars().count();
        if length < 8 {
            return Err(FieldError::new(field, "must be at least 8 characters"));
        }
        if length > 128 {
            return Err(FieldError::new(field, "must be at most 128 characters"));
        }
        if COMMON_PASSWORDS.contains(&raw.to_lowercase().as_str()) {
            return Err(FieldError::new(field, "is too common; choose another"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A trimmed text of `min..=max` characters without control characters.
pub fn text(field: &str, raw: &str, min: usize, max: usize) -> Result<String, FieldError> {
    let value = raw.trim();
    let length = value.chars().count();
    if length < min {
        return Err(FieldError::new(
            field,
            if min <= 1 {
                "must not be empty".to_owned()
            } else {
                format!("must be at least {min} characters")
            },
        ));
    }
    if length > max {
        return Err(FieldError::new(field, format!("must be at most {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "must not contain control characters"));
    }
    Ok(value.to_owned())
}

/// Like [`text`] for optional fields; an empty string counts as absent.
pub fn optional_text(field: &str, raw: Option<&str>, max: usize) -> Result<Option<String>, FieldError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(value) => text(field, value, 1, max).map(Some),
    }
}

/// An ISO 3166-1 alpha-2 country code, upper case.
pub fn country(raw: &str) -> Result<String, FieldError> {
    // Check before changing case: Unicode upper-casing turns `ı` into `I` and `ß` into `SS`.
    let code = raw.trim();
    if code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(code.to_ascii_uppercase())
    } else {
        Err(FieldError::new("country", "must be a two-letter ISO 3166-1 code"))
    }
}

/// A new random secret (256 bits, base64url) for refresh, reset and verification tokens.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// How a secret is stored: its SHA-256, hex. Secrets are random, so no salt or slow hash is needed.
pub fn secret_hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A generated password for the first admin account.
pub fn generated_password() -> String {
    new_secret().chars().take(20).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(Email::parse("  Ada@Example.COM ").unwrap().as_str(), "ada@example.com");
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@@example.com",
            "a da@example.com",
            "ada@.example.com",
            "ada@example..com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn passwords_need_length_and_must_not_be_common() {
        assert!(Password::parse("password", "short").is_err());
        assert!(
            Password::parse("password", "Password123").is_err(),
            "common passwords are refused whatever the case"
        );
        assert!(Password::parse("password", &"x".repeat(129)).is_err());
        assert!(Password::parse("password", "correct horse battery").is_ok());
        assert_eq!(
            format!("{:?}", Password::parse("p", "correct horse").unwrap()),
            "Password(***)"
        );
    }

    #[test]
    fn texts_are_trimmed_and_bounded() {
        assert_eq!(text("name", "  Ada  ", 1, 10).unwrap(), "Ada");
        assert!(text("name", "   ", 1, 10).is_err());
        assert!(text("name", "abcdefghijk", 1, 10).is_err());
        assert!(text("name", "a\u{0007}b", 1, 10).is_err());
        assert_eq!(optional_text("x", Some(" "), 5).unwrap(), None);
        assert_eq!(country(" de ").unwrap(), "DE");
        assert!(country("DEU").is_err());
        for lookalike in ["ıt", "ß", "ﬀ", "d1"] {
            assert!(country(lookalike).is_err(), "{lookalike:?} must be refused");
        }
    }

    #[test]
    fn secrets_are_random_and_hashed() {
        let a = new_secret();
        assert_ne!(a, new_secret());
        assert_eq!(secret_hash(&a).len(), 64);
        assert_eq!(secret_hash(&a), secret_hash(&a));
    }
}
