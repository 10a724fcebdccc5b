//! Connecting, failing fast: a wrong URL, a server that is not there, a missing database or a
//! refused login is reported at once, with the server's own reason and what to check, instead
//! of a pool timeout after half a minute.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::PgError;

/// How long the first connection may take before the server counts as unreachable.
const FIRST_CONNECTION: Duration = Duration::from_secs(10);

/// A pool of up to `max_connections` to `url`, after one connection proved the server is
/// there and accepts the login. Errors name the server (never the password), say what went
/// wrong in the server's words, and what to check.
pub async fn connect_pool(url: &str, max_connections: u32) -> Result<PgPool, PgError> {
    let options = parse_url(url)?;
    let target = describe(&options);
    let first = tokio::time::timeout(FIRST_CONNECTION, PgConnection::connect_with(&options)).await;
    match first {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(error)) => return Err(connect_error(&target, &error)),
        Err(_elapsed) => {
            return Err(PgError::Connect {
                target,
                reason: format!("no answer within {} s", FIRST_CONNECTION.as_secs()),
                hint: "check the host and port, and that no firewall drops the connection".into(),
            });
        }
    }
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|e| connect_error(&target, &e))
}

/// Parses a connection URL, refusing an empty one (an unset variable exported as empty).
pub fn parse_url(url: &str) -> Result<PgConnectOptions, PgError> {
    if url.trim().is_empty() {
        return Err(PgError::Connect {
            target: "(an empty URL)".into(),
            reason: "the database URL is empty".into(),
            hint: "set DATABASE_URL to postgres://user@host:port/database, or unset it to use \
                   the default"
                .into(),
        });
    }
    PgConnectOptions::from_str(url).map_err(|error| PgError::Connect {
        target: "(an invalid URL)".into(),
        reason: error.to_string(),
        hint: "a URL looks like postgres://user:password@host:5432/database".into(),
    })
}

/// `user@host:port/database`: where a connection goes, without the password.
pub(crate) fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or(options.get_username())
    )
}

/// A connection failure as a sentence: the server's message (without its source file and
/// line), and what to check.
pub(crate) fn connect_error(target: &str, error: &sqlx::Error) -> PgError {
    let (reason, hint) = match error {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => (
            "connection refused".to_owned(),
            "is PostgreSQL running there and listening on that port? Locally: pg_lsclusters, \
             then pg_ctlcluster <version> main start"
                .to_owned(),
        ),
        sqlx::Error::Io(io) => (io.to_string(), "check the host and port".to_owned()),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let hint = match &*code {
                "3D000" => "create the database (createdb), or name an existing one in the URL",
                "28P01" | "28000" => "check the user name and password, and pg_hba.conf",
                "53300" => {
                    "the server has no connection slot left: raise max_connections or use fewer"
                }
                "57P03" => "the server is starting up or shutting down: try again shortly",
                _ => "see the server's log for more",
            };
            (
                format!("{} (SQLSTATE {code})", db.message()),
                hint.to_owned(),
            )
        }
        sqlx::Error::Tls(tls) => (
            format!("TLS failed: {tls}"),
            "check sslmode in the URL and the server's certificates".to_owned(),
        ),
        sqlx::Error::PoolTimedOut => (
            "no connection could be opened in time".to_owned(),
            "check that the server is up and accepts connections".to_owned(),
        ),
        other => (other.to_string(), "check the URL".to_owned()),
    };
    PgError::Connect {
        target: target.to_owned(),
        reason,
        hint,
    }
}
