//! Positions in the global log.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where an event sits in the global log, and the checkpoint a reader resumes from.
///
/// The global order is `(transaction, sequence)`: `transaction` is the id of the database
/// transaction that wrote the event and `sequence` a unique number taken when the row was
/// written. Sequence numbers alone are not a safe reading order, because transactions commit in
/// a different order than the one in which they took their numbers; ordering by the writing
/// transaction first, and only reading transactions older than every one still running, gives an
/// order that never changes after a reader has seen it (see `ARCHITECTURE.md`).
///
/// The in-memory store numbers both parts from one counter.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// The id of the transaction the event is ordered under: the one that wrote it, or (on
    /// PostgreSQL) the newer one of its stream's previous event, which keeps every stream in
    /// version order.
    pub transaction: u64,
    /// The event's unique sequence number, ordering events within one transaction.
    pub sequence: u64,
}

impl Position {
    /// Before the first event: reading the global log after `START` reads all of it.
    pub const START: Position = Position {
        transaction: 0,
        sequence: 0,
    };

    /// A position from its two parts.
    pub const fn new(transaction: u64, sequence: u64) -> Self {
        Self {
            transaction,
            sequence,
        }
    }
}

/// Shown as `#{sequence} (tx {transaction})`: the event's number, then the transaction it is
/// ordered under, which comes first in the order.
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} (tx {})", self.sequence, self.transaction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_transaction_before_sequence() {
        // A later transaction that took an earlier sequence number still reads after.
        assert!(Position::new(7, 100) < Position::new(8, 50));
        assert!(Position::new(8, 50) < Position::new(8, 51));
        assert!(Position::START < Position::new(0, 1));
        assert_eq!(Position::new(3, 9).to_string(), "#9 (tx 3)");
    }
}
