//! TLS to PostgreSQL on rustls, with libpq's semantics: [`SslMode`], the trusted roots
//! (`sslrootcert`) and the client certificate (`sslcert`, `sslkey`); and a refusal (a CA not
//! trusted, another host's certificate, a server without TLS, a client certificate missing or
//! refused, a file that cannot be read) as a [`TlsError`] (`tls_error.rs`) naming the setting
//! to change.
//!
//! The files are read at each connection, as libpq reads them: a certificate renewed on disk
//! is used from the next connection on.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::Config;

use super::tls_error::TlsError;

/// How a connection uses TLS: libpq's `sslmode`, with libpq's names and meanings.
///
/// | mode | encrypted | the server's certificate |
/// |---|---|---|
/// | `disable` | never | — |
/// | `prefer` (the default) | when the server accepts TLS, else plain | not checked |
/// | `require` | always | not checked; with `sslrootcert`, checked as `verify-ca` (as libpq does) |
/// | `verify-ca` | always | signed by a CA in `sslrootcert` (else the system's roots) |
/// | `verify-full` | always | as `verify-ca`, and issued for the host connected to |
///
/// ```
/// use retry_kafka::backend::postgres::SslMode;
///
/// let mode: SslMode = "verify-full".parse().unwrap();
/// assert_eq!(mode, SslMode::VerifyFull);
/// assert_eq!(mode.to_string(), "verify-full");
/// assert!("allow".parse::<SslMode>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server accepts it, plain when it does not; the certificate unchecked.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate unchecked unless `sslrootcert` is given.
    Require,
    /// TLS, and the certificate signed by a trusted CA.
    VerifyCa,
    /// TLS, the certificate signed by a trusted CA and issued for the host connected to.
    VerifyFull,
}

impl SslMode {
    /// libpq's name of the mode.
    ///
    /// ```
    /// assert_eq!(retry_kafka::backend::postgres::SslMode::VerifyCa.as_str(), "verify-ca");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `sslmode` value libpq does not have, or has and this crate does not (`allow`).
///
/// ```
/// let error = "allow".parse::<retry_kafka::backend::postgres::SslMode>().unwrap_err();
/// assert!(error.to_string().contains("prefer"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("sslmode={0:?}: not a mode this client has (disable, prefer, require, verify-ca, verify-full)")]
pub struct UnknownSslMode(pub String);

impl FromStr for SslMode {
    type Err = UnknownSslMode;

    fn from_str(text: &str) -> Result<Self, UnknownSslMode> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // libpq's `allow` tries plain first and TLS second: a server that accepts both is
            // reached in plain text, which no deployment asking for TLS wants.
            other => return Err(UnknownSslMode(other.to_owned())),
        })
    }
}

/// Where the CAs to trust come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Roots {
    /// A PEM file (`sslrootcert=/path`).
    File(PathBuf),
    /// The system's root certificates (`sslrootcert=system`, as libpq 16 spells it, or none
    /// given under `verify-ca` and `verify-full`).
    System,
}

impl Roots {
    /// `sslrootcert`'s value: `system` or a path.
    pub(crate) fn from_setting(value: &str) -> Self {
        match value {
            "system" => Roots::System,
            path => Roots::File(path.into()),
        }
    }

    /// Where the trusted CAs are, for messages.
    fn describe(&self) -> String {
        match self {
            Roots::File(path) => format!("sslrootcert={}", path.display()),
            Roots::System => "the system's root certificates (no sslrootcert given)".into(),
        }
    }
}

/// A connection's TLS settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub(crate) mode: SslMode,
    pub(crate) roots: Option<Roots>,
    /// `sslcert` and `sslkey`.
    pub(crate) client: Option<(PathBuf, PathBuf)>,
}

/// What is checked of the server's certificate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndHost,
}

