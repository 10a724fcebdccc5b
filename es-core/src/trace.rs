//! One piece of work, followed through every stream it touched: the events sharing a
//! correlation id, drawn as a tree of what caused what.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use crate::{EventStore, RecordedEvent, StoreError};
use uuid::Uuid;

/// The most events a trace shows.
pub const LIMIT: usize = 1_000;

/// The events of `correlation_id`, drawn by [`render`]; `None` when there are none.
pub async fn trace(
    store: &dyn EventStore,
    correlation_id: Uuid,
) -> Result<Option<String>, StoreError> {
    let events = store.read_correlated(correlation_id, LIMIT).await?;
    Ok((!events.is_empty()).then(|| render(&events)))
}

/// Draws `events` (one correlation id, in global order) as a tree: each event under the event
/// that caused it. Events whose cause is not an event of the set (the first command's) are
/// roots.
pub fn render(events: &[RecordedEvent]) -> String {
    let ids: HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    let mut children: HashMap<Uuid, Vec<&RecordedEvent>> = HashMap::new();
    let mut roots = Vec::new();
    for event in events {
        match event.causation_id.filter(|cause| ids.contains(cause)) {
            Some(cause) => children.entry(cause).or_default().push(event),
            None => roots.push(event),
        }
    }
    let mut out = String::new();
    let mut stack: Vec<(&RecordedEvent, usize)> = roots.into_iter().rev().map(|e| (e, 0)).collect();
    while let Some((event, depth)) = stack.pop() {
        let indent = "   ".repeat(depth);
        let _ = writeln!(
            out,
            "{indent}└─ {:<18} {:<18} v{:<3} {}",
            event.event_type,
            event.stream_id.as_str(),
            event.stream_version,
            event.payload.get()
        );
        if let Some(effects) = children.get(&event.event_id) {
            stack.extend(effects.iter().rev().map(|e| (*e, depth + 1)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExpectedVersion, InMemoryEventStore, NewEvent, StreamId};
    use std::sync::Arc;

    fn event(event_type: &str) -> NewEvent {
        NewEvent::new(
            event_type,
            1,
            serde_json::value::to_raw_value(&serde_json::json!({})).expect("json"),
        )
    }

    #[tokio::test]
    async fn effects_are_drawn_under_their_cause() {
        let store = Arc::new(InMemoryEventStore::new());
        let work = Uuid::now_v7();
        let root = event("Asked").correlated_with(work);
        let effect = event("Done").correlated_with(work).caused_by(root.event_id);
        let sibling = event("AlsoAsked").correlated_with(work);
        let a = StreamId::new("a-1").expect("stream");
        let b = StreamId::new("b-1").expect("stream");
        store
            .append(&a, ExpectedVersion::Any, vec![root, sibling])
            .await
            .expect("append");
        store
            .append(&b, ExpectedVersion::Any, vec![event("Unrelated"), effect])
            .await
            .expect("append");
        let drawn = trace(store.as_ref(), work)
            .await
            .expect("trace")
            .expect("events found");
        let lines: Vec<_> = drawn
            .lines()
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            lines,
            vec!["└─ Asked a-1", "└─ Done b-1", "└─ AlsoAsked a-1"],
            "{drawn}"
        );
        assert!(drawn.lines().nth(1).is_some_and(|l| l.starts_with("   └─")));
        assert!(
            trace(store.as_ref(), Uuid::now_v7())
                .await
                .expect("trace")
                .is_none()
        );
    }
}
