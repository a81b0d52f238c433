//! Output: aligned tables for people, JSON lines for scripts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::io::IsTerminal as _;

use anyhow::Context as _;
use comfy_table::{presets::NOTHING, Table};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};
use retry_kafka::dead_letters::DeadLetter;
use retry_kafka::headers::names;
use serde_json::{json, Value};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
}

/// A table without borders, columns aligned, as `kubectl get` prints.
pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_header(header.iter().map(|h| h.to_string()));
    table
}

/// Prints `table` with each line's trailing padding cut.
pub(crate) fn print_table(table: &Table) {
    for line in table.to_string().lines() {
        println!("{}", line.trim_end());
    }
}

/// Rows of a table printed a page at a time, so a listing of any length holds one page: each
/// page is aligned on its own and has its header.
pub(crate) struct Rows {
    header: Vec<String>,
    table: Option<Table>,
    count: usize,
    pages: usize,
}

/// Rows in one page of a [`Rows`] table.
const PAGE_ROWS: usize = 1000;

impl Rows {
    pub(crate) fn new(header: &[&str]) -> Self {
        Rows {
            header: header.iter().map(|h| h.to_string()).collect(),
            table: None,
            count: 0,
            pages: 0,
        }
    }

    pub(crate) fn add(&mut self, row: Vec<String>, out: &mut Out) -> anyhow::Result<()> {
        let header = &self.header;
        self.table
            .get_or_insert_with(|| table(&header.iter().map(String::as_str).collect::<Vec<_>>()))
            .add_row(row);
        self.count += 1;
        if self.count == PAGE_ROWS {
            self.finish(out)?;
        }
        Ok(())
    }

    /// Prints the rows not printed yet (a header alone when there were none at all).
    pub(crate) fn finish(&mut self, out: &mut Out) -> anyhow::Result<()> {
        let table = match self.table.take() {
            Some(table) => table,
            None if self.pages == 0 => table(&self.header.iter().map(String::as_str).collect::<Vec<_>>()),
            None => return Ok(()),
        };
        for line in table.to_string().lines() {
            out.line(line.trim_end())?;
        }
        self.count = 0;
        self.pages += 1;
        Ok(())
    }
}

/// Stdout, buffered: a million JSON lines are not a million writes.
pub(crate) struct Out(std::io::BufWriter<std::io::Stdout>);

impl Out {
    pub(crate) fn stdout() -> Self {
        Out(std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()))
    }

    pub(crate) fn line(&mut self, line: impl std::fmt::Display) -> anyhow::Result<()> {
        use std::io::Write as _;
        writeln!(self.0, "{line}").context("could not write to stdout")
    }

    pub(crate) fn flush(&mut self) -> anyhow::Result<()> {
        use std::io::Write as _;
        self.0.flush().context("could not write to stdout")
    }
}

/// A spinner with a message on stderr: drawn in place on a terminal; elsewhere only when
/// `forced` (`--progress`), as a line a second (a CI log); else hidden, so that output piped
/// to a script is only the listing.
pub(crate) fn progress_bar(forced: bool) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else if forced {
        ProgressDrawTarget::term_like_with_hz(Box::new(Lines), 1)
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(None, target);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg} ({per_sec})").expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Stderr that is not a terminal: each draw a line of its own.
#[derive(Debug)]
struct Lines;

