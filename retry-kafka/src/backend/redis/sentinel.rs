//! A primary that Redis Sentinel manages: `redis+sentinel://` URLs ([`SentinelUrl`]) and the
//! connection that follows the primary through failovers ([`SentinelLink`]).
//!
//! The sentinels are asked for the primary by redis-rs (`redis::sentinel::SentinelClient`: it
//! asks them in turn, skips a primary they mark down, and checks with `ROLE` that the server it
//! names is a primary). redis-rs's `ConnectionManager` reconnects to the address it was given,
//! which after a failover is the old primary's; so a [`SentinelLink`] keeps one multiplexed
//! connection, forgets it when it fails as a dead or demoted primary does (a dropped or refused
//! connection, a timeout, `READONLY`), and asks the sentinels again on its next command.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};

/// The port of a sentinel given without one.
const SENTINEL_PORT: u16 = 26379;

/// What is wrong with a `redis+sentinel://` URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SentinelUrlError {
    /// `rediss+sentinel://`.
    #[error("TLS through Sentinel is not supported yet: use redis+sentinel:// on a trusted network")]
    Tls,
    /// No sentinel, or an empty one between commas.
    #[error("a sentinel's address is empty: redis+sentinel://host:port,host:port/master-name")]
    EmptySentinel,
    /// A sentinel's port that is not a number.
    #[error("sentinel {address:?}: the port is not a number")]
    Port {
        /// The address as given.
        address: String,
        /// Why the port did not parse.
        #[source]
        source: std::num::ParseIntError,
    },
    /// No master name in the path.
    #[error("no master name: redis+sentinel://host:port,host:port/master-name[/db]")]
    NoMaster,
    /// A database that is not a number, or more path than `/master/db`.
    #[error("{path:?} after the master name: only a database number may follow it (/master-name/0)")]
    Database {
        /// The path after the master name.
        path: String,
    },
    /// A query parameter other than `sentinel_username` and `sentinel_password`.
    #[error("unknown parameter {name:?}: only sentinel_username and sentinel_password")]
    Parameter {
        /// The parameter's name.
        name: String,
    },
    /// The user, password or database the redis crate refused.
    #[error("the primary's user, password or database: {source}")]
    Primary {
        /// The redis crate's reason.
        #[source]
        source: RedisErrorText,
    },
}

/// A `redis::RedisError` as text, so [`SentinelUrlError`] stays `Clone` and `Eq`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct RedisErrorText(String);

/// A `redis+sentinel://` URL, parsed:
/// `redis+sentinel://[[user]:password@]host[:port][,host[:port]…]/master-name[/db][?sentinel_username=…&sentinel_password=…]`.
/// The user and password are the primary's (and its replicas'), as in a `redis://` URL; a
/// sentinel's own are the parameters. A sentinel's port is 26379 unless given.
#[derive(Clone, Debug)]
pub(crate) struct SentinelUrl {
    /// Each sentinel as a `redis://` URL, with the sentinels' user and password.
    pub(crate) sentinels: Vec<String>,
    /// The name the sentinels monitor the primary by (`sentinel monitor <name> …`).
    pub(crate) master: String,
    /// The primary's user, password and database.
    primary: redis::RedisConnectionInfo,
}

impl SentinelUrl {
    /// Whether `url` names sentinels (its scheme, in any case).
    pub(crate) fn is_sentinel(url: &str) -> bool {
        let scheme = url.split("://").next().unwrap_or_default().to_ascii_lowercase();
        scheme == "redis+sentinel" || scheme == "rediss+sentinel"
    }

