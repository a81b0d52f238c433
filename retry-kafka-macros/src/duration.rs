//! Compile-time duration literals: `"250ms"`, `"10s"`, `"1m"`, `"2h"`, `"1d"`, and sums such
//! as `"1m30s"`.

/// Parses a duration literal into milliseconds.
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration; write e.g. \"250ms\", \"10s\", \"1m\" or \"2h\"".into());
    }
    let mut total: u64 = 0;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration {text:?}: expected a number at {rest:?}; write e.g. \"10s\" or \"1m30s\""
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let scale = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit after {number}; use ms, s, m, h or d"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?}; use ms, s, m, h or d"
                ))
            }
        };
        total = number
            .checked_mul(scale)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Parses a rate literal, `"200/s"`, `"30/m"`, `"1000/h"` or `"5/10s"`, into attempts and a
/// period in milliseconds.
pub(crate) fn parse_rate(text: &str) -> Result<(u32, u64), String> {
    const FORMS: &str = "write e.g. \"200/s\", \"30/m\" or \"5/10s\"";
    let Some((count, period)) = text.trim().split_once('/') else {
        return Err(format!(
            "invalid rate {text:?}: expected attempts per period; {FORMS}"
        ));
    };
    let attempts: u32 = match count.trim().parse() {
        Ok(0) => {
            return Err(format!(
                "invalid rate {text:?}: the number of attempts must be at least 1"
            ))
        }
        Ok(n) => n,
        Err(_) => {
            return Err(format!(
                "invalid rate {text:?}: {count:?} is not a whole number of attempts; {FORMS}"
            ))
        }
    };
    let period = period.trim();
    // "/s" reads as "per 1s".
    let per_ms = match period.starts_with(|c: char| c.is_ascii_digit()) {
        true => parse_millis(period),
        false => parse_millis(&format!("1{period}")),
    }
    .map_err(|error| format!("invalid rate {text:?}: {error}"))?;
    if per_ms == 0 {
        return Err(format!(
            "invalid rate {text:?}: the period must be longer than zero"
        ));
    }
    Ok((attempts, per_ms))
}

#[cfg(test)]
mod tests {
    use super::{parse_millis, parse_rate};

    #[test]
    fn rates_read_as_attempts_per_period() {
        assert_eq!(parse_rate("200/s"), Ok((200, 1_000)));
        assert_eq!(parse_rate("30/m"), Ok((30, 60_000)));
        assert_eq!(parse_rate("1000/h"), Ok((1000, 3_600_000)));
        assert_eq!(parse_rate("5/10s"), Ok((5, 10_000)));
        for bad in ["200", "0/s", "x/s", "200/", "200/q", "200/0s", "-1/s"] {
            assert!(parse_rate(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn accepts_units_and_sums() {
        assert_eq!(parse_millis("250ms"), Ok(250));
        assert_eq!(parse_millis("10s"), Ok(10_000));
        assert_eq!(parse_millis("1m"), Ok(60_000));
        assert_eq!(parse_millis("2h"), Ok(7_200_000));
        assert_eq!(parse_millis("1d"), Ok(86_400_000));
        assert_eq!(parse_millis("1m30s"), Ok(90_000));
        assert_eq!(parse_millis("0s"), Ok(0));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "10",
            "10q",
            "s",
            "1.5s",
            "-1s",
            "10 s",
            "99999999999999999999d",
        ] {
            assert!(parse_millis(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