impl TlsSettings {
    /// Tells tokio-postgres the mode: it refuses plain text under `require` (and so under the
    /// verify modes, which it does not know; the checks are the verifier's). Over Unix sockets
    /// only, no TLS, as libpq (the server offers none there).
    pub(crate) fn apply(&self, config: &mut Config) {
        use tokio_postgres::config::SslMode as Driver;
        let unix_sockets_only = config.get_hostaddrs().is_empty()
            && !config.get_hosts().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|host| !matches!(host, Host::Tcp(_)));
        config.ssl_mode(match self.mode {
            _ if unix_sockets_only => Driver::Disable,
            SslMode::Disable => Driver::Disable,
            SslMode::Prefer => Driver::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Driver::Require,
        });
    }

    fn check(&self) -> Check {
        match (self.mode, &self.roots) {
            (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => Check::Nothing,
            (SslMode::Require | SslMode::VerifyCa, _) => Check::Chain,
            (SslMode::VerifyFull, _) => Check::ChainAndHost,
        }
    }

    /// rustls's settings for one connection, the files read now.
    pub(crate) fn client_config(&self) -> Result<ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let check = self.check();
        let webpki = match check {
            Check::Nothing => None,
            Check::Chain | Check::ChainAndHost => {
                let roots = self.roots.clone().unwrap_or(Roots::System);
                let store = Arc::new(self.root_store(&roots)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                    .build()
                    .map_err(|error| TlsError::Rejected {
                        setting: "sslrootcert",
                        path: match roots {
                            Roots::File(path) => path,
                            Roots::System => "system".into(),
                        },
                        reason: error.to_string(),
                    })?;
                Some(webpki)
            }
        };
        let verifier = Arc::new(ModeVerifier {
            provider: provider.clone(),
            webpki,
            host: check == Check::ChainAndHost,
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match (&self.client, self.mode) {
            (Some((cert, key)), mode) if mode != SslMode::Disable => {
                let chain = read_pem_all::<CertificateDer<'static>>("sslcert", cert, "certificate")?;
                let key = read_pem_one::<PrivateKeyDer<'static>>("sslkey", key, "private key")?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|error| TlsError::Rejected {
                        setting: "sslcert",
                        path: cert.clone(),
                        reason: format!("does not go with sslkey: {error}"),
                    })
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }

    fn root_store(&self, roots: &Roots) -> Result<RootCertStore, TlsError> {
        let mut store = RootCertStore::empty();
        match roots {
            Roots::File(path) => {
                for cert in read_pem_all::<CertificateDer<'static>>("sslrootcert", path, "certificate")? {
                    store.add(cert).map_err(|error| TlsError::Rejected {
                        setting: "sslrootcert",
                        path: path.clone(),
                        reason: error.to_string(),
                    })?;
                }
            }
            Roots::System => {
                store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                if store.is_empty() {
                    return Err(TlsError::NoSystemRoots { mode: self.mode });
                }
            }
        }
        Ok(store)
    }

    /// `error` as a TLS refusal naming the setting, or `error` itself when it is none.
    pub(crate) fn explain(&self, error: tokio_postgres::Error) -> Result<TlsError, tokio_postgres::Error> {
        let mode = self.mode;
        if let Some(db) = error.as_db_error() {
            // pg_hba.conf's `cert` method, or `clientcert=verify-*`: the server's words are
            // "connection requires a valid client certificate" and "certificate
            // authentication failed for user …".
            if *db.code() == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                && db.message().contains("certificate")
            {
                let reason = db.message().to_owned();
                return Ok(self.client_refused(reason, error));
            }
            return Err(error);
        }
        match rustls_error(&error) {
            // BadSignature: a trusted CA of the same name as the issuer did not sign it.
            Some(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            )) => Ok(TlsError::UntrustedCertificate {
                mode,
                roots: self.roots.clone().unwrap_or(Roots::System).describe(),
                source: error,
            }),
            Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                expected,
                presented,
            })) => Ok(TlsError::WrongHost {
                host: expected.to_str().into_owned(),
                presented: presented
                    .iter()
                    .map(|name| bare(name))
                    .collect::<Vec<_>>()
                    .join(", "),
                source: error,
            }),
            Some(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)) => {
                Ok(TlsError::WrongHost {
                    host: "the host connected to".into(),
                    presented: "another host".into(),
                    source: error,
                })
            }
            Some(rustls::Error::InvalidCertificate(refused)) => Ok(TlsError::ServerCertificateRefused {
                mode,
                reason: refused.to_string(),
                source: error,
            }),
            Some(rustls::Error::AlertReceived(alert)) if is_client_certificate_alert(*alert) => {
                let reason = format!("the server's TLS alert: {alert:?}");
                Ok(self.client_refused(reason, error))
            }
            Some(_) => Err(error),
            None if std::error::Error::source(&error)
                .is_some_and(|s| s.to_string() == "server does not support TLS") =>
            {
                Ok(TlsError::ServerWithoutTls { mode, source: error })
            }
            None => Err(error),
        }
    }

    fn client_refused(&self, reason: String, source: tokio_postgres::Error) -> TlsError {
        TlsError::ClientCertificateRefused {
            sslcert: self.client.as_ref().map(|(cert, _)| cert.clone()),
            reason,
            source,
        }
    }
}

/// A name webpki presents (`DnsName("db.internal")`, `IpAddress(10.0.0.5)`) as written in a URL.
fn bare(presented: &str) -> &str {
    let inner = |prefix: &str, suffix: &str| presented.strip_prefix(prefix)?.strip_suffix(suffix);
    inner("DnsName(\"", "\")")
        .or_else(|| inner("IpAddress(", ")"))
        .unwrap_or(presented)
}

/// Alerts a server sends about the client's certificate (TLS 1.3 reports them after the
/// handshake, at the first read).
fn is_client_certificate_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::UnsupportedCertificate
    )
}

/// The rustls error under `error`: tokio-rustls wraps it in an `io::Error`, whose `source()`
/// skips it, so each `io::Error` on the chain is looked into.
fn rustls_error(error: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut cause = std::error::Error::source(error);
    while let Some(current) = cause {
        if let Some(found) = current.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        let inner = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if inner.is_some() {
            return inner;
        }
        cause = current.source();
    }
    None
}

fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable {
        setting,
        path: path.to_owned(),
        source,
    })
}

fn not_pem(setting: &'static str, path: &Path, what: &'static str) -> impl Fn(pem::Error) -> TlsError {
    let path = path.to_owned();
    move |source| TlsError::NotPem {
        setting,
        path: path.clone(),
        what,
        source,
    }
}

/// Every `what` (PEM) in the file of `setting`; at least one.
fn read_pem_all<T: PemObject>(
    setting: &'static str,
    path: &Path,
    what: &'static str,
) -> Result<Vec<T>, TlsError> {
    let items = T::pem_slice_iter(&read(setting, path)?)
        .collect::<Result<Vec<T>, _>>()
        .map_err(not_pem(setting, path, what))?;
    match items.is_empty() {
        true => Err(not_pem(setting, path, what)(pem::Error::NoItemsFound)),
        false => Ok(items),
    }
}

/// The first `what` (PEM) in the file of `setting`.
fn read_pem_one<T: PemObject>(setting: &'static str, path: &Path, what: &'static str) -> Result<T, TlsError> {
    T::from_pem_slice(&read(setting, path)?).map_err(not_pem(setting, path, what))
}

/// The server's certificate checked as the mode says; the handshake's signature always (so
/// the session belongs to whoever holds the certificate's key).
#[derive(Debug)]
struct ModeVerifier {
    provider: Arc<CryptoProvider>,
    /// webpki's checks, for `verify-ca` and `verify-full` (and `require` with a root
    /// certificate); none for `prefer` and `require`: any certificate, as libpq (encrypted,
    /// the server unauthenticated).
    webpki: Option<Arc<WebPkiServerVerifier>>,
    /// Whether the host name is checked too (`verify-full`). webpki checks the name last,
    /// after the chain, the validity period and the usage, so a name mismatch means all else
    /// passed.
    host: bool,
}

impl ServerCertVerifier for ModeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.host => Ok(ServerCertVerified::assertion()),
            checked => checked,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BackendError;

    fn settings(mode: SslMode, roots: Option<&str>) -> TlsSettings {
        TlsSettings {
            mode,
            roots: roots.map(Roots::from_setting),
            client: None,
        }
    }

    #[test]
    fn require_with_a_root_certificate_checks_the_chain_as_libpq() {
        assert!(settings(SslMode::Require, None).check() == Check::Nothing);
        assert!(settings(SslMode::Require, Some("/ca.pem")).check() == Check::Chain);
        assert!(settings(SslMode::Prefer, Some("/ca.pem")).check() == Check::Nothing);
        assert!(settings(SslMode::VerifyCa, None).check() == Check::Chain);
        assert!(settings(SslMode::VerifyFull, Some("system")).check() == Check::ChainAndHost);
    }

    #[test]
    fn no_tls_is_asked_for_over_unix_sockets_as_libpq() {
        use tokio_postgres::config::SslMode as Driver;
        let mode_for = |url: &str| {
            let mut config: Config = url.parse().unwrap();
            settings(SslMode::VerifyFull, None).apply(&mut config);
            config.get_ssl_mode()
        };
        assert_eq!(mode_for("host=/var/run/postgresql user=app"), Driver::Disable);
        assert_eq!(mode_for("host=db user=app"), Driver::Require);
        assert_eq!(mode_for("host=/var/run/postgresql,db user=app"), Driver::Require);
    }

    #[test]
    fn presented_names_are_shown_as_a_url_writes_them() {
        assert_eq!(bare("DnsName(\"db.internal\")"), "db.internal");
        assert_eq!(bare("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(bare("Unsupported(0x00)"), "Unsupported(0x00)");
    }

    #[test]
    fn a_missing_file_names_its_setting() {
        let error = settings(SslMode::VerifyCa, Some("/nonexistent/ca.pem"))
            .client_config()
            .unwrap_err();
        assert!(matches!(error, TlsError::Unreadable { .. }), "{error}");
        let message = BackendError::from(error).to_string();
        assert!(
            message.contains("sslrootcert=/nonexistent/ca.pem: cannot read it"),
            "{message}"
        );
        let mut client = settings(SslMode::Require, None);
        client.client = Some(("/nonexistent/c.pem".into(), "/nonexistent/k.pem".into()));
        let message = client.client_config().unwrap_err().to_string();
        assert!(message.starts_with("sslcert=/nonexistent/c.pem"), "{message}");
        // Under `disable` no file is read, as libpq.
        client.mode = SslMode::Disable;
        client.client_config().unwrap();
    }

    #[test]
    fn a_file_without_pem_names_its_setting() {
        let path = std::env::temp_dir().join(format!("retry-kafka-not-pem-{}", std::process::id()));
        std::fs::write(&path, "not a certificate").unwrap();
        let error = settings(SslMode::VerifyFull, Some(path.to_str().unwrap()))
            .client_config()
            .unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(error, TlsError::NotPem { .. }), "{error}");
        assert!(error.to_string().starts_with("sslrootcert="), "{error}");
    }
}