    pub(crate) fn parse(url: &str) -> Result<Self, SentinelUrlError> {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        if scheme.eq_ignore_ascii_case("rediss+sentinel") {
            return Err(SentinelUrlError::Tls);
        }
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let mut sentinel_user = "";
        let mut sentinel_password = None;
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "sentinel_username" => sentinel_user = value,
                "sentinel_password" => sentinel_password = Some(value),
                _ => {
                    return Err(SentinelUrlError::Parameter {
                        name: name.to_owned(),
                    })
                }
            }
        }
        // Kept percent-encoded as given: redis-rs decodes the URLs made of them.
        let sentinel_auth = match sentinel_password {
            Some(password) => format!("{sentinel_user}:{password}@"),
            None if !sentinel_user.is_empty() => format!("{sentinel_user}@"),
            None => String::new(),
        };
        let mut addresses = Vec::new();
        for address in hosts.split(',') {
            let address = address.trim();
            if address.is_empty() {
                return Err(SentinelUrlError::EmptySentinel);
            }
            // `host`, `host:port`, `[v6]`, `[v6]:port`.
            let (host, port) = match address.rsplit_once(':') {
                Some((host, port)) if !port.ends_with(']') => (host, port),
                _ => (address, ""),
            };
            let port = match port {
                "" => SENTINEL_PORT,
                port => port.parse().map_err(|source| SentinelUrlError::Port {
                    address: address.to_owned(),
                    source,
                })?,
            };
            addresses.push((host.to_owned(), port));
        }
        let mut parts = path.splitn(2, '/');
        let master = parts.next().unwrap_or_default();
        if master.is_empty() {
            return Err(SentinelUrlError::NoMaster);
        }
        let db = match parts.next().map(|db| db.trim_end_matches('/')) {
            None | Some("") => 0,
            Some(db) => db
                .parse::<i64>()
                .map_err(|_| SentinelUrlError::Database { path: db.to_owned() })?,
        };
        // The primary's settings, read by redis-rs from a URL of the first sentinel's address
        // (only the user, password and database are kept).
        let (host, port) = &addresses[0];
        let auth = userinfo
            .map(|userinfo| format!("{userinfo}@"))
            .unwrap_or_default();
        let primary = format!("redis://{auth}{host}:{port}/{db}")
            .into_connection_info()
            .map_err(|error| SentinelUrlError::Primary {
                source: RedisErrorText(error.to_string()),
            })?
            .redis_settings()
            .clone();
        let sentinels = addresses
            .iter()
            .map(|(host, port)| format!("redis://{sentinel_auth}{host}:{port}"))
            .collect();
        Ok(SentinelUrl {
            sentinels,
            master: master.to_owned(),
            primary,
        })
    }

    /// redis-rs's client that asks the sentinels for the primary.
    fn client(&self) -> RedisResult<SentinelClient> {
        let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(self.primary.clone());
        SentinelClient::build(
            self.sentinels.clone(),
            self.master.clone(),
            Some(node),
            SentinelServerType::Master,
        )
    }
}

/// No primary was reached through the sentinels (they know none that is up, none of them
/// answered, or the one they named refused): the source of the I/O error a command then
/// fails with, so every caller retries it as it retries a dropped connection.
#[derive(Debug, thiserror::Error)]
#[error("no primary {master:?} reached through the sentinels")]
pub(crate) struct NoPrimary {
    master: String,
    #[source]
    source: Option<RedisError>,
}

/// Asks the sentinels for the primary, for every [`SentinelLink`] of one backend.
pub(crate) struct Sentinels {
    client: tokio::sync::Mutex<SentinelClient>,
    master: String,
    /// How long one question to the sentinels (and the connection to the primary) may take.
    timeout: Duration,
    /// Connections made so far, across links: a link forgets only the connection it failed on.
    made: AtomicU64,
}

impl Sentinels {
    pub(crate) fn new(url: &SentinelUrl, timeout: Duration) -> RedisResult<Self> {
        Ok(Sentinels {
            client: tokio::sync::Mutex::new(url.client()?),
            master: url.master.clone(),
            timeout,
            made: AtomicU64::new(0),
        })
    }

    /// A new connection to the primary the sentinels name now. A refusal that no retry mends
    /// (a missing or wrong password) is returned as it is; any other failure as an I/O error
    /// ([`NoPrimary`]).
    pub(crate) async fn connect(&self, config: &AsyncConnectionConfig) -> RedisResult<MultiplexedConnection> {
        let asked = async {
            self.client
                .lock()
                .await
                .get_async_connection_with_config(config)
                .await
        };
        let no_primary = |source| {
            let error = NoPrimary {
                master: self.master.clone(),
                source,
            };
            RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, error))
        };
        match tokio::time::timeout(self.timeout, asked).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(error)) if is_refusal(&error) => Err(error),
            Ok(Err(error)) => Err(no_primary(Some(error))),
            Err(_) => Err(no_primary(None)),
        }
    }
}

/// A refusal by the primary that no retry mends.
fn is_refusal(error: &RedisError) -> bool {
    matches!(error.code(), Some("NOAUTH" | "WRONGPASS"))
        || error.kind() == redis::ErrorKind::AuthenticationFailed
}

/// A connection to the primary the sentinels name, made again through them after it failed.
#[derive(Clone)]
pub(crate) struct SentinelLink {
    inner: Arc<LinkInner>,
}

