//! How an email leaves: the [`Mailer`] port and its two adapters, SMTP through lettre (the
//! distributed mode and production) and `.eml` files in a directory (the all-in-one mode),
//! chosen at start-up by [`MailTransport`], whose production guard refuses the file adapter.
//!
//! Both adapters build the same MIME message (multipart/alternative, plain text then HTML)
//! with a `Message-ID` and an `X-Mercato-Event-Id` header derived from the event, so a message
//! can be traced back to the event that caused it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use platform::config::Profile;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One email to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingEmail {
    /// The sender, e.g. `Mercato <no-reply@mercato.local>`.
    pub from: String,
    /// The recipient's address.
    pub to: String,
    pub subject: String,
    pub html: String,
    pub text: String,
    /// The event that caused the email: it names the message (`Message-ID`,
    /// `X-Mercato-Event-Id`, the `.eml` file).
    pub event_id: Uuid,
}

/// Why an email was not sent. The messages carry no secrets (no credentials, no body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// The message cannot be built: an address does not parse. Retrying will not help.
    #[error("invalid message: {0}")]
    Invalid(String),
    /// The server is unreachable, timed out or answered 4xx: worth retrying.
    #[error("temporary failure: {0}")]
    Transient(String),
    /// The server refused for good (5xx), or the transport is misconfigured.
    #[error("permanent failure: {0}")]
    Permanent(String),
}

/// Sends emails.
#[async_trait]
pub trait Mailer: Send + Sync {
    async fn send(&self, message: &OutgoingEmail) -> Result<(), MailError>;
}

/// The `X-Mercato-Event-Id` header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EventIdHeader(String);

impl Header for EventIdHeader {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("X-Mercato-Event-Id")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.trim().to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// The MIME message for `email`.
pub fn build_message(email: &OutgoingEmail) -> Result<Message, MailError> {
    let from: Mailbox = email
        .from
        .parse()
        .map_err(|_| MailError::Invalid("the sender address does not parse".to_owned()))?;
    let to: Mailbox = email
        .to
        .parse()
        .map_err(|_| MailError::Invalid("the recipient address does not parse".to_owned()))?;
    let domain = from.email.domain().to_owned();
    Message::builder()
        .from(from)
        .to(to)
        .subject(email.subject.clone())
        .message_id(Some(format!("<{}@{domain}>", email.event_id)))
        .header(EventIdHeader(email.event_id.to_string()))
        .multipart(MultiPart::alternative_plain_html(
            email.text.clone(),
            email.html.clone(),
        ))
        .map_err(|err| MailError::Invalid(err.to_string()))
}

// ----- SMTP ---------------------------------------------------------------------------------

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain text: only for a relay on the same machine or network (and tests).
    None,
    /// Plain connection upgraded with STARTTLS, which the server must offer (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// Where and how to reach the SMTP server.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    /// Both or neither: login credentials, when the server wants them.
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: SmtpTls,
    /// How long connecting and each command may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("tls", &self.tls)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Default for SmtpSettings {
    fn default() -> Self {
        Self {
            host: "localhost".to_owned(),
            port: 587,
            username: None,
            password: None,
            tls: SmtpTls::Starttls,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Sends through an SMTP server (lettre over Tokio, one connection per message).
#[derive(Clone)]
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// `host:port`, for log lines and errors.
    server: String,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer").field("server", &self.server).finish()
    }
}

impl SmtpMailer {
    pub fn new(settings: &SmtpSettings) -> Result<Self, MailError> {
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.clone())
            .port(settings.port)
            .timeout(Some(settings.timeout));
        let parameters = || {
            TlsParameters::new(settings.host.clone())
                .map_err(|err| MailError::Permanent(format!("TLS set-up for {}: {err}", settings.host)))
        };
        builder = builder.tls(match settings.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls => Tls::Required(parameters()?),
            SmtpTls::Tls => Tls::Wrapper(parameters()?),
        });
        match (&settings.username, &settings.password) {
            (Some(username), Some(password)) => {
                builder = builder.credentials(Credentials::new(username.clone(), password.clone()));
            }
            (None, None) => {}
            _ => {
                return Err(MailError::Permanent(
                    "SMTP username and password must be set together".to_owned(),
                ))
            }
        }
        Ok(Self {
            transport: builder.build(),
            server: format!("{}:{}", settings.host, settings.port),
        })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, email: &OutgoingEmail) -> Result<(), MailError> {
        let message = build_message(email)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            // lettre's messages name the stage and the server's answer, never the credentials.
            Err(err) if err.is_permanent() => Err(MailError::Permanent(format!("{}: {err}", self.server))),
            Err(err) => Err(MailError::Transient(format!("{}: {err}", self.server))),
        }
    }
}

