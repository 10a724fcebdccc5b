//! What goes on the wire: one message per relayed event, its headers, and how a relay reads
//! its own position back out of a message the broker holds.

use es_core::{Position, RecordedEvent};

/// Header names every relayed message carries (beside the broker's own message id header,
/// which holds [`Message::id`]).
pub mod header {
    /// The event's id.
    pub const EVENT_ID: &str = "Es-Event-Id";
    /// The event's type, as published (after upcasting or mapping, when configured).
    pub const EVENT_TYPE: &str = "Es-Event-Type";
    /// The schema version of the published payload.
    pub const SCHEMA_VERSION: &str = "Es-Schema-Version";
    /// The stream the event belongs to.
    pub const STREAM: &str = "Es-Stream";
    /// The event's version in its stream.
    pub const STREAM_VERSION: &str = "Es-Stream-Version";
    /// The event's position in the global log, as `transaction/sequence`.
    pub const POSITION: &str = "Es-Position";
    /// Which of the events an upcaster made of one stored event this is (0 for most).
    pub const SPLIT: &str = "Es-Split";
    /// The correlation id.
    pub const CORRELATION_ID: &str = "Es-Correlation-Id";
    /// The causation id, when the event has one.
    pub const CAUSATION_ID: &str = "Es-Causation-Id";
    /// The W3C trace context of the span that wrote the event (its `traceparent` metadata,
    /// which commands stamp with es-core's `otel` feature), under the name OpenTelemetry
    /// propagators read, so a consumer's trace continues the producer's.
    pub const TRACEPARENT: &str = "traceparent";
    /// When the event was recorded (RFC 3339, UTC).
    pub const RECORDED_AT: &str = "Es-Recorded-At";
    /// The relay (and part) that published it.
    pub const RELAY: &str = "Es-Relay";
}

/// One message a relay publishes: an event (or what a mapping made of it) with its envelope in
/// headers.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Subject (NATS) or routing key (AMQP), before the publisher's prefix.
    pub topic: String,
    /// The broker-level message id: the event id, with `:{split}` for the second and later
    /// events an upcaster made of one stored event. Brokers deduplicate on it.
    pub id: String,
    /// Headers, in order.
    pub headers: Vec<(&'static str, String)>,
    /// The payload: JSON text.
    pub payload: String,
    /// The event's position in the global log.
    pub position: Position,
    /// Which of the events made of one stored event this is.
    pub split: u32,
    /// The stream it belongs to: publishers keep one stream's messages in order.
    pub stream: String,
}

impl Message {
    /// The message for one event: `event_type`, `schema_version` and `payload` as published,
    /// the rest of the envelope from `event`.
    pub(crate) fn new(
        relay: &str,
        topic: String,
        event: &RecordedEvent,
        split: u32,
        event_type: &str,
        schema_version: u32,
        payload: String,
    ) -> Self {
        let id = if split == 0 {
            event.event_id.to_string()
        } else {
            format!("{}:{split}", event.event_id)
        };
        let mut headers = vec![
            (header::EVENT_ID, event.event_id.to_string()),
            (header::EVENT_TYPE, header_value(event_type)),
            (header::SCHEMA_VERSION, schema_version.to_string()),
            (header::STREAM, header_value(event.stream_id.as_str())),
            (header::STREAM_VERSION, event.stream_version.to_string()),
            (header::POSITION, format_position(event.position)),
            (header::SPLIT, split.to_string()),
            (header::CORRELATION_ID, event.correlation_id.to_string()),
            (
                header::RECORDED_AT,
                event
                    .recorded_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ),
            (header::RELAY, header_value(relay)),
        ];
        if let Some(causation) = event.causation_id {
            headers.push((header::CAUSATION_ID, causation.to_string()));
        }
        if let Some(traceparent) = traceparent(event) {
            headers.push((header::TRACEPARENT, traceparent));
        }
        Self {
            topic,
            id,
            headers,
            payload,
            position: event.position,
            split,
            stream: event.stream_id.as_str().to_owned(),
        }
    }

    /// Where this message stands in the relay's order: position, then split.
    pub fn mark(&self) -> Mark {
        Mark {
            position: self.position,
            split: self.split,
        }
    }
}

/// How far a relay got on a broker: the position and split of the last message it published.
/// Messages at or before a mark are never published again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark {
    /// The event's position.
    pub position: Position,
    /// Which of the events made of it.
    pub split: u32,
}

impl Mark {
    /// Reads a mark from a published message's headers (`header` looks one up by name);
    /// `None` when they do not carry one.
    pub fn from_headers<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<Mark> {
        let position = parse_position(header(header::POSITION)?)?;
        let split = header(header::SPLIT).map_or(Some(0), |s| s.parse().ok())?;
        Some(Mark { position, split })
    }
}