struct LinkInner {
    sentinels: Arc<Sentinels>,
    config: AsyncConnectionConfig,
    db: i64,
    /// The connection in use and its number, or none until the next command makes one.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// One connection made at a time, so commands failing together ask the sentinels once.
    connecting: tokio::sync::Mutex<()>,
}

impl SentinelLink {
    /// A link that connects on its first command, waiting `response` for each reply.
    pub(crate) fn new(sentinels: Arc<Sentinels>, response: Duration, connection: Duration, db: i64) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(response))
            .set_connection_timeout(Some(connection));
        SentinelLink {
            inner: Arc::new(LinkInner {
                sentinels,
                config,
                db,
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.inner.current.lock().expect("not poisoned").clone()
    }

    /// The connection in use, or a new one to the primary the sentinels name now.
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let _one_at_a_time = self.inner.connecting.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let conn = self.inner.sentinels.connect(&self.inner.config).await?;
        let number = self.inner.sentinels.made.fetch_add(1, Ordering::Relaxed);
        *self.inner.current.lock().expect("not poisoned") = Some((number, conn.clone()));
        Ok((number, conn))
    }

    /// Forgets connection `number` (if still in use), so the next command asks the sentinels.
    fn forget(&self, number: u64) {
        let mut current = self.inner.current.lock().expect("not poisoned");
        if current.as_ref().is_some_and(|(n, _)| *n == number) {
            *current = None;
        }
    }
}

/// Whether a command's failure says the connection no longer reaches a primary: it dropped,
/// was refused or timed out (the primary died or is cut off), or the server is a replica now
/// (`READONLY`; a blocked read ended by the demotion: `UNBLOCKED`).
fn primary_lost(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_unrecoverable_error()
        || error.is_timeout()
        || matches!(error.code(), Some("READONLY" | "UNBLOCKED"))
        || super::error::has_code(error, "READONLY")
}

/// Whether a pipeline's replies (with `ignore_errors`, a command's error is its reply) say the
/// server is a replica now.
fn replies_from_a_replica(replies: &[Value]) -> bool {
    replies
        .iter()
        .any(|reply| matches!(reply, Value::ServerError(error) if error.code() == "READONLY"))
}

impl ConnectionLike for SentinelLink {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (number, mut conn) = self.connection().await?;
            let reply = conn.req_packed_command(cmd).await;
            if reply.as_ref().is_err_and(primary_lost) {
                self.forget(number);
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (number, mut conn) = self.connection().await?;
            let replies = conn.req_packed_commands(pipeline, offset, count).await;
            let lost = match &replies {
                Ok(replies) => replies_from_a_replica(replies),
                Err(error) => primary_lost(error),
            };
            if lost {
                self.forget(number);
            }
            replies
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.db
    }
}

impl SentinelUrl {
    /// The primary's database.
    pub(crate) fn db(&self) -> i64 {
        self.primary.db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_names_the_sentinels_the_master_and_the_primary_s_password_and_database() {
        let url = SentinelUrl::parse("redis+sentinel://:s%40cret@10.0.0.1,10.0.0.2:26380/orders/3").unwrap();
        assert_eq!(
            url.sentinels,
            ["redis://10.0.0.1:26379", "redis://10.0.0.2:26380"]
        );
        assert_eq!(url.master, "orders");
        assert_eq!(url.db(), 3);
        assert_eq!(url.primary.password(), Some("s@cret"));
        let url = SentinelUrl::parse("redis+sentinel://h:1/m?sentinel_password=p").unwrap();
        assert_eq!(url.sentinels, ["redis://:p@h:1"]);
        assert_eq!(url.primary.password(), None);
        assert!(SentinelUrl::is_sentinel("Redis+Sentinel://h/m"));
        assert!(!SentinelUrl::is_sentinel("redis://h:6379"));
    }

    #[test]
    fn a_bad_url_says_what_is_wrong() {
        let error = |url| SentinelUrl::parse(url).unwrap_err();
        assert_eq!(error("redis+sentinel://h:1"), SentinelUrlError::NoMaster);
        assert_eq!(error("redis+sentinel://h:1,/m"), SentinelUrlError::EmptySentinel);
        assert!(matches!(
            error("redis+sentinel://h:x/m"),
            SentinelUrlError::Port { .. }
        ));
        assert!(matches!(
            error("redis+sentinel://h/m/x"),
            SentinelUrlError::Database { .. }
        ));
        assert!(matches!(
            error("redis+sentinel://h/m?tls=1"),
            SentinelUrlError::Parameter { .. }
        ));
        assert_eq!(error("rediss+sentinel://h/m"), SentinelUrlError::Tls);
    }
}