// ----- files --------------------------------------------------------------------------------

/// Writes each message as `<event id>.eml` into a directory (created if missing), for the
/// all-in-one mode: open them with any mail client. A file appears whole or not at all (it
/// is written under a temporary name and renamed).
#[derive(Debug, Clone)]
pub struct FileMailer {
    dir: PathBuf,
}

impl FileMailer {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[async_trait]
impl Mailer for FileMailer {
    /// The directory, the file and the rename in one trip to the blocking pool (a trip each
    /// cost three thread hand-offs per email).
    async fn send(&self, email: &OutgoingEmail) -> Result<(), MailError> {
        let bytes = build_message(email)?.formatted();
        let dir = self.dir.clone();
        let name = format!("{}.eml", email.event_id);
        let tmp = dir.join(format!(".{name}.{}.tmp", Uuid::now_v7().simple()));
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, dir.join(&name)).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        })
        .await
        .unwrap_or_else(|stopped| Err(std::io::Error::other(stopped)))
        .map_err(|err| MailError::Transient(format!("writing to {}: {err}", self.dir.display())))
    }
}

// ----- choosing one -------------------------------------------------------------------------

/// Which mailer to run, from configuration.
#[derive(Debug, Clone)]
pub enum MailTransport {
    /// `.eml` files in this directory (`data/mail` in the all-in-one mode).
    File(PathBuf),
    Smtp(SmtpSettings),
}

impl MailTransport {
    /// Builds the mailer. The production profile refuses the file transport: mail written to
    /// a local directory reaches nobody.
    pub fn build(&self, profile: Profile) -> Result<Arc<dyn Mailer>, MailError> {
        match self {
            Self::File(_) if profile == Profile::Production => Err(MailError::Permanent(
                "the production profile refuses the file mail transport; configure SMTP".to_owned(),
            )),
            Self::File(dir) => Ok(Arc::new(FileMailer::new(dir.clone()))),
            Self::Smtp(settings) => Ok(Arc::new(SmtpMailer::new(settings)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(to: &str) -> OutgoingEmail {
        OutgoingEmail {
            from: "Mercato <no-reply@mercato.local>".to_owned(),
            to: to.to_owned(),
            subject: "Order placed — ORD-1".to_owned(),
            html: "<p>Hello</p>".to_owned(),
            text: "Hello".to_owned(),
            event_id: Uuid::nil(),
        }
    }

    #[test]
    fn messages_are_multipart_alternative_and_name_their_event() {
        let raw = String::from_utf8(build_message(&email("asha@example.com")).unwrap().formatted()).unwrap();
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("text/plain"));
        assert!(raw.contains("text/html"));
        assert!(raw.contains("X-Mercato-Event-Id: 00000000-0000-0000-0000-000000000000"));
        assert!(raw.contains("Message-ID: <00000000-0000-0000-0000-000000000000@mercato.local>"));
    }

    #[test]
    fn a_bad_address_is_an_invalid_message() {
        assert!(matches!(
            build_message(&email("not an address")),
            Err(MailError::Invalid(_))
        ));
        assert!(matches!(
            build_message(&email("a@b.c\r\nBcc: x@y.z")),
            Err(MailError::Invalid(_))
        ));
    }

    #[test]
    fn production_refuses_the_file_transport() {
        let file = MailTransport::File(PathBuf::from("data/mail"));
        assert!(file.build(Profile::Production).is_err());
        assert!(file.build(Profile::Development).is_ok());
        let smtp = MailTransport::Smtp(SmtpSettings {
            tls: SmtpTls::None,
            ..SmtpSettings::default()
        });
        assert!(smtp.build(Profile::Production).is_ok());
    }

    #[test]
    fn credentials_go_together_and_stay_out_of_debug() {
        let half = SmtpSettings {
            username: Some("user".to_owned()),
            ..SmtpSettings::default()
        };
        assert!(SmtpMailer::new(&half).is_err());
        let full = SmtpSettings {
            username: Some("user".to_owned()),
            password: Some("hunter2-secret".to_owned()),
            ..SmtpSettings::default()
        };
        assert!(!format!("{full:?}").contains("hunter2"));
        assert!(SmtpMailer::new(&full).is_ok());
    }
}
