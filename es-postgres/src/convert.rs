//! Between the store's unsigned numbers and PostgreSQL's signed `bigint` columns.
//!
//! Stored values are never negative (the schema's checks and identity columns see to it), so
//! negative values read back clamp to 0, and values past `i64::MAX` written clamp to it.

use es_core::Position;

/// A `u64` as a `bigint` parameter.
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A position's `(transaction_id, position)` columns.
pub(crate) fn position_to_columns(position: Position) -> (i64, i64) {
    (to_i64(position.transaction), to_i64(position.sequence))
}

/// A position from its `(transaction_id, position)` columns.
pub(crate) fn position_from_columns(transaction: i64, sequence: i64) -> Position {
    Position::new(transaction.max(0) as u64, sequence.max(0) as u64)
}
