//! The bank's read models, kept by projection runners in PostgreSQL.

use async_trait::async_trait;
use es_core::{BoxError, Envelope};
use es_postgres::{PgProjection, ReadModel, SchemaName};
use sqlx::{AssertSqlSafe, PgConnection};

use crate::account::AccountEvent;
use crate::transfer::TransferEvent;

/// One schema-qualified read-model table: what each projection here writes, in the schema it
/// was built for (the live one, or the next one during a blue/green rebuild).
struct Table {
    schema: SchemaName,
    name: &'static str,
    qualified: String,
}

impl Table {
    fn new(schema: &SchemaName, name: &'static str) -> Self {
        Self {
            schema: schema.clone(),
            name,
            qualified: format!("\"{schema}\".{name}"),
        }
    }

    fn read_model(&self) -> Option<ReadModel> {
        ReadModel::new(self.schema.clone(), [self.name]).ok()
    }

    /// Creates the table with `columns` (SQL text written here, never user input).
    async fn create(&self, conn: &mut PgConnection, columns: &str) -> Result<(), BoxError> {
        let create = format!("CREATE TABLE IF NOT EXISTS {self} ({columns})");
        sqlx::query(AssertSqlSafe(create)).execute(conn).await?;
        Ok(())
    }

    async fn clear(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {self}")))
            .execute(conn)
            .await?;
        Ok(())
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.qualified)
    }
}

/// One row per account: owner, currency, balance, whether closed, and the last version
/// applied.
pub struct AccountBalances {
    table: Table,
}

impl AccountBalances {
    /// The read model in `schema`.
    pub fn new(schema: &SchemaName) -> Self {
        Self {
            table: Table::new(schema, "account_balances"),
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
        self.table.read_model()
    }

    fn wants_category(&self, category: &str) -> bool {
        category == "account"
    }

    async fn setup(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        let columns = "account text PRIMARY KEY, owner text, currency text, \
             balance bigint NOT NULL DEFAULT 0, closed boolean NOT NULL DEFAULT false, \
             version bigint NOT NULL";
        self.table.create(conn, columns).await
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        self.table.clear(conn).await
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
    table: Table,
}

impl ActivityByType {
    /// The read model in `schema`.
    pub fn new(schema: &SchemaName) -> Self {
        Self {
            table: Table::new(schema, "activity_by_type"),
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
        self.table.read_model()
    }

    async fn setup(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        self.table
            .create(conn, "event_type text PRIMARY KEY, events bigint NOT NULL")
            .await
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        self.table.clear(conn).await
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
    table: Table,
}

impl TransferHistory {
    /// The read model in `schema`.
    pub fn new(schema: &SchemaName) -> Self {
        Self {
            table: Table::new(schema, "transfer_history"),
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
        self.table.read_model()
    }

    fn wants_category(&self, category: &str) -> bool {
        category == "transfer"
    }

    async fn setup(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        self.table
            .create(
                conn,
                "transfer text PRIMARY KEY, from_account text, \
             to_account text, amount bigint, status text NOT NULL, reason text, \
             correlation_id uuid NOT NULL, requested_at timestamptz, updated_at timestamptz",
            )
            .await
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), BoxError> {
        self.table.clear(conn).await
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
