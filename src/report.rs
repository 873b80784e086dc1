//! What the reports read from the audit log share (`usage`, `sessions`, and their `/admin` endpoints): the window
//! (`Since`, `Filter`), the output `Format`, the line-by-line read that counts the lines that are not records, the
//! `usage` object and cost as read back, and the cells of tables and CSV. Nothing here but
//! `each_series_line` does I/O.

use std::borrow::Cow;
use std::io::BufRead;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// How far back to read: a duration before now (`30d`, `12h`) or a point in time (RFC 3339).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(Duration),
    At(SystemTime),
}

impl FromStr for Since {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(ago) = humantime::parse_duration(text) {
            return Ok(Self::Ago(ago));
        }
        if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
            return Ok(Self::At(at.into()));
        }
        // A time without an offset reads as UTC, as `explain --at` does.
        humantime::parse_rfc3339_weak(text).map(Self::At).map_err(|_| {
            format!("{text:?} is neither a duration (30d, 12h) nor an RFC 3339 time (2026-05-01T00:00:00Z)")
        })
    }
}

impl Since {
    /// The first instant read, given the time now; never before 1970, which no record is (and which could not be
    /// printed in the report).
    pub fn start(self, now: SystemTime) -> SystemTime {
        let start = match self {
            Self::Ago(ago) => now.checked_sub(ago),
            Self::At(at) => Some(at),
        };
        start.filter(|start| *start >= SystemTime::UNIX_EPOCH).unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

/// Which records count: those at or after `since`, of this team and user when given. A record without a team or
/// user has `-` for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub team: Option<String>,
    pub user: Option<String>,
    pub since: SystemTime,
}

impl Filter {
    /// Whether a record of this time, team and user counts.
    pub fn admits(&self, at: SystemTime, team: &str, user: &str) -> bool {
        at >= self.since
            && self.team.as_deref().is_none_or(|wanted| wanted == team)
            && self.user.as_deref().is_none_or(|wanted| wanted == user)
    }

    /// `since TS[, team T][, user U]`, the first line of a table.
    pub fn title(&self) -> String {
        let mut title = format!("since {}", crate::audit::timestamp(self.since));
        if let Some(team) = &self.team {
            title.push_str(&format!(", team {}", printable(team)));
        }
        if let Some(user) = &self.user {
            title.push_str(&format!(", user {}", printable(user)));
        }
        title
    }
}

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns, for people.
    Table,
    /// A header row, then one row per line of the report (RFC 4180 quoting).
    Csv,
    /// One pretty-printed object, with the counts a table shows in notes.
    Json,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "table" => Ok(Self::Table),
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            _ => Err(format!("invalid format {text:?}: write table, csv or json")),
        }
    }
}

impl Format {
    /// The `content-type` of the rendered report.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Table => "text/plain; charset=utf-8",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Json => "application/json",
        }
    }
}

/// Calls `each` with every line of the audit log at `paths`, file after file: each path a file (`.gz` too) or a
/// directory (every series in it, see `audit::rotate::series_of`); an active file comes with the rotated files next
/// to it, oldest first. A file rotated before `since` holds no record after it and is not read.
pub fn each_series_line(paths: &[PathBuf], since: SystemTime, mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
    use crate::audit::rotate::{open_series_file, rotated_serial, series_of, Naming};
    let mut series = Vec::new();
    for path in paths {
        let active = path.is_file() && rotated_serial(path).is_none() && path.extension().is_none_or(|e| e != "gz");
        if active {
            series.push(Naming::new(path).series()?);
        } else {
            series.extend(series_of(std::slice::from_ref(path))?);
        }
    }
    for file in series.into_iter().flatten() {
        if file.rotated_at.is_some_and(|at| at < since) {
            continue;
        }
        each_line(open_series_file(&file.path)?, &mut each)?;
    }
    Ok(())
}

/// Calls `each` with every line of `reader` (its newline included) and the line's 1-based number; only an I/O
/// error stops it. One buffer is reused, so memory follows the longest line, not the file.
pub fn each_line(mut reader: impl BufRead, mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        each(&line);
    }
}

/// The lines a report has read, and those that were not audit records (a torn last line, a line that is not
/// JSON, a record whose fields do not read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lines {
    read: u64,
    invalid: u64,
    first_invalid: Option<u64>,
}

