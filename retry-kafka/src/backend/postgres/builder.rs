//! Settings of a [`Postgres`] backend: [`PostgresBuilder`]. The environment's are read by
//! [`Settings::from_env`](crate::settings::Settings::from_env).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::conninfo;
use super::link::Connector;
use super::tls::{Roots, SslMode, TlsSettings};
use super::Postgres;
use crate::config::vars;
use crate::error::ConfigError;

#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) keep_handled: Duration,
    pub(crate) lease: Duration,
    pub(crate) batch: i64,
    pub(crate) poll: Duration,
    pub(crate) default_partitions: u32,
}

/// Settings of a [`Postgres`] backend.
///
/// ```
/// use std::time::Duration;
/// use retry_kafka::backend::postgres::{Postgres, SslMode};
///
/// let builder = Postgres::builder("postgres://app:secret@db.internal:5432/app")
///     .keep_handled(Duration::from_secs(24 * 3600))
///     .lease(Duration::from_secs(60))
///     .ssl_mode(SslMode::VerifyFull)
///     .ssl_root_cert("/etc/ssl/db-ca.pem");
/// ```
pub struct PostgresBuilder {
    url: String,
    /// The variable a malformed URL is reported as.
    url_variable: &'static str,
    settings: Settings,
    /// TLS set in code; each overrides the URL's parameter.
    ssl_mode: Option<SslMode>,
    ssl_root_cert: Option<Roots>,
    ssl_client_cert: Option<(PathBuf, PathBuf)>,
}

impl Postgres {
    /// Settings for the database at `url` (`postgres://user:password@host:port/database`, or
    /// libpq's `host=... user=...` form). TLS is libpq's parameters in it: `sslmode`,
    /// `sslrootcert`, `sslcert`, `sslkey` (see [`SslMode`]), or the builder's methods.
    pub fn builder(url: impl Into<String>) -> PostgresBuilder {
        PostgresBuilder {
            url: url.into(),
            url_variable: vars::DATABASE_URL,
            settings: Settings {
                keep_handled: Duration::from_secs(3600),
                lease: Duration::from_secs(30),
                batch: 32,
                poll: Duration::from_secs(1),
                default_partitions: 1,
            },
            ssl_mode: None,
            ssl_root_cert: None,
            ssl_client_cert: None,
        }
    }
}

impl PostgresBuilder {
    /// Reports a malformed URL as `name`'s (`POSTGRES_URL` when it came from there).
    pub(crate) fn url_variable(mut self, name: &'static str) -> Self {
        self.url_variable = name;
        self
    }

    /// How long a handled retry's row is kept before it is deleted (default 1 h; zero deletes
    /// it at the next sweep). While it is kept, a hand-off of the same failure written again
    /// (a main-topic message redelivered after a crash) is recognised and written once; tools
    /// can read it like a compacted-later topic.
    pub fn keep_handled(mut self, age: Duration) -> Self {
        self.settings.keep_handled = age;
        self
    }