/// Text from stored data as a header value: `%`, control characters (CR and LF would end a
/// header line) and spaces at either end (brokers trim them) are percent-encoded, so any text
/// travels and [`decode_header_value`] gives it back exactly. Plain text is unchanged.
pub fn header_value(text: &str) -> String {
    let last = text.chars().count().saturating_sub(1);
    let mut out = String::with_capacity(text.len());
    for (index, c) in text.chars().enumerate() {
        let edge_space = c == ' ' && (index == 0 || index == last);
        if c == '%' || c.is_control() || edge_space {
            let mut buffer = [0u8; 4];
            for byte in c.encode_utf8(&mut buffer).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The text a header value written by [`header_value`] stands for; malformed escapes are kept
/// as they are.
pub fn decode_header_value(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = value.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| value.to_owned())
}

/// A position as the `Es-Position` header writes it: `transaction/sequence`.
pub fn format_position(position: Position) -> String {
    format!("{}/{}", position.transaction, position.sequence)
}

/// Reads an `Es-Position` header; `None` when it is not one.
pub fn parse_position(text: &str) -> Option<Position> {
    let (transaction, sequence) = text.split_once('/')?;
    Some(Position::new(
        transaction.parse().ok()?,
        sequence.parse().ok()?,
    ))
}

/// A topic segment made of stored text (a category, a type): characters brokers give a
/// meaning to (`.`, `*`, `>`, `#`, whitespace and the like) become `_`, so hostile stream ids
/// cannot reach other subjects or make a publish fail.
pub fn topic_segment(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "_".to_owned()
    } else {
        cleaned
    }
}

/// The event's `traceparent` metadata when it has the W3C form (`vv-<32 hex>-<16 hex>-ff`);
/// anything else in that key stays out of the headers.
fn traceparent(event: &RecordedEvent) -> Option<String> {
    if !event.metadata.as_json().contains("traceparent") {
        return None;
    }
    let value = event.metadata.get("traceparent")?;
    let text = value.as_str()?;
    let lengths = [2, 32, 16, 2];
    let parts: Vec<&str> = text.split('-').collect();
    let well_formed = parts.len() == lengths.len()
        && parts.iter().zip(lengths).all(|(part, length)| {
            part.len() == length
                && part
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
    // Version ff is invalid, and all-zero trace or span ids name nothing.
    let meaningful = well_formed
        && parts[0] != "ff"
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0');
    meaningful.then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_junk_is_refused() {
        let p = Position::new(123, 456);
        assert_eq!(parse_position(&format_position(p)), Some(p));
        assert_eq!(parse_position("12"), None);
        assert_eq!(parse_position("a/1"), None);
        assert_eq!(parse_position("-1/1"), None);
    }

    #[test]
    fn topic_segments_cannot_reach_other_subjects() {
        assert_eq!(topic_segment("account"), "account");
        assert_eq!(topic_segment("a.b*>c d#"), "a_b__c_d_");
        assert_eq!(topic_segment(""), "_");
        assert_eq!(topic_segment("é"), "_");
    }

    #[test]
    fn header_values_carry_any_text_and_come_back_exactly() {
        for text in [
            "ledger-1",
            "a\r\nInjected: yes",
            " edge ",
            "100%",
            "tab\there",
            "é ü",
            "\u{7f}\u{85}",
            "",
        ] {
            let value = header_value(text);
            assert!(!value.contains(['\r', '\n']), "{value:?}");
            assert!(
                !value.starts_with(' ') && !value.ends_with(' '),
                "{value:?}"
            );
            assert_eq!(decode_header_value(&value), text);
        }
        assert_eq!(header_value("ledger-1"), "ledger-1");
        assert_eq!(decode_header_value("%zz%4"), "%zz%4");
    }

    fn event_with_metadata(metadata: &str) -> RecordedEvent {
        RecordedEvent {
            event_id: uuid::Uuid::now_v7(),
            stream_id: es_core::StreamId::new("order-1").expect("a stream id"),
            stream_version: 1,
            position: Position::new(1, 1),
            event_type: "Placed".into(),
            schema_version: 1,
            recorded_at: chrono::Utc::now(),
            correlation_id: uuid::Uuid::now_v7(),
            causation_id: None,
            metadata: es_core::Metadata::from_json(metadata).expect("metadata"),
            split_index: 0,
            payload: serde_json::value::RawValue::from_string("{}".into())
                .expect("json")
                .into(),
        }
    }

    #[test]
    fn a_well_formed_traceparent_becomes_a_header_and_nothing_else_does() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let with = |metadata: &str| {
            let event = event_with_metadata(metadata);
            let message = Message::new("r", "t".into(), &event, 0, "Placed", 1, "{}".into());
            message
                .headers
                .iter()
                .find(|(name, _)| *name == header::TRACEPARENT)
                .map(|(_, value)| value.clone())
        };
        assert_eq!(
            with(&format!(r#"{{"traceparent":"{traceparent}"}}"#)).as_deref(),
            Some(traceparent)
        );
        assert_eq!(with("{}"), None);
        for hostile in [
            r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nX: y"}"#,
            r#"{"traceparent":"<script>alert(1)</script>"}"#,
            r#"{"traceparent":42}"#,
            r#"{"traceparent":"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"}"#,
            r#"{"note":"traceparent"}"#,
            r#"{"traceparent":"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#,
            r#"{"traceparent":"00-00000000000000000000000000000000-00f067aa0ba902b7-01"}"#,
        ] {
            assert_eq!(with(hostile), None, "{hostile}");
        }
    }

    #[test]
    fn marks_order_by_position_then_split() {
        let a = Mark {
            position: Position::new(5, 1),
            split: 1,
        };
        let b = Mark {
            position: Position::new(5, 2),
            split: 0,
        };
        assert!(a < b);
        let headers = [("Es-Position", "5/2"), ("Es-Split", "0")];
        let found =
            Mark::from_headers(|name| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v));
        assert_eq!(found, Some(b));
    }
}
