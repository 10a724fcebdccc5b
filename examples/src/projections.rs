//! The bank's read models, kept by projection runners in PostgreSQL.

use async_trait::async_trait;
use es_core::{BoxError, Envelope};
use es_postgres::{PgProjection, ReadModel, SchemaName};
use sqlx::{AssertSqlSafe, PgConnection};

use crate::account::AccountEvent;

/// One row per account: owner, balance, whether closed, and the last version applied.
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
             balance bigint NOT NULL DEFAULT 0, closed boolean NOT NULL DEFAULT false, \
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
        let (owner, delta, closed) = match &event.payload {
            AccountEvent::Opened { owner } => (Some(owner.as_str()), 0, false),
            AccountEvent::Deposited { amount } => (None, i64::try_from(*amount)?, false),
            AccountEvent::Withdrawn { amount } => (None, -i64::try_from(*amount)?, false),
            AccountEvent::Closed => (None, 0, true),
        };
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} AS t (account, owner, balance, closed, version) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account) DO UPDATE SET \
             owner = coalesce($2, t.owner), balance = t.balance + $3, \
             closed = t.closed OR $4, version = $5",
            self.table
        )))
        .bind(event.stream_id.as_str())
        .bind(owner)
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