impl Lines {
    /// Counts one more line; false when it is blank (nothing to read, and not invalid either).
    pub fn next(&mut self, line: &[u8]) -> bool {
        self.read += 1;
        !line.iter().all(u8::is_ascii_whitespace)
    }

    /// The line last counted is not a record.
    pub fn invalid(&mut self) {
        self.invalid += 1;
        self.first_invalid.get_or_insert(self.read);
    }

    /// Lines that are not a JSON audit record.
    pub fn invalid_lines(&self) -> u64 {
        self.invalid
    }

    /// The 1-based number of the first invalid line.
    pub fn first_invalid_line(&self) -> Option<u64> {
        self.first_invalid
    }
}

/// A record's `ts` (RFC 3339; tollgate writes UTC with milliseconds) as a time.
pub fn parse_time(ts: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(ts).ok().map(SystemTime::from)
}

/// The audit record's `usage` object, as the reports read it back (a missing count is 0) and write it again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Tokens {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
}

/// A record's `cost_usd` in micro-USD, the unit pricing computes in, so that sums are exact. `as` saturates: a
/// negative or NaN cost (never written by tollgate) counts as 0.
pub fn micro_usd(cost_usd: f64) -> u64 {
    (cost_usd * 1e6).round() as u64
}

/// Micro-USD as USD rounded half up to 4 decimals, as printed in tables and CSV (`0.0123`).
pub fn usd_4(micro_usd: u64) -> String {
    let ten_thousandths = micro_usd.saturating_add(50) / 100;
    format!("{}.{:04}", ten_thousandths / 10_000, ten_thousandths % 10_000)
}

/// Micro-USD as USD, a JSON number.
pub fn usd(micro_usd: u64) -> f64 {
    micro_usd as f64 / 1e6
}

/// How a table column lines its cells up: names to the left, numbers to the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Aligned columns: every cell padded to its column's widest, two spaces between columns, no trailing spaces.
/// Cells are printed as given: make names `printable` first.
#[derive(Debug, Clone)]
pub struct Table {
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first row is `header`, each column aligned as `align` says.
    pub fn new(header: &[&str], align: &[Align]) -> Self {
        debug_assert_eq!(header.len(), align.len(), "one alignment per column");
        Self { align: align.to_vec(), rows: vec![header.iter().map(|cell| (*cell).to_owned()).collect()] }
    }

