//! One transfer followed through its spans: the request's command and append, the saga's feed
//! batches, each saga command with the command and append it ran, all carrying the transfer's
//! correlation id, each step's causation the event that caused it.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

mod common;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{Layer, Registry};

/// A span as the collector saw it.
#[derive(Clone, Debug)]
struct Seen {
    id: u64,
    parent: Option<u64>,
    name: &'static str,
    fields: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Seen>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Collector {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = if attrs.is_root() {
            None
        } else if let Some(parent) = attrs.parent() {
            Some(parent.into_u64())
        } else {
            ctx.current_span().id().map(Id::into_u64)
        };
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Seen {
            id: id.into_u64(),
            parent,
            name: attrs.metadata().name(),
            fields,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some(seen) = spans.iter_mut().rev().find(|s| s.id == id.into_u64()) {
            values.record(&mut Fields(&mut seen.fields));
        }
    }
}

impl Seen {
    fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }
}

/// The spans of one correlation id as an indented tree, children under their parent.
fn render(spans: &[Seen], correlation: &str) -> String {
    let ours: Vec<&Seen> = spans
        .iter()
        .filter(|s| {
            s.field("correlation_id") == correlation
                || s.field("correlation_ids").contains(correlation)
        })
        .collect();
    let mut out = String::new();
    fn walk(out: &mut String, all: &[Seen], at: &Seen, depth: usize) {
        let mut keys: Vec<(&String, &String)> = at
            .fields
            .iter()
            .filter(|(k, _)| k.as_str() != "correlation_ids")
            .collect();
        keys.sort();
        let fields: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            out,
            "{}{} {}",
            "  ".repeat(depth),
            at.name,
            fields.join(" ")
        );
        for child in all.iter().filter(|s| s.parent == Some(at.id)) {
            walk(out, all, child, depth + 1);
        }
    }
    for root in ours
        .iter()
        .filter(|s| s.parent.is_none_or(|p| !ours.iter().any(|o| o.id == p)))
    {
        walk(&mut out, spans, root, 0);
    }
    out
}

#[test]
fn one_transfer_is_one_tree_of_spans_carrying_its_correlation_and_causes() {
    let collector = Collector::default();
    let subscriber = Registry::default().with(collector.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    // One thread: every span of the run reaches the collector set for this thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (correlation, stored) = runtime.block_on(common::one_transfer());
    let spans = collector.0.lock().unwrap().clone();
    let correlation = correlation.to_string();
    let tree = render(&spans, &correlation);
    println!("{tree}");

    let types: Vec<&str> = stored.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "TransferRequested",
            "TransferDebited",
            "TransferCredited",
            "TransferCompleted"
        ],
        "the transfer's events"
    );
    let by_id: HashMap<String, &str> = stored
        .iter()
        .map(|e| (e.event_id.to_string(), e.event_type.as_str()))
        .collect();

    let of = |name: &str| -> Vec<&Seen> {
        spans
            .iter()
            .filter(|s| s.name == name && s.field("correlation_id") == correlation)
            .collect()
    };
    let children = |parent: &Seen, name: &str| -> Vec<&Seen> {
        spans
            .iter()
            .filter(|s| s.parent == Some(parent.id) && s.name == name)
            .collect()
    };

    // The request: a root command span, its append under it.
    let roots: Vec<&Seen> = of("execute")
        .into_iter()
        .filter(|s| s.parent.is_none())
        .collect();
    assert_eq!(roots.len(), 1, "one root command\n{tree}");
    assert_eq!(roots[0].field("aggregate"), "transfer", "{tree}");
    let appends = children(roots[0], "append");
    assert_eq!(appends.len(), 1, "{tree}");
    assert_eq!(appends[0].field("correlation_id"), correlation, "{tree}");

    // Each saga command: caused by an event of this transfer, running one command whose
    // append carries the same correlation and causation.
    let commands = of("saga_command");
    assert_eq!(commands.len(), 3, "debit, credit, complete\n{tree}");
    let mut caused_by = Vec::new();
    for command in &commands {
        let cause = command.field("causation_id");
        let cause_type = by_id.get(cause).unwrap_or_else(|| {
            panic!("saga command caused by {cause}, not an event of the transfer\n{tree}")
        });
        caused_by.push(*cause_type);
        let executes = children(command, "execute");
        assert_eq!(executes.len(), 1, "{tree}");
        assert_eq!(executes[0].field("correlation_id"), correlation, "{tree}");
        assert_eq!(executes[0].field("causation_id"), cause, "{tree}");
        let appends = children(executes[0], "append");
        assert_eq!(appends.len(), 1, "{tree}");
        assert_eq!(appends[0].field("correlation_id"), correlation, "{tree}");
        assert_eq!(appends[0].field("causation_id"), cause, "{tree}");
    }
    caused_by.sort();
    assert_eq!(
        caused_by,
        ["TransferCredited", "TransferDebited", "TransferRequested"],
        "each step caused by the event before it\n{tree}"
    );

    // The saga's feed read the transfer's events in batches that name its correlation.
    let batches: Vec<&Seen> = spans
        .iter()
        .filter(|s| {
            s.name == "projection_batch" && s.field("correlation_ids").contains(&correlation)
        })
        .collect();
    assert!(!batches.is_empty(), "{tree}");
    assert!(
        batches
            .iter()
            .all(|b| b.field("projection") == "transfer_saga"),
        "{:?}",
        batches
            .iter()
            .map(|b| b.field("projection"))
            .collect::<Vec<_>>()
    );
}
