//! A `tokio-postgres` error as a [`BackendError`]: a refusal that no retry mends (a wrong
//! password, a missing privilege) names what to change; anything else is a transport failure
//! the runtime retries.

use tokio_postgres::error::SqlState;

use crate::error::BackendError;

/// A wrong user or password, or a client the server's `pg_hba.conf` does not admit.
const WRONG_LOGIN: &str = "check the user and password in DATABASE_URL (or POSTGRES_URL), and that \
                           pg_hba.conf admits this client to that database";
/// The user may not create the tables.
const CANNOT_CREATE: &str = "or create the tables once as the owner with retry-kafka's sql/postgres.sql \
                             (psql -f) and grant the app's user SELECT, INSERT, UPDATE and DELETE \
                             on them";
/// The user may not read or write the tables.
const CANNOT_WRITE: &str = "grant the app's user SELECT, INSERT, UPDATE and DELETE on \
                            retry_kafka_schema, retry_kafka_partitions and retry_kafka_records";

/// What a failure happened doing.
#[derive(Clone, Copy)]
pub(crate) enum Doing<'a> {
    /// Creating the schema at start, as `user` in schema `schema`.
    Migrating { user: &'a str, schema: &'a str },
    /// Anything else.
    Query,
}

/// `error` as a backend error: [`BackendError::Refused`] with what to change when the server
/// refused this client, [`BackendError::Transport`] otherwise. The server's messages never
/// hold the password.
pub(crate) fn explain(error: tokio_postgres::Error, doing: Doing<'_>) -> BackendError {
    let refused = |reason: String, hint: &'static str, error| BackendError::Refused {
        backend: "postgres",
        reason,
        hint,
        source: Box::new(error),
    };
    match (error.code(), doing) {
        (Some(code), _)
            if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            refused(said(&error), WRONG_LOGIN, error)
        }
        (Some(code), Doing::Migrating { user, schema }) if *code == SqlState::INSUFFICIENT_PRIVILEGE => {
            refused(
                format!(
                    "user {user:?} may not create retry-kafka's tables in schema {schema:?} ({}): as \
                     the schema's owner, run GRANT CREATE ON SCHEMA {schema} TO {user}",
                    said(&error)
                ),
                CANNOT_CREATE,
                error,
            )
        }
        (Some(code), Doing::Query) if *code == SqlState::INSUFFICIENT_PRIVILEGE => {
            refused(said(&error), CANNOT_WRITE, error)
        }
        _ => BackendError::Transport {
            backend: "postgres",
            source: Box::new(error),
        },
    }
}

/// What the server said (the error's own text is only "db error").
fn said(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => error.to_string(),
    }
}

/// [`explain`] for a query.
pub(crate) fn transport(error: tokio_postgres::Error) -> BackendError {
    explain(error, Doing::Query)
}

/// A write's failure: [`BackendError::Produce`] naming `topic`, or the refusal.
pub(crate) fn produce(topic: &str, error: tokio_postgres::Error) -> BackendError {
    transport(error).while_producing(topic)
}