    /// Adds a row of one cell per column.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.align.len(), "one cell per column");
        self.rows.push(cells);
    }

    /// Appends the table to `out`, a line per row.
    pub fn render(&self, out: &mut String) {
        let widths: Vec<usize> = (0..self.align.len())
            .map(|column| self.rows.iter().map(|row| row[column].chars().count()).max().unwrap_or(0))
            .collect();
        let mut line = String::new();
        for row in &self.rows {
            line.clear();
            for (column, cell) in row.iter().enumerate() {
                let width = widths[column];
                if column > 0 {
                    line.push_str("  ");
                }
                match self.align[column] {
                    Align::Left => line.push_str(&format!("{cell:<width$}")),
                    Align::Right => line.push_str(&format!("{cell:>width$}")),
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

/// A name as a table cell: control characters (a newline would break the columns) are escaped.
pub fn printable(name: &str) -> String {
    if name.chars().any(char::is_control) {
        name.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
    } else {
        name.to_owned()
    }
}

/// Free text (a command, a path) as a table cell of at most `width` characters: `printable`, and cut with `…`
/// when longer.
pub fn clipped(text: &str, width: usize) -> String {
    let text = printable(text);
    if text.chars().count() <= width {
        return text;
    }
    let mut clipped: String = text.chars().take(width.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

/// A CSV field, quoted (RFC 4180) when it holds a comma, a quote or a line break.
pub fn csv_field(text: &str) -> Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        Cow::Owned(format!("\"{}\"", text.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(text)
    }
}

/// Appends one CSV row of `fields` (each quoted as needed) to `out`.
pub fn csv_row<'a>(out: &mut String, fields: impl IntoIterator<Item = &'a str>) {
    for (index, field) in fields.into_iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(&csv_field(field));
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn since_reads_durations_and_times() {
        let now = at("2026-05-31T12:00:00Z");
        assert_eq!("30d".parse::<Since>().unwrap().start(now), at("2026-05-01T12:00:00Z"));
        assert_eq!("12h".parse::<Since>().unwrap().start(now), at("2026-05-31T00:00:00Z"));
        assert_eq!("2026-05-01T00:00:00Z".parse::<Since>().unwrap().start(now), at("2026-05-01T00:00:00Z"));
        assert_eq!("2026-05-01T02:00:00+02:00".parse::<Since>().unwrap().start(now), at("2026-05-01T00:00:00Z"));
        assert_eq!("2026-05-01T00:00:00".parse::<Since>().unwrap().start(now), at("2026-05-01T00:00:00Z"));
        assert_eq!("100000000d".parse::<Since>().unwrap().start(now), SystemTime::UNIX_EPOCH);
        assert_eq!("1900-01-01T00:00:00Z".parse::<Since>().unwrap().start(now), SystemTime::UNIX_EPOCH);
        let error = "yesterday".parse::<Since>().unwrap_err();
        assert!(error.contains("\"yesterday\"") && error.contains("30d"), "{error}");
        assert!("30x".parse::<Since>().is_err());
    }

    #[test]
    fn formats_parse_by_name() {
        assert_eq!("table".parse(), Ok(Format::Table));
        assert_eq!("csv".parse(), Ok(Format::Csv));
        assert_eq!("json".parse(), Ok(Format::Json));
        assert!("xml".parse::<Format>().unwrap_err().contains("table, csv or json"));
    }

    #[test]
    fn filters_admit_by_time_team_and_user() {
        let since = at("2026-05-01T00:00:00Z");
        let filter = Filter { team: Some("red".into()), user: None, since };
        assert!(filter.admits(since, "red", "alice"));
        assert!(!filter.admits(since - Duration::from_millis(1), "red", "alice"));
        assert!(!filter.admits(since, "blue", "alice"));
        let filter = Filter { team: None, user: Some("al\nice".into()), since };
        assert!(filter.admits(since, "-", "al\nice") && !filter.admits(since, "-", "alice"));
        assert_eq!(filter.title(), "since 2026-05-01T00:00:00.000Z, user al\\nice");
    }

    #[test]
    fn lines_count_what_is_not_a_record() {
        let mut lines = Lines::default();
        let mut seen = Vec::new();
        each_line(&b"one\n  \n\ntwo\nthree"[..], |line| {
            if lines.next(line) {
                seen.push(String::from_utf8_lossy(line).into_owned());
                if line.starts_with(b"t") {
                    lines.invalid();
                }
            }
        })
        .unwrap();
        assert_eq!(seen, ["one\n", "two\n", "three"]);
        assert_eq!((lines.invalid_lines(), lines.first_invalid_line()), (2, Some(4)));
    }

    #[test]
    fn cost_rounds_half_up_to_four_decimals() {
        assert_eq!(usd_4(0), "0.0000");
        assert_eq!(usd_4(49), "0.0000");
        assert_eq!(usd_4(50), "0.0001");
        assert_eq!(usd_4(12_345), "0.0123");
        assert_eq!(usd_4(12_350), "0.0124");
        assert_eq!(usd_4(123_456_789), "123.4568");
        assert_eq!(micro_usd(0.0125), 12_500);
        assert_eq!(micro_usd(-1.0), 0);
        assert_eq!(micro_usd(f64::NAN), 0);
        assert_eq!(usd(1), 0.000001);
    }

    #[test]
    fn tables_align_names_left_and_numbers_right() {
        let mut table = Table::new(&["NAME", "COUNT", "NOTE"], &[Align::Left, Align::Right, Align::Left]);
        table.row(vec!["alice".into(), "7".into(), String::new()]);
        table.row(vec!["b".into(), "1234567".into(), "x".into()]);
        let mut out = String::new();
        table.render(&mut out);
        assert_eq!(out, "NAME     COUNT  NOTE\nalice        7\nb      1234567  x\n");
    }

    #[test]
    fn cells_are_printable_clipped_and_quoted() {
        assert_eq!(printable("a\tb\nc"), "a\\tb\\nc");
        assert_eq!(clipped("rm -rf /tmp/x", 20), "rm -rf /tmp/x");
        assert_eq!(clipped("rm -rf /tmp/x", 8), "rm -rf …");
        assert_eq!(clipped("ééééé", 5), "ééééé");
        assert_eq!(clipped("ééééé", 4), "ééé…");
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\"\n"), "\"say \"\"hi\"\"\n\"");
        let mut out = String::new();
        csv_row(&mut out, ["x", "y,z", ""]);
        assert_eq!(out, "x,\"y,z\",\n");
    }
}
