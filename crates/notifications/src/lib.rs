//! The notifications service: every event a customer or the operations team should hear of
//! becomes one email (HTML and plain text, through SMTP or as `.eml` files), sent once however
//! often the event is delivered; customers' order news also lands in their in-app inbox. A
//! notification log records every email and inbox entry with its status and last error.

pub mod api;
pub mod domain;
pub mod events;
pub mod mailer;
pub mod service;
pub mod store;
pub mod templates;

pub use api::{router, NotificationsApi, PUBLIC_ROUTES};
pub use domain::{Channel, LogStatus, NotificationKind};
pub use events::{NotificationEvents, EVENT_TYPES};
pub use mailer::{FileMailer, MailError, MailTransport, Mailer, OutgoingEmail, SmtpMailer, SmtpSettings, SmtpTls};
pub use service::{Contact, Directory, EmailOutcome, Notifications, Settings, SERVICE};
pub use store::MIGRATIONS;
