//! A refusal of TLS to PostgreSQL ([`TlsError`]): what was refused or unreadable, the
//! setting to change, and how it reads as a [`BackendError`].

use std::path::PathBuf;

use rustls::pki_types::pem;

use super::tls::SslMode;
use crate::error::BackendError;

/// TLS to PostgreSQL failed, for a reason no retry mends; the message names the setting
/// (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`). The backend reports it as the source of a
/// [`BackendError`]: [`Refused`](BackendError::Refused) when the server or its certificate was
/// refused, [`Transport`](BackendError::Transport) when a file of this client's is.
///
/// ```no_run
/// use retry_kafka::backend::postgres::{Postgres, TlsError};
/// use retry_kafka::backend::{Topic, TopicAdmin, TopicRole};
///
/// # async fn start() -> Result<(), Box<dyn std::error::Error>> {
/// let postgres = Postgres::builder("postgres://app@db.internal/app?sslmode=verify-full").build()?;
/// let level = Topic::new("orders.billing.retry.1", TopicRole::Retry { level: 1 });
/// if let Err(error) = postgres.partitions(&level).await {
///     let source = std::error::Error::source(&error);
///     if let Some(TlsError::WrongHost { presented, .. }) = source.and_then(|s| s.downcast_ref()) {
///         eprintln!("the certificate is for {presented}");
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file named by a setting cannot be read.
    #[error("{setting}={}: cannot read it: {source}", path.display())]
    Unreadable {
        /// `sslrootcert`, `sslcert` or `sslkey`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no PEM certificate (or key) that can be read.
    #[error("{setting}={}: no {what} in PEM found in it: {source}", path.display())]
    NotPem {
        /// `sslrootcert`, `sslcert` or `sslkey`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What it should hold: "certificate" or "private key".
        what: &'static str,
        /// The PEM parser's error.
        #[source]
        source: pem::Error,
    },
    /// The TLS library refused what a file holds (a CA certificate it cannot use, a key that
    /// does not go with its certificate).
    #[error("{setting}={}: {reason}", path.display())]
    Rejected {
        /// `sslrootcert` or `sslcert`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The TLS library's words.
        reason: String,
    },
    /// The mode checks the certificate against the system's roots and there are none.
    #[error(
        "sslmode={mode} without sslrootcert trusts the system's root certificates, and this system has none"
    )]
    NoSystemRoots {
        /// The mode.
        mode: SslMode,
    },
    /// The server does not accept TLS (`ssl = off`) and the mode requires it.
    #[error("sslmode={mode}: the server does not accept TLS connections (its ssl setting is off)")]
    ServerWithoutTls {
        /// The mode.
        mode: SslMode,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server's certificate is not signed by a trusted CA.
    #[error("sslmode={mode}: the server's certificate is not signed by a CA in {roots}")]
    UntrustedCertificate {
        /// The mode.
        mode: SslMode,
        /// Where the trusted CAs are: `sslrootcert=/path` or the system's roots.
        roots: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// `verify-full`: the server's certificate was issued for other hosts.
    #[error("sslmode=verify-full: the server's certificate is for {presented}, not {host}")]
    WrongHost {
        /// The host connected to, as the URL names it.
        host: String,
        /// The names (DNS names, IP addresses) the certificate is for.
        presented: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server's certificate was refused for another reason (expired, not for a server).
    #[error("sslmode={mode}: the server's certificate was refused: {reason}")]
    ServerCertificateRefused {
        /// The mode.
        mode: SslMode,
        /// The TLS library's words.
        reason: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server requires a client certificate and none was given, or refused the one given.
    #[error(
        "sslcert{}: {reason}",
        match sslcert {
            Some(path) => format!("={}: the server refused this client certificate", path.display()),
            None => " not given: the server requires a client certificate".into(),
        }
    )]
    ClientCertificateRefused {
        /// The certificate given, if any.
        sslcert: Option<PathBuf>,
        /// The server's words.
        reason: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl TlsError {
    /// What to change when the server was refused or refused this client; `None` when a
    /// file of this client's is at fault (the message says which).
    fn hint(&self) -> Option<&'static str> {
        Some(match self {
            TlsError::ServerWithoutTls { .. } => {
                "turn ssl on in the server's postgresql.conf (or, on a network you trust, connect \
                 with sslmode=prefer, which falls back to plain text)"
            }
            TlsError::UntrustedCertificate { .. } | TlsError::ServerCertificateRefused { .. } => {
                "give the CA (PEM) that signed the server's certificate as sslrootcert (in the URL, or \
                 PostgresBuilder::ssl_root_cert)"
            }
            TlsError::WrongHost { .. } => {
                "connect by a host name the certificate holds, or check the CA only with \
                 sslmode=verify-ca"
            }
            TlsError::ClientCertificateRefused { .. } => {
                "give a client certificate signed by a CA in the server's ssl_ca_file, for the \
                 connecting user (its CN), as sslcert and sslkey (in the URL, or \
                 PostgresBuilder::ssl_client_cert)"
            }
            TlsError::Unreadable { .. }
            | TlsError::NotPem { .. }
            | TlsError::Rejected { .. }
            | TlsError::NoSystemRoots { .. } => return None,
        })
    }
}

impl From<TlsError> for BackendError {
    /// [`BackendError::Refused`] when the server was refused or refused this client,
    /// [`BackendError::Transport`] when this client's files are at fault.
    fn from(error: TlsError) -> Self {
        match error.hint() {
            Some(hint) => BackendError::Refused {
                backend: "postgres",
                reason: error.to_string(),
                hint,
                source: Box::new(error),
            },
            None => BackendError::Transport {
                backend: "postgres",
                source: Box::new(error),
            },
        }
    }
}
