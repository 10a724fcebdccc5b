//! Derive macros for the event-sourcing framework (in progress: see the open issue).
