//! The bank's read models, kept by projection runners in PostgreSQL.

use async_trait::async_trait;
use es_core::{BoxError, Envelope};
use es_postgres::{PgProjection, ReadModel, SchemaName};
use sqlx::{AssertSqlSafe, PgConnection};

use crate::account::AccountEvent;
use crate::transfer::TransferEvent;

/// One row per account: owner, currency, balance, whether closed, and the last version
/// applied.
pub struct AccountBalances {
    schema: SchemaName,
    table: String,
}

impl AccountBalances {
    /// The read model in `schema`.
    pub fn new(schema: &SchemaName) -> Self {
        Self {
            schema: schema.clone(),
            table: format!("\"{schema}\".account_balances"),
        }
    }
}

#[async_trait]
impl PgProjection for AccountBalances {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "account_balances"
    }

    fn read_model(&self) -> Option<ReadModel> {
        ReadModel::new(self.schema.clone(), ["account_balances"]).ok()
    }

    fn wants_category(&self, category: &str) -> bool {
        category == "account"
    }

    async fn setup(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {} (account text PRIMARY KEY, owner text, \
             currency text, balance bigint NOT NULL DEFAULT 0, closed boolean NOT NULL DEFAULT false, \
             version bigint NOT NULL)",
            self.table
        )))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {}", self.table)))
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &Envelope<AccountEvent>,
    ) -> Result<(), BoxError> {
        let (opened, delta, closed) = match &event.payload {
            AccountEvent::Opened { owner, currency } => (Some((owner, currency)), 0, false),
            AccountEvent::Deposited { amount }
            | AccountEvent::TransferCredited { amount, .. }
            | AccountEvent::TransferRefunded { amount, .. } => {
                (None, i64::try_from(*amount)?, false)
            }
            AccountEvent::Withdrawn { amount } | AccountEvent::TransferDebited { amount, .. } => {
                (None, -i64::try_from(*amount)?, false)
            }
            AccountEvent::Closed => (None, 0, true),
        };
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} AS t (account, owner, currency, balance, closed, version) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (account) DO UPDATE SET \
             owner = coalesce($2, t.owner), currency = coalesce($3, t.currency), \
             balance = t.balance + $4, closed = t.closed OR $5, version = $6",
            self.table
        )))
        .bind(event.stream_id.id())
        .bind(opened.map(|(owner, _)| owner))
        .bind(opened.map(|(_, currency)| currency))
        .bind(delta)
        .bind(closed)
        .bind(i64::try_from(event.stream_version)?)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// How many events of each type the bank has recorded.
pub struct ActivityByType {
    schema: SchemaName,
    table: String,
}

impl ActivityByType {
    /// The read model in `schema`.
    pub fn new(schema: &SchemaName) -> Self {
        Self {
            schema: schema.clone(),
            table: format!("\"{schema}\".activity_by_type"),
        }
    }
}

#[async_trait]
impl PgProjection for ActivityByType {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "activity_by_type"
    }

    fn read_model(&self) -> Option<ReadModel> {
        ReadModel::new(self.schema.clone(), ["activity_by_type"]).ok()
    }

    async fn setup(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {} (event_type text PRIMARY KEY, events bigint NOT NULL)",
            self.table
        )))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {}", self.table)))
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &Envelope<AccountEvent>,
    ) -> Result<(), BoxError> {
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} AS t (event_type, events) VALUES ($1, 1) \
             ON CONFLICT (event_type) DO UPDATE SET events = t.events + 1",
            self.table
        )))
        .bind(&event.event_type)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// One upsert per event type in the batch instead of one per event.
    async fn apply_batch(
        &self,
        conn: &mut PgConnection,
        events: &[Envelope<AccountEvent>],
    ) -> Result<(), BoxError> {
        let mut counts: std::collections::BTreeMap<&str, i64> = Default::default();
        for event in events {
            *counts.entry(event.event_type.as_str()).or_default() += 1;
        }
        let (types, added): (Vec<&str>, Vec<i64>) = counts.into_iter().unzip();
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} AS t (event_type, events) SELECT * FROM UNNEST($1::text[], $2::int8[]) \
             ON CONFLICT (event_type) DO UPDATE SET events = t.events + EXCLUDED.events",
            self.table
        )))
        .bind(&types)
        .bind(&added)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// One row per transfer: who paid whom how much, where it stands and why it failed. What a
/// "my transfers" screen would read.
pub struct TransferHistory {
    schema: SchemaName,
    table: String,
}

impl TransferHistory {
    /// The read model in `schema`.
    pub fn new(schema: &SchemaName) -> Self {
        Self {
            schema: schema.clone(),
            table: format!("\"{schema}\".transfer_history"),
        }
    }
}

#[async_trait]
impl PgProjection for TransferHistory {
    type Event = TransferEvent;

    fn name(&self) -> &str {
        "transfer_history"
    }

    fn read_model(&self) -> Option<ReadModel> {
        ReadModel::new(self.schema.clone(), ["transfer_history"]).ok()
    }

    fn wants_category(&self, category: &str) -> bool {
        category == "transfer"
    }

    async fn setup(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {} (transfer text PRIMARY KEY, from_account text, \
             to_account text, amount bigint, status text NOT NULL, reason text, \
             correlation_id uuid NOT NULL, requested_at timestamptz, updated_at timestamptz)",
            self.table
        )))
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {}", self.table)))
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        event: &Envelope<TransferEvent>,
    ) -> Result<(), BoxError> {
        let transfer = event.stream_id.id();
        if let TransferEvent::TransferRequested { from, to, amount } = &event.payload {
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {} (transfer, from_account, to_account, amount, status, \
                 correlation_id, requested_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 'pending', $5, $6, $6) ON CONFLICT (transfer) DO NOTHING",
                self.table
            )))
            .bind(transfer)
            .bind(from)
            .bind(to)
            .bind(i64::try_from(*amount)?)
            .bind(event.correlation_id)
            .bind(event.recorded_at)
            .execute(conn)
            .await?;
            return Ok(());
        }
        let (status, reason) = match &event.payload {
            TransferEvent::TransferRequested { .. } => return Ok(()),
            TransferEvent::TransferRejected { reason } => ("rejected", Some(reason)),
            TransferEvent::CreditRefused { reason } => ("refunding", Some(reason)),
            TransferEvent::TransferCompleted => ("completed", None),
            TransferEvent::TransferCancelled { reason } => ("cancelled", Some(reason)),
        };
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {} SET status = $2, reason = coalesce($3, reason), updated_at = $4 \
             WHERE transfer = $1",
            self.table
        )))
        .bind(transfer)
        .bind(status)
        .bind(reason)
        .bind(event.recorded_at)
        .execute(conn)
        .await?;
        Ok(())
    }
}
