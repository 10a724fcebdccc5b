//! What the admin commands fail with, printed as sentences.

use std::fmt::Write as _;

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The store (connecting, the schema, a query).
    #[error(transparent)]
    Store(#[from] es_postgres::PgError),
    /// A projection or saga runner.
    #[error(transparent)]
    Projection(#[from] es_postgres::ProjectionError),
    /// Reading the log.
    #[error(transparent)]
    Events(#[from] es_core::StoreError),
    /// A name given on the command line that is not registered.
    #[error("no {kind} named {name:?}; registered: {known}")]
    Unknown {
        /// `projection` or `saga`.
        kind: &'static str,
        /// The name given.
        name: String,
        /// The registered ones.
        known: String,
    },
    /// Another process holds what the command needs.
    #[error("{0}")]
    Busy(String),
    /// The registered parts do not fit how the CLI was started.
    #[error("{0}")]
    Config(String),
    /// The schema gate: stored event types this release's code would not decode.
    #[error("{0}")]
    SchemaGate(String),
    /// A runner's task ended abnormally (it panicked).
    #[error("{0}")]
    Runner(String),
    /// Writing the output failed (other than the reader going away).
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl AdminError {
    /// The error and every cause under it, one per line: what a CLI prints.
    pub fn report(&self) -> String {
        let mut out = format!("error: {self}");
        let mut source = std::error::Error::source(self);
        let mut last = self.to_string();
        while let Some(cause) = source {
            let text = cause.to_string();
            // Transparent wrappers repeat their cause's text: say it once.
            if !last.contains(&text) {
                let _ = write!(out, "\n  caused by: {text}");
            }
            last = text;
            source = cause.source();
        }
        out
    }

    /// The process exit code: 2 when another process holds what was asked for, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Busy(_) => 2,
            _ => 1,
        }
    }
}
