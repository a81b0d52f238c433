//! libpq's TLS parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) taken out of a
//! connection string, in either of libpq's forms (`postgres://…?sslmode=…` or
//! `host=… sslmode=…`): tokio-postgres knows `sslmode` up to `require` only and refuses the
//! others as unknown options, so [`split`] hands it the rest.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// The parameters [`split`] takes out.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// A connection string's TLS parameters, as written (decoded, unchecked).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsParams {
    pub(crate) sslmode: Option<String>,
    pub(crate) sslrootcert: Option<String>,
    pub(crate) sslcert: Option<String>,
    pub(crate) sslkey: Option<String>,
}

impl TlsParams {
    fn set(&mut self, key: &str, value: String) {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            _ => &mut self.sslkey,
        };
        // libpq: the last occurrence wins.
        *slot = Some(value);
    }
}

/// `url` without its TLS parameters, and those parameters. Fails on a malformed key/value
/// string (an unterminated quote), with what is wrong.
pub(crate) fn split(url: &str) -> Result<(String, TlsParams), String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(split_url(url))
    } else {
        split_key_values(url)
    }
}

/// The URL form: query parameters, percent-encoded.
fn split_url(url: &str) -> (String, TlsParams) {
    let mut params = TlsParams::default();
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), params);
    };
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(key);
        if TLS_KEYS.contains(&&*key) {
            params.set(&key, decode(value).into_owned());
        } else {
            kept.push(pair);
        }
    }
    let rest = match kept.as_slice() {
        [] => base.to_owned(),
        pairs => format!("{base}?{}", pairs.join("&")),
    };
    (rest, params)
}

fn decode(text: &str) -> Cow<'_, str> {
    percent_decode_str(text).decode_utf8_lossy()
}

/// The key/value form: `key = value` pairs apart by white space, a value in single quotes
/// when it holds spaces, with `\'` and `\\` escapes. The pairs kept are written again quoted.
fn split_key_values(conninfo: &str) -> Result<(String, TlsParams), String> {
    let mut params = TlsParams::default();
    let mut kept = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("expected \"=\" after {key:?}"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err(format!("the value of {key:?} has no closing quote")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        if TLS_KEYS.contains(&key.as_str()) {
            params.set(&key, value);
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok((kept.join(" "), params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_form_loses_its_tls_parameters_only() {
        let (rest, params) = split(
            "postgres://app:s%40cret@db:5432/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://app:s%40cret@db:5432/app?application_name=x&connect_timeout=5"
        );
        assert_eq!(params.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(params.sslrootcert.as_deref(), Some("/etc/ca dir/ca.pem"));
        let (rest, params) = split("postgresql://db/app?sslcert=/c.pem&sslkey=/k.pem").unwrap();
        assert_eq!(rest, "postgresql://db/app");
        assert_eq!(
            (params.sslcert.as_deref(), params.sslkey.as_deref()),
            (Some("/c.pem"), Some("/k.pem"))
        );
        assert_eq!(split("postgres://db/app").unwrap().1, TlsParams::default());
    }

    #[test]
    fn the_key_value_form_loses_its_tls_parameters_only() {
        let (rest, params) =
            split("host=db  user = app sslmode=require sslrootcert='/etc/my ca.pem' dbname=a\\ b").unwrap();
        assert_eq!(rest, "host='db' user='app' dbname='a b'");
        assert_eq!(params.sslmode.as_deref(), Some("require"));
        assert_eq!(params.sslrootcert.as_deref(), Some("/etc/my ca.pem"));
        let (rest, _) = split("password='a\\'b\\\\c' sslmode=disable").unwrap();
        assert_eq!(rest, "password='a\\'b\\\\c'");
        // What tokio-postgres reads back is what was written.
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"a'b\\c"[..]));
        assert!(split("host='db").is_err());
        assert!(split("host db").is_err());
    }
}
