//! `tollgate usage` and `GET /admin/usage`: requests, tokens and spend per team, user and model, summed from the
//! audit log — the per-request ledger — after the fact. The file is read one line at a time and only the sums are
//! kept, so memory follows the number of distinct (team, user, model) triples, not the number of records.
//! Nothing here but `read_series` does I/O; `main.rs` and `admin.rs` print or serve the report.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;

use serde::{Deserialize, Serialize};

use crate::report::{self, Align, Filter, Format, Lines, Table, Tokens};

/// The window `tollgate usage` and `/admin/usage` sum when not told otherwise.
pub const DEFAULT_SINCE: &str = "30d";

/// Sums over metered records. Cost is kept in micro-USD, the unit pricing computes in, so sums are exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Metered records (those with `usage`).
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cost_micro_usd: u64,
}

impl Totals {
    fn add(&mut self, other: &Self) {
        self.requests = self.requests.saturating_add(other.requests);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cache_creation_input_tokens =
            self.cache_creation_input_tokens.saturating_add(other.cache_creation_input_tokens);
        self.cache_read_input_tokens = self.cache_read_input_tokens.saturating_add(other.cache_read_input_tokens);
        self.cost_micro_usd = self.cost_micro_usd.saturating_add(other.cost_micro_usd);
    }

    /// Cost in USD rounded half up to 4 decimals, as printed in tables and CSV (`0.0123`).
    pub fn cost_usd_4(&self) -> String {
        report::usd_4(self.cost_micro_usd)
    }

    /// Cost in USD as a number (micro-USD precision).
    pub fn cost_usd(&self) -> f64 {
        report::usd(self.cost_micro_usd)
    }
}

/// The sums of one team, user and model. A record without a user, team or model is summed under `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub team: String,
    pub user: String,
    pub model: String,
    pub totals: Totals,
}

/// What a read of the audit log found.
#[derive(Debug)]
pub struct Report {
    filter: Filter,
    /// Keyed by `team \0 user \0 model`, built in `key` so that a record of a known triple allocates nothing.
    rows: HashMap<String, Row>,
    key: String,
    lines: Lines,
}

/// The fields of an audit record that usage reads; serde skips the others.
#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    team: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    usage: Option<Tokens>,
    cost_usd: Option<f64>,
}

/// Reads the audit log at `paths` line by line (`report::each_series_line`: rotated files too, those rotated
/// before the filter's start skipped). Invalid lines are numbered across the files read.
pub fn read_series(paths: &[std::path::PathBuf], filter: Filter) -> std::io::Result<Report> {
    let mut report = Report::new(filter);
    let since = report.filter.since;
    report::each_series_line(paths, since, |line| report.add_line(line))?;
    Ok(report)
}

impl Report {
    /// An empty report over `filter`.
    pub fn new(filter: Filter) -> Self {
        Self { filter, rows: HashMap::new(), key: String::new(), lines: Lines::default() }
    }

    /// Sums every line of `reader`; only an I/O error stops it (a line that is not a record is counted).
    pub fn read(filter: Filter, reader: impl BufRead) -> std::io::Result<Self> {
        let mut report = Self::new(filter);
        report::each_line(reader, |line| report.add_line(line))?;
        Ok(report)
    }

