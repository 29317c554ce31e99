//! The event envelope (CloudEvents 1.0 plus a correlation id) that every service publishes.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock;

/// A CloudEvents 1.0 envelope in its JSON form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub specversion: String,
    /// UUIDv7; consumers deduplicate on it.
    pub id: Uuid,
    /// Dotted, e.g. `user.registered`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The publishing service, e.g. `/mercato/identity`.
    pub source: String,
    /// The aggregate's id; ordering is kept per subject.
    pub subject: String,
    /// RFC 3339.
    pub time: String,
    pub datacontenttype: String,
    /// Carried from the HTTP request that caused the event, through every hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    /// The W3C trace context of the work that wrote the event (the CloudEvents
    /// distributed-tracing extension), present while traces are exported; the consumer's span
    /// continues that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub data: serde_json::Value,
}

impl Event {
    pub fn new(
        service: &str,
        kind: &str,
        subject: impl ToString,
        data: impl Serialize,
        correlation_id: Option<&str>,
    ) -> Self {
        Self {
            specversion: "1.0".to_owned(),
            id: crate::id::new_id(),
            kind: kind.to_owned(),
            source: format!("/mercato/{service}"),
            subject: subject.to_string(),
            time: clock::rfc3339(clock::now_ms()),
            datacontenttype: "application/json".to_owned(),
            correlationid: correlation_id.map(str::to_owned),
            traceparent: crate::traces::current_traceparent(),
            // Serializing plain data structs cannot fail; keep a null rather than panic if one does.
            data: serde_json::to_value(data).unwrap_or(serde_json::Value::Null),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(raw: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(raw)
    }

    /// Reads `data` as `T`.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.data.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_cloudevents_fields() {
        let event = Event::new(
            "identity",
            "user.registered",
            "u-1",
            serde_json::json!({"a": 1}),
            Some("corr"),
        );
        let json: serde_json::Value = serde_json::from_str(&event.to_json()).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "user.registered");
        assert_eq!(json["source"], "/mercato/identity");
        assert_eq!(json["subject"], "u-1");
        assert_eq!(json["correlationid"], "corr");
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(Event::from_json(&event.to_json()).unwrap(), event);
    }
}