    /// How long a worker's claim on a row lasts unless renewed (default 30 s, renewed three
    /// times per lease while the worker lives). A crashed worker's rows go to another worker
    /// this long after its last renewal.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease;
        self
    }

    /// The most rows a worker claims in one query (default 32). Claimed rows wait in this
    /// worker's memory until its handler gets to them while other workers may be idle: a
    /// small batch shares a burst of due rows among the workers of a level.
    pub fn batch(mut self, rows: u32) -> Self {
        self.settings.batch = i64::from(rows.max(1));
        self
    }

    /// How often an idle worker looks for due rows when no notification came (default 1 s).
    /// New rows notify the workers (`LISTEN`/`NOTIFY`) and a worker sleeps until the next
    /// known due time, so this only bounds how long a missed notification delays a retry.
    pub fn poll(mut self, every: Duration) -> Self {
        self.settings.poll = every;
        self
    }

    /// The partition count of a topic first written before it was created (default 1; more
    /// when the record names a higher partition).
    pub fn default_partitions(mut self, partitions: u32) -> Self {
        self.settings.default_partitions = partitions.max(1);
        self
    }

    /// How connections use TLS (default: the URL's `sslmode`, else [`SslMode::Prefer`] as
    /// libpq). Overrides the URL's `sslmode`.
    ///
    /// ```
    /// use retry_kafka::backend::postgres::{Postgres, SslMode};
    ///
    /// // Encrypted, the server's certificate unchecked: a managed server's default.
    /// let postgres = Postgres::builder("postgres://app@db.example.com/app").ssl_mode(SslMode::Require).build();
    /// assert!(postgres.is_ok());
    /// ```
    pub fn ssl_mode(mut self, mode: SslMode) -> Self {
        self.ssl_mode = Some(mode);
        self
    }

    /// The CA certificates (a PEM file) to trust for the server's certificate: libpq's
    /// `sslrootcert`, e.g. a cloud provider's bundle. Without it, [`SslMode::VerifyCa`] and
    /// [`SslMode::VerifyFull`] trust the system's root certificates; with it,
    /// [`SslMode::Require`] checks the chain too, as libpq does. Read at each connection.
    /// Overrides the URL's `sslrootcert`.
    ///
    /// ```
    /// use retry_kafka::backend::postgres::{Postgres, SslMode};
    ///
    /// let postgres = Postgres::builder("postgres://app@mydb.abc123.eu-west-1.rds.amazonaws.com/app")
    ///     .ssl_mode(SslMode::VerifyFull)
    ///     .ssl_root_cert("/etc/ssl/rds-global-bundle.pem")
    ///     .build();
    /// assert!(postgres.is_ok()); // the file is read when connecting
    /// ```
    pub fn ssl_root_cert(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.ssl_root_cert = Some(Roots::File(pem_file.into()));
        self
    }

    /// A client certificate (chain, PEM) and its private key (PEM: PKCS#8, PKCS#1 or SEC1,
    /// unencrypted) to present to a server that asks for one (pg_hba.conf's `cert`, or
    /// `clientcert=verify-full`): libpq's `sslcert` and `sslkey`. Read at each connection.
    /// Overrides the URL's.
    ///
    /// ```
    /// use retry_kafka::backend::postgres::{Postgres, SslMode};
    ///
    /// let postgres = Postgres::builder("postgres://app@db.internal/app")
    ///     .ssl_mode(SslMode::VerifyFull)
    ///     .ssl_root_cert("/etc/ssl/db-ca.pem")
    ///     .ssl_client_cert("/etc/ssl/app.crt", "/etc/ssl/app.key")
    ///     .build();
    /// assert!(postgres.is_ok());
    /// ```
    pub fn ssl_client_cert(mut self, cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        self.ssl_client_cert = Some((cert_file.into(), key_file.into()));
        self
    }

    /// The backend; fails naming the URL's variable when the URL is malformed, or its
    /// `sslmode` unknown, or it gives `sslcert` without `sslkey`. Connects on first use, and
    /// creates the tables then (see [`Postgres`]); the TLS files are read then.
    pub fn build(self) -> Result<Postgres, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            field: self.url_variable,
            reason,
        };
        let (url, params) =
            conninfo::split(&self.url).map_err(|error| invalid(format!("not a PostgreSQL URL: {error}")))?;
        let mut config = tokio_postgres::Config::from_str(&url)
            .map_err(|error| invalid(format!("not a PostgreSQL URL: {error}")))?;
        let mode = match (self.ssl_mode, params.sslmode) {
            (Some(mode), _) => mode,
            (None, Some(text)) => text.parse().map_err(|error| invalid(format!("{error}")))?,
            (None, None) => SslMode::default(),
        };
        let client = match (self.ssl_client_cert, params.sslcert, params.sslkey) {
            (Some(files), _, _) => Some(files),
            (None, Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None, None) => None,
            (None, Some(_), None) => {
                return Err(invalid("sslcert is given without sslkey, its private key".into()))
            }
            (None, None, Some(_)) => {
                return Err(invalid("sslkey is given without sslcert, its certificate".into()))
            }
        };
        let tls = TlsSettings {
            mode,
            roots: self
                .ssl_root_cert
                .or_else(|| params.sslrootcert.as_deref().map(Roots::from_setting)),
            client,
        };
        tls.apply(&mut config);
        if self.settings.lease < Duration::from_millis(300) {
            return Err(ConfigError::Invalid {
                field: vars::POSTGRES_LEASE_MS,
                reason: "must be at least 300 ms".into(),
            });
        }
        Ok(Postgres::new(Connector { config, tls }, self.settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_urls_tls_parameters_are_checked_at_build_and_the_builders_win() {
        let unknown = Postgres::builder("postgres://db/app?sslmode=allow").build();
        let message = unknown.err().expect("allow is refused").to_string();
        assert!(
            message.contains("DATABASE_URL") && message.contains("sslmode=\"allow\""),
            "{message}"
        );
        let lone = Postgres::builder("postgres://db/app?sslcert=/c.pem").build();
        let message = lone.err().expect("sslcert alone is refused").to_string();
        assert!(message.contains("sslcert is given without sslkey"), "{message}");

        let from_url = Postgres::builder(
            "postgres://db/app?sslmode=verify-ca&sslrootcert=/a.pem&sslcert=/c.pem&sslkey=/k.pem",
        )
        .build()
        .unwrap();
        let tls = &from_url.connector().tls;
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(tls.roots, Some(Roots::File("/a.pem".into())));
        assert_eq!(tls.client, Some(("/c.pem".into(), "/k.pem".into())));

        let overridden = Postgres::builder("postgres://db/app?sslmode=disable&sslrootcert=/a.pem")
            .ssl_mode(SslMode::VerifyFull)
            .ssl_root_cert("/b.pem")
            .build()
            .unwrap();
        let connector = overridden.connector();
        assert_eq!(connector.tls.mode, SslMode::VerifyFull);
        assert_eq!(connector.tls.roots, Some(Roots::File("/b.pem".into())));
        assert_eq!(
            connector.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        // Neither form: libpq's default.
        let default = Postgres::builder("host=db user=app").build().unwrap();
        assert_eq!(default.connector().tls, TlsSettings::default());
    }
}