    /// Sums one line of the audit log. A record without `usage` (a tunnel, a deny, an unmetered response) or
    /// outside the filter is passed over; a line that is not a JSON audit record is counted as invalid.
    pub fn add_line(&mut self, line: &[u8]) {
        if !self.lines.next(line) {
            return;
        }
        let Ok(entry) = serde_json::from_slice::<Entry>(line) else {
            return self.lines.invalid();
        };
        let Some(tokens) = entry.usage else { return };
        let Some(ts) = report::parse_time(&entry.ts) else {
            return self.lines.invalid();
        };
        let team = entry.team.as_deref().unwrap_or("-");
        let user = entry.user.as_deref().unwrap_or("-");
        let model = entry.model.as_deref().unwrap_or("-");
        if !self.filter.admits(ts, team, user) {
            return;
        }
        let totals = Totals {
            requests: 1,
            input_tokens: tokens.input_tokens,
            output_tokens: tokens.output_tokens,
            cache_creation_input_tokens: tokens.cache_creation_input_tokens,
            cache_read_input_tokens: tokens.cache_read_input_tokens,
            cost_micro_usd: report::micro_usd(entry.cost_usd.unwrap_or(0.0)),
        };
        self.key.clear();
        for (index, part) in [team, user, model].into_iter().enumerate() {
            if index > 0 {
                self.key.push('\0');
            }
            self.key.push_str(part);
        }
        match self.rows.get_mut(self.key.as_str()) {
            Some(row) => row.totals.add(&totals),
            None => {
                let row = Row { team: team.to_owned(), user: user.to_owned(), model: model.to_owned(), totals };
                self.rows.insert(self.key.clone(), row);
            }
        }
    }

    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// Lines that are not a JSON audit record (not JSON, or a record whose fields do not read).
    pub fn invalid_lines(&self) -> u64 {
        self.lines.invalid_lines()
    }

    /// The 1-based number of the first invalid line.
    pub fn first_invalid_line(&self) -> Option<u64> {
        self.lines.first_invalid_line()
    }

    /// One row per team, user and model: cost descending, then team, user and model.
    pub fn rows(&self) -> Vec<&Row> {
        let mut rows: Vec<&Row> = self.rows.values().collect();
        rows.sort_by(|a, b| {
            b.totals
                .cost_micro_usd
                .cmp(&a.totals.cost_micro_usd)
                .then_with(|| (&a.team, &a.user, &a.model).cmp(&(&b.team, &b.user, &b.model)))
        });
        rows
    }

    /// One row per team and user (models summed): cost descending, then team and user.
    pub fn rows_by_user(&self) -> Vec<(&str, &str, Totals)> {
        let mut by_user: BTreeMap<(&str, &str), Totals> = BTreeMap::new();
        for row in self.rows.values() {
            by_user.entry((&row.team, &row.user)).or_default().add(&row.totals);
        }
        let mut rows: Vec<(&str, &str, Totals)> = by_user.into_iter().map(|((t, u), totals)| (t, u, totals)).collect();
        rows.sort_by(|a, b| b.2.cost_micro_usd.cmp(&a.2.cost_micro_usd).then_with(|| (a.0, a.1).cmp(&(b.0, b.1))));
        rows
    }

    /// The sum of every row.
    pub fn total(&self) -> Totals {
        let mut total = Totals::default();
        for row in self.rows.values() {
            total.add(&row.totals);
        }
        total
    }

    /// The report as text in `format`, ending with a newline.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.table(),
            Format::Csv => self.csv(),
            Format::Json => self.json(),
        }
    }

    /// `usage since TS[, team T][, user U]`, then aligned columns per team and user, then `total`.
    fn table(&self) -> String {
        let mut out = format!("usage {}\n", self.filter.title());
        let mut table = Table::new(
            &["TEAM", "USER", "REQUESTS", "INPUT", "OUTPUT", "CACHE_WRITE", "CACHE_READ", "COST_USD"],
            &[
                Align::Left,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
            ],
        );
        let cells = |team: &str, user: &str, t: &Totals| {
            vec![
                report::printable(team),
                report::printable(user),
                t.requests.to_string(),
                t.input_tokens.to_string(),
                t.output_tokens.to_string(),
                t.cache_creation_input_tokens.to_string(),
                t.cache_read_input_tokens.to_string(),
                t.cost_usd_4(),
            ]
        };
        for (team, user, totals) in self.rows_by_user() {
            table.row(cells(team, user, &totals));
        }
        table.row(cells("total", "", &self.total()));
        table.render(&mut out);
        out
    }

    /// A header row, one row per team, user and model, and a `total` row whose user and model are empty (a real
    /// row's are never empty: a missing name is `-`).
    fn csv(&self) -> String {
        let mut out = String::from(
            "team,user,model,requests,input_tokens,output_tokens,cache_creation_input_tokens,cache_read_input_tokens,cost_usd\n",
        );
        let mut line = |names: [&str; 3], t: &Totals| {
            let names: Vec<Cow<str>> = names.iter().map(|n| report::csv_field(n)).collect();
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{}\n",
                names[0],
                names[1],
                names[2],
                t.requests,
                t.input_tokens,
                t.output_tokens,
                t.cache_creation_input_tokens,
                t.cache_read_input_tokens,
                t.cost_usd_4()
            ));
        };
        for row in self.rows() {
            line([&row.team, &row.user, &row.model], &row.totals);
        }
        line(["total", "", ""], &self.total());
        out
    }

    fn json(&self) -> String {
        let document = JsonReport {
            since: crate::audit::timestamp(self.filter.since),
            team: self.filter.team.as_deref(),
            user: self.filter.user.as_deref(),
            rows: self
                .rows()
                .into_iter()
                .map(|row| JsonRow {
                    team: &row.team,
                    user: &row.user,
                    model: &row.model,
                    totals: JsonTotals::from(&row.totals),
                })
                .collect(),
            total: JsonTotals::from(&self.total()),
            invalid_lines: self.lines.invalid_lines(),
        };
        let mut text = serde_json::to_string_pretty(&document).expect("a report of strings and numbers serialises");
        text.push('\n');
        text
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    since: String,
    team: Option<&'a str>,
    user: Option<&'a str>,
    rows: Vec<JsonRow<'a>>,
    total: JsonTotals,
    invalid_lines: u64,
}