impl TermLike for Lines {
    fn width(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, line: &str) -> std::io::Result<()> {
        use std::io::Write as _;
        writeln!(std::io::stderr(), "{line}")
    }
    fn write_str(&self, text: &str) -> std::io::Result<()> {
        use std::io::Write as _;
        write!(std::io::stderr(), "{text}")
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes as text when they are UTF-8, else as hex: `(text, "utf8" | "hex")`.
pub(crate) fn bytes(value: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(value) {
        Ok(text) => (text.to_owned(), "utf8"),
        Err(_) => (value.iter().map(|b| format!("{b:02x}")).collect(), "hex"),
    }
}

/// A one-line cell: control characters escaped, cut to `width` characters.
pub(crate) fn cell(text: &str, width: usize) -> String {
    let escaped: String = text.chars().flat_map(char::escape_default).collect();
    match escaped.char_indices().nth(width) {
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
        None => escaped,
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Epoch ms as RFC 3339 UTC, to the millisecond.
pub(crate) fn time(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// A duration in ms, rounded for people: `3m 12s`.
pub(crate) fn age(ms: i64) -> String {
    let seconds = Duration::from_secs((ms.max(0) / 1000) as u64);
    humantime::format_duration(seconds).to_string()
}

fn header_number<T: std::str::FromStr>(entry: &DeadLetter, name: &str) -> Option<T> {
    entry.record.headers.get_str(name)?.parse().ok()
}

/// When the entry was held back behind an earlier record of its key (`rk-held-at`), if it was.
fn held_at_ms(entry: &DeadLetter) -> Option<i64> {
    header_number(entry, names::HELD_AT)
}

/// When the entry's story began: its first failure, else when it was written.
fn started_ms(entry: &DeadLetter) -> Option<i64> {
    entry
        .context
        .as_ref()
        .map(|c| c.first_failure_at_ms)
        .ok()
        .or(entry.record.timestamp_ms)
}

/// One entry as a JSON object: everything `dlq show` knows.
pub(crate) fn entry_json(queue: &str, entry: &DeadLetter) -> Value {
    let record = &entry.record;
    let (key, key_encoding) = record.key.as_deref().map(bytes).unzip();
    let (payload, payload_encoding) = record.payload.as_deref().map(bytes).unzip();
    let headers: serde_json::Map<String, Value> = record
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.to_owned(),
                Value::String(String::from_utf8_lossy(value).into_owned()),
            )
        })
        .collect();
    let mut object = json!({
        "queue": queue,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp_ms.map(time),
        "key": key,
        "key_encoding": key_encoding,
        "payload": payload,
        "payload_encoding": payload_encoding,
        "replays": entry.replays(),
        "age_ms": started_ms(entry).map(|at| now_ms() - at),
        // A key-ordered handler's record that waited behind an earlier one of its key.
        "held_at": held_at_ms(entry).map(time),
        "held_behind": header_number::<u64>(entry, names::HELD_BEHIND),
        "headers": headers,
    });
    let fields = object.as_object_mut().expect("built as an object");
    match &entry.context {
        Ok(context) => {
            fields.insert("error_kind".into(), json!(context.error_kind.as_str()));
            fields.insert("error_message".into(), json!(context.error_message));
            fields.insert("attempts".into(), json!(context.attempts));
            fields.insert("group".into(), json!(context.group));
            fields.insert("original_topic".into(), json!(context.original_topic));
            fields.insert("original_partition".into(), json!(context.original_partition));
            fields.insert("original_offset".into(), json!(context.original_offset));
            fields.insert(
                "first_failure_at".into(),
                json!(time(context.first_failure_at_ms)),
            );
            fields.insert("last_failure_at".into(), json!(time(context.last_failure_at_ms)));
        }
        Err(error) => {
            fields.insert("context_error".into(), json!(error.to_string()));
        }
    }
    object
}

/// The columns of `dlq list`.
pub(crate) const LIST_HEADER: [&str; 10] = [
    "ENTRY",
    "KEY",
    "HELD",
    "KIND",
    "ATTEMPTS",
    "REPLAYS",
    "ORIGIN",
    "LAST FAILURE",
    "AGE",
    "ERROR",
];

/// One row of `dlq list`.
pub(crate) fn list_row(entry: &DeadLetter) -> Vec<String> {
    let record = &entry.record;
    let key = record
        .key
        .as_deref()
        .map(|k| cell(&bytes(k).0, 24))
        .unwrap_or_default();
    let age = started_ms(entry).map(|at| age(now_ms() - at)).unwrap_or_default();
    // Waited behind an earlier record of its key (a key-ordered handler's follower).
    let held = match header_number::<u64>(entry, names::HELD_BEHIND) {
        Some(behind) => format!("behind {behind}"),
        None if held_at_ms(entry).is_some() => "yes".into(),
        None => String::new(),
    };
    match &entry.context {
        Ok(c) => vec![
            entry.position(),
            key,
            held,
            c.error_kind.as_str().to_owned(),
            c.attempts.to_string(),
            entry.replays().to_string(),
            format!(
                "{}/{}/{}",
                c.original_topic, c.original_partition, c.original_offset
            ),
            time(c.last_failure_at_ms),
            age,
            cell(&c.error_message, 60),
        ],
        Err(error) => vec![
            entry.position(),
            key,
            held,
            "?".into(),
            String::new(),
            entry.replays().to_string(),
            String::new(),
            String::new(),
            age,
            cell(&format!("(no failure context: {error})"), 60),
        ],
    }
}
