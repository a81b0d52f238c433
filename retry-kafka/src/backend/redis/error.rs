//! A `redis` error as a [`BackendError`]: the one place that tells a refusal (a missing or
//! wrong password, a certificate this client does not trust, a plain URL for a TLS port),
//! which no retry mends, from a failure that may pass, and names the setting to change.

use redis::{ErrorKind, RedisError};

use crate::error::BackendError;

/// A missing password (`NOAUTH`).
const NO_PASSWORD: &str = "the server wants a password: give it in the URL, redis://:password@host:port \
                           (or redis://user:password@host:port)";
/// A wrong user or password.
const WRONG_PASSWORD: &str = "the user or password was refused: check the one in the URL";
/// A certificate signed by a CA this client does not trust.
const UNTRUSTED_CERTIFICATE: &str = "the server's certificate is signed by a CA this client does not trust: \
                                     give that CA's certificate (PEM) in REDIS_TLS_CA_FILE, or to \
                                     RedisBuilder::tls_root_certificate";
/// Any other certificate the TLS library refused.
const BAD_CERTIFICATE: &str = "the server's TLS certificate was refused: it must name the URL's host, be \
                               valid now, and be signed by a trusted CA (REDIS_TLS_CA_FILE, or \
                               RedisBuilder::tls_root_certificate)";
/// A plain `redis://` URL for a port that speaks TLS only.
const WANTS_TLS: &str = "the server closed the connection without a reply, as a server that speaks TLS only \
                         does: use a rediss:// URL (cargo feature `redis-tls`)";

/// What a failure happened doing.
#[derive(Clone, Copy)]
pub(crate) enum Doing<'a> {
    /// Connecting to `url` and sending it a first command, nothing else on that connection.
    Connecting { url: &'a str },
    /// A command on an established connection.
    Command,
}

/// `error` as a backend error: [`BackendError::Refused`] with what to change when the server
/// (or the TLS library) refused this client, [`BackendError::Transport`] otherwise. The text
/// never holds a password: URLs are redacted, and the client's errors carry none.
pub(crate) fn explain(error: RedisError, doing: Doing<'_>) -> BackendError {
    match (refusal(&error, doing), doing) {
        (Some(hint), Doing::Connecting { url }) => BackendError::Refused {
            backend: "redis",
            reason: format!("{} refused a PING: {error}", redact(url)),
            hint,
            source: Box::new(error),
        },
        (Some(hint), Doing::Command) => BackendError::Refused {
            backend: "redis",
            reason: error.to_string(),
            hint,
            source: Box::new(error),
        },
        (None, Doing::Connecting { url }) => BackendError::Transport {
            backend: "redis",
            source: format!("{} refused a PING: {error}", redact(url)).into(),
        },
        (None, Doing::Command) => BackendError::Transport {
            backend: "redis",
            source: Box::new(error),
        },
    }
}

/// [`explain`] for a command on an established connection.
pub(crate) fn transport(error: RedisError) -> BackendError {
    explain(error, Doing::Command)
}

/// A write's failure: [`BackendError::Produce`] naming `topic`, or the refusal.
pub(crate) fn produce(topic: &str, error: RedisError) -> BackendError {
    explain(error, Doing::Command).while_producing(topic)
}

/// What to change when `error` is a refusal that no retry mends.
fn refusal(error: &RedisError, doing: Doing<'_>) -> Option<&'static str> {
    match (error.code(), error.kind()) {
        (Some("NOAUTH"), _) => return Some(NO_PASSWORD),
        (Some("WRONGPASS"), _) | (_, ErrorKind::AuthenticationFailed) => return Some(WRONG_PASSWORD),
        _ => {}
    }
    if !error.is_io_error() {
        return None;
    }
    let text = error.to_string();
    if text.contains("UnknownIssuer") {
        return Some(UNTRUSTED_CERTIFICATE);
    }
    if text.contains("certificate") {
        return Some(BAD_CERTIFICATE);
    }
    // A server that speaks TLS only drops a client that speaks plain text at once, before
    // any reply; mid-run, a dropped connection is only a dropped connection.
    let plain = matches!(doing, Doing::Connecting { url } if url.starts_with("redis://"));
    let dropped = error.is_connection_dropped() && !error.is_connection_refusal();
    (plain && dropped).then_some(WANTS_TLS)
}

/// Whether the server answered with error `code` (`NOGROUP`, `NOSCRIPT`, …), alone or among
/// the errors of a pipeline.
pub(crate) fn has_code(error: &RedisError, code: &str) -> bool {
    error.code() == Some(code)
        || error
            .clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, e)| e.code() == code))
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:secret@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("rediss://me:secret@h:1"), "rediss://me:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn refusals_name_what_to_change_and_other_failures_do_not() {
        let wrong = RedisError::from((ErrorKind::AuthenticationFailed, "invalid password"));
        let refused = explain(wrong, Doing::Command).to_string();
        assert!(refused.contains(WRONG_PASSWORD), "{refused}");
        let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let connecting = Doing::Connecting {
            url: "redis://:secret@127.0.0.1:6380",
        };
        let plain = explain(reset, connecting).to_string();
        assert!(plain.contains("rediss://"), "{plain}");
        assert!(!plain.contains("secret"), "{plain}");
        let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(
            explain(reset, Doing::Command),
            BackendError::Transport { .. }
        ));
        let untrusted = RedisError::from(std::io::Error::other("invalid peer certificate: UnknownIssuer"));
        let message = explain(untrusted, connecting).to_string();
        assert!(message.contains("REDIS_TLS_CA_FILE"), "{message}");
    }
}