#[derive(Serialize)]
struct JsonRow<'a> {
    team: &'a str,
    user: &'a str,
    model: &'a str,
    #[serde(flatten)]
    totals: JsonTotals,
}

#[derive(Serialize)]
struct JsonTotals {
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
    cost_usd: f64,
}

impl From<&Totals> for JsonTotals {
    fn from(t: &Totals) -> Self {
        Self {
            requests: t.requests,
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            cache_creation_input_tokens: t.cache_creation_input_tokens,
            cache_read_input_tokens: t.cache_read_input_tokens,
            cost_usd: t.cost_usd(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    fn filter(since: &str) -> Filter {
        Filter { team: None, user: None, since: at(since) }
    }

    /// A metered record as `exchange::finish` writes it (with the chain fields).
    fn metered(ts: &str, team: &str, user: &str, model: &str, tokens: [u64; 4], cost: f64) -> String {
        serde_json::json!({
            "ts": ts, "id": "r", "kind": "intercepted", "listener": "proxy", "client": "127.0.0.1:5000",
            "user": user, "team": team, "method": "POST", "host": "api.anthropic.com", "port": 443,
            "path": "/v1/messages", "decision": "allow", "rule": null, "status": 200, "bytes_up": 10,
            "bytes_down": 20, "duration_ms": 5, "upstream": "api.anthropic.com", "model": model,
            "usage": {"input_tokens": tokens[0], "output_tokens": tokens[1],
                "cache_creation_input_tokens": tokens[2], "cache_read_input_tokens": tokens[3]},
            "cost_usd": cost, "error": null, "prev": "00", "hash": "11"
        })
        .to_string()
    }

    fn read(filter: Filter, lines: &[String]) -> Report {
        Report::read(filter, lines.join("\n").as_bytes()).unwrap()
    }

    #[test]
    fn sums_metered_records_per_team_user_and_model() {
        let lines = vec![
            metered("2026-05-02T10:00:00.000Z", "red", "alice", "opus", [100, 10, 5, 1], 0.0125),
            metered("2026-05-03T10:00:00.000Z", "red", "alice", "opus", [200, 20, 0, 2], 0.02),
            metered("2026-05-03T11:00:00.000Z", "red", "alice", "haiku", [1, 2, 3, 4], 0.000001),
            metered("2026-05-04T10:00:00.000Z", "blue", "bob", "opus", [7, 8, 9, 10], 0.5),
            // Not metered: a tunnel, and a deny.
            r#"{"ts":"2026-05-04T10:00:00.000Z","kind":"connect","user":"alice","team":"red","decision":"allow","status":200}"#.to_owned(),
            r#"{"ts":"2026-05-04T10:00:00.000Z","kind":"intercepted","user":"bob","team":"blue","decision":"deny","status":429,"model":"opus"}"#.to_owned(),
            // Before the window.
            metered("2026-04-30T23:59:59.999Z", "red", "alice", "opus", [1000, 0, 0, 0], 9.0),
        ];
        let report = read(filter("2026-05-01T00:00:00Z"), &lines);
        let rows: Vec<(&str, &str, &str, Totals)> =
            report.rows().iter().map(|r| (&*r.team, &*r.user, &*r.model, r.totals)).collect();
        let totals = |requests, [i, o, w, r]: [u64; 4], cost_micro_usd| Totals {
            requests,
            input_tokens: i,
            output_tokens: o,
            cache_creation_input_tokens: w,
            cache_read_input_tokens: r,
            cost_micro_usd,
        };
        assert_eq!(
            rows,
            vec![
                ("blue", "bob", "opus", totals(1, [7, 8, 9, 10], 500_000)),
                ("red", "alice", "opus", totals(2, [300, 30, 5, 3], 32_500)),
                ("red", "alice", "haiku", totals(1, [1, 2, 3, 4], 1)),
            ]
        );
        assert_eq!(report.total(), totals(4, [308, 40, 17, 17], 532_501));
        assert_eq!(report.invalid_lines(), 0);
        let by_user: Vec<(&str, &str, u64)> =
            report.rows_by_user().iter().map(|(t, u, totals)| (*t, *u, totals.requests)).collect();
        assert_eq!(by_user, vec![("blue", "bob", 1), ("red", "alice", 3)]);
    }

    #[test]
    fn filters_by_team_and_user() {
        let lines = vec![
            metered("2026-05-02T10:00:00.000Z", "red", "alice", "opus", [1, 0, 0, 0], 0.1),
            metered("2026-05-02T10:00:00.000Z", "red", "carol", "opus", [2, 0, 0, 0], 0.2),
            metered("2026-05-02T10:00:00.000Z", "blue", "carol", "opus", [4, 0, 0, 0], 0.4),
        ];
        let only = |team: Option<&str>, user: Option<&str>| {
            let filter =
                Filter { team: team.map(Into::into), user: user.map(Into::into), ..filter("2026-05-01T00:00:00Z") };
            read(filter, &lines).total().input_tokens
        };
        assert_eq!(only(None, None), 7);
        assert_eq!(only(Some("red"), None), 3);
        assert_eq!(only(None, Some("carol")), 6);
        assert_eq!(only(Some("blue"), Some("carol")), 4);
        assert_eq!(only(Some("blue"), Some("alice")), 0);
    }

    #[test]
    fn counts_lines_that_are_not_records_and_names_the_first() {
        let lines = [
            metered("2026-05-02T10:00:00.000Z", "red", "alice", "opus", [1, 0, 0, 0], 0.1),
            "".to_owned(),
            "not json".to_owned(),
            r#"{"ts":"2026-05-02T10:00:00.000Z","usage":{"input_tokens":"many"}}"#.to_owned(),
            r#"{"ts":"last tuesday","usage":{"input_tokens":1}}"#.to_owned(),
            r#"{"ts":"2026-05-02T10:00:00.000Z","usage":{"input_tokens":5}}"#.to_owned(),
        ];
        let mut bytes = lines.join("\n").into_bytes();
        bytes.extend_from_slice(b"\n\xff\xfe{\n   \n");
        let report = Report::read(filter("2026-05-01T00:00:00Z"), &bytes[..]).unwrap();
        assert_eq!(report.invalid_lines(), 4);
        assert_eq!(report.first_invalid_line(), Some(3));
        // A record without names is summed under `-`.
        let rows = report.rows();
        assert_eq!((&*rows[1].team, &*rows[1].user, &*rows[1].model), ("-", "-", "-"));
        assert_eq!(report.total().input_tokens, 6);
    }

    #[test]
    fn ties_in_cost_sort_by_name() {
        let lines = vec![
            metered("2026-05-02T10:00:00.000Z", "red", "zed", "opus", [1, 0, 0, 0], 0.1),
            metered("2026-05-02T10:00:00.000Z", "red", "amy", "opus", [1, 0, 0, 0], 0.1),
            metered("2026-05-02T10:00:00.000Z", "blue", "zed", "opus", [1, 0, 0, 0], 0.1),
            metered("2026-05-02T10:00:00.000Z", "red", "amy", "haiku", [1, 0, 0, 0], 0.1),
        ];
        let report = read(filter("2026-05-01T00:00:00Z"), &lines);
        let names: Vec<String> = report.rows().iter().map(|r| format!("{}/{}/{}", r.team, r.user, r.model)).collect();
        assert_eq!(names, ["blue/zed/opus", "red/amy/haiku", "red/amy/opus", "red/zed/opus"]);
        let users: Vec<String> = report.rows_by_user().iter().map(|(t, u, _)| format!("{t}/{u}")).collect();
        assert_eq!(users, ["red/amy", "blue/zed", "red/zed"]);
    }

    #[test]
    fn renders_table_csv_and_json() {
        let lines = vec![
            metered("2026-05-02T10:00:00.000Z", "red", "alice", "opus", [1200, 340, 0, 50], 0.01235),
            metered("2026-05-02T10:00:00.000Z", "red", "alice", "haiku", [10, 2, 0, 0], 0.00004),
            metered("2026-05-02T10:00:00.000Z", "data,science", "b\"o\"b", "opus", [5, 5, 5, 5], 1.5),
            "oops".to_owned(),
        ];
        let report = read(Filter { team: None, user: None, since: at("2026-05-01T00:00:00Z") }, &lines);
        assert_eq!(
            report.render(Format::Table),
            "usage since 2026-05-01T00:00:00.000Z\n\
             TEAM          USER   REQUESTS  INPUT  OUTPUT  CACHE_WRITE  CACHE_READ  COST_USD\n\
             data,science  b\"o\"b         1      5       5            5           5    1.5000\n\
             red           alice         2   1210     342            0          50    0.0124\n\
             total                       3   1215     347            5          55    1.5124\n"
        );
        assert_eq!(
            report.render(Format::Csv),
            "team,user,model,requests,input_tokens,output_tokens,cache_creation_input_tokens,cache_read_input_tokens,cost_usd\n\
             \"data,science\",\"b\"\"o\"\"b\",opus,1,5,5,5,5,1.5000\n\
             red,alice,opus,1,1200,340,0,50,0.0124\n\
             red,alice,haiku,1,10,2,0,0,0.0000\n\
             total,,,3,1215,347,5,55,1.5124\n"
        );
        let json: serde_json::Value = serde_json::from_str(&report.render(Format::Json)).unwrap();
        assert_eq!(json["since"], "2026-05-01T00:00:00.000Z");
        assert_eq!(json["team"], serde_json::Value::Null);
        assert_eq!(json["invalid_lines"], 1);
        assert_eq!(json["rows"].as_array().unwrap().len(), 3);
        assert_eq!(
            json["rows"][1],
            serde_json::json!({"team": "red", "user": "alice", "model": "opus", "requests": 1, "input_tokens": 1200,
                "output_tokens": 340, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 50,
                "cost_usd": 0.01235})
        );
        assert_eq!(json["total"]["cost_usd"], 1.51239);
        assert_eq!(json["total"]["requests"], 3);
    }

    #[test]
    fn an_empty_window_still_has_a_header_and_a_total() {
        let filter =
            Filter { team: Some("red".into()), user: Some("al\nice".into()), since: at("2026-05-01T00:00:00Z") };
        let report = Report::new(filter);
        assert_eq!(
            report.render(Format::Table),
            "usage since 2026-05-01T00:00:00.000Z, team red, user al\\nice\n\
             TEAM   USER  REQUESTS  INPUT  OUTPUT  CACHE_WRITE  CACHE_READ  COST_USD\n\
             total               0      0       0            0           0    0.0000\n"
        );
        assert_eq!(report.render(Format::Csv).lines().last(), Some("total,,,0,0,0,0,0,0.0000"));
    }
}
