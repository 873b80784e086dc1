//! `tollgate sessions` and `GET /admin/sessions`: what each coding-assistant session did, read from the audit log
//! after the fact — its model requests, the tool calls their responses carried (`action` records) and how those
//! ended (`action_outcome` records). A session is a record's `session` (the client's `X-Claude-Code-Session-Id`);
//! a record without one is in no session. The file is read one line at a time: the listing keeps one summary per
//! session and user (at most `SESSIONS_LIMIT`), a timeline only its own session's records (at most
//! `TIMELINE_LIMIT`). Rotated files are read too (`report::each_series_line`). Nothing here but `list_series` and
//! `timeline_series` does I/O.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::audit::timestamp;
use crate::report::{self, Align, Filter, Format, Lines, Table, Tokens};

/// The window `tollgate sessions` and `/admin/sessions` list when not told otherwise.
pub const DEFAULT_SINCE: &str = "1d";

/// The most sessions a listing keeps; past it, the least recently active are left out (and counted).
pub const SESSIONS_LIMIT: usize = 100_000;

/// The most model requests and actions a timeline keeps (the first ones in the file); the rest are counted.
pub const TIMELINE_LIMIT: usize = 100_000;

/// The characters of a target (a command, a path, a URL) a table shows; JSON and CSV carry it whole.
pub const TARGET_WIDTH: usize = 60;

/// The characters of a client (its user agent) a table shows.
const CLIENT_WIDTH: usize = 40;

/// One session of one user as the listing shows it: the session's records in the window, summed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The `session` id.
    pub id: String,
    /// The records' `user`, `-` when none.
    pub user: String,
    /// The `team` of the session's latest record, `-` when none.
    pub team: String,
    /// The `user_agent` of the session's latest model request that carried one.
    pub client: Option<String>,
    pub first: SystemTime,
    pub last: SystemTime,
    /// Model requests (`intercepted`, `gateway` and `http` records).
    pub requests: u64,
    /// Tool calls (`action` records).
    pub actions: u64,
    /// Actions and model requests with `decision: deny`.
    pub denials: u64,
    /// Actions with `alert: true`.
    pub alerts: u64,
    /// The model requests' `cost_usd`, in micro-USD.
    pub cost_micro_usd: u64,
    /// The time of the request `client` was read from.
    client_at: SystemTime,
}

/// The session listing: one `Session` per session id and user, from the records `filter` admits.
#[derive(Debug)]
pub struct Listing {
    filter: Filter,
    limit: usize,
    /// Keyed by `session \0 user`, built in `key` so that a record of a known session allocates nothing.
    sessions: HashMap<String, Session>,
    key: String,
    not_shown: u64,
    without_session: u64,
    lines: Lines,
}

/// One line of a session's timeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Request(Request),
    Action(Action),
}

/// A model request of the timeline, from its `intercepted`, `gateway` or `http` record.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub at: SystemTime,
    pub id: String,
    pub user: String,
    pub model: Option<String>,
    pub status: Option<u16>,
    pub decision: String,
    pub tokens: Option<Tokens>,
    pub cost_micro_usd: Option<u64>,
    pub rule: Option<String>,
    pub error: Option<String>,
}

/// A tool call of the timeline, from its `action` record, with the outcome its `action_outcome` record gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    pub at: SystemTime,
    pub id: String,
    pub user: String,
    /// The `id` of the model request whose response carried the call.
    pub request: Option<String>,
    /// `file:read`, `bash:run`, … `tool:NAME`.
    pub action: String,
    pub tool: Option<String>,
    pub target: Option<String>,
    pub tool_use_id: Option<String>,
    pub decision: String,
    pub rule: Option<String>,
    pub alert: bool,
    pub would_deny: bool,
    /// `ran`, `failed` or `refused`; `None` while no later request has shown the call's result.
    pub outcome: Option<String>,
}

/// One session's timeline: its summary per user, and its model requests and actions in time order.
#[derive(Debug)]
pub struct Timeline {
    id: String,
    limit: usize,
    /// The session's summary: every record of the session, whatever its time.
    summary: Listing,
    entries: Vec<Entry>,
    not_shown: u64,
    /// `tool_use_id` → the first outcome seen for it.
    outcomes: HashMap<String, String>,
    lines: Lines,
}

/// Lists the sessions of the audit log at `paths`, line by line (`report::each_series_line`: rotated files too,
/// those rotated before the filter's start skipped).
pub fn list_series(paths: &[PathBuf], filter: Filter) -> std::io::Result<Listing> {
    let mut listing = Listing::new(filter);
    report::each_series_line(paths, listing.filter.since, |line| listing.add_line(line))?;
    listing.prune(listing.limit);
    Ok(listing)
}

/// The timeline of session `id` in the audit log at `paths`, every file of it read line by line (a session's
/// records may begin in any of them).
pub fn timeline_series(paths: &[PathBuf], id: &str) -> std::io::Result<Timeline> {
    let mut timeline = Timeline::new(id);
    report::each_series_line(paths, SystemTime::UNIX_EPOCH, |line| timeline.add_line(line))?;
    timeline.finish();
    Ok(timeline)
}

// ---- reading records -----------------------------------------------------------------------------------------

/// What a record is to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `intercepted`, `gateway`, `http`: a model request.
    Request,
    /// `action`: a tool call a response carried.
    Action,
    /// `action_outcome`: how a tool call ended.
    Outcome,
}

impl Kind {
    /// The kind of a record's `kind`; `None` for records that are in no session (`connect`, kinds to come).
    fn of(kind: &str) -> Option<Self> {
        match kind {
            "intercepted" | "gateway" | "http" => Some(Self::Request),
            "action" => Some(Self::Action),
            "action_outcome" => Some(Self::Outcome),
            _ => None,
        }
    }
}

/// The fields of an audit record that every sessions report reads; serde skips the others.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    session: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    team: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user_agent: Option<Cow<'a, str>>,
    #[serde(borrow)]
    decision: Option<Cow<'a, str>>,
    alert: Option<bool>,
    cost_usd: Option<f64>,
}

impl Head<'_> {
    /// The session id; an empty one is none.
    fn session(&self) -> Option<&str> {
        self.session.as_deref().filter(|session| !session.is_empty())
    }

    fn user(&self) -> &str {
        self.user.as_deref().unwrap_or("-")
    }

    fn team(&self) -> &str {
        self.team.as_deref().unwrap_or("-")
    }

    fn denied(&self) -> bool {
        self.decision.as_deref() == Some("deny")
    }
}

/// A record's head, when it is one a session can hold; `Err` for a line that is not an audit record.
fn head(line: &[u8]) -> Result<Option<(Kind, Head<'_>, SystemTime)>, ()> {
    let head = serde_json::from_slice::<Head>(line).map_err(|_| ())?;
    let Some(kind) = head.kind.as_deref().and_then(Kind::of) else { return Ok(None) };
    let at = report::parse_time(&head.ts).ok_or(())?;
    Ok(Some((kind, head, at)))
}

/// The fields a timeline shows beyond the head, of a model request, an action or an outcome.
#[derive(Deserialize)]
struct Detail {
    id: Option<String>,
    model: Option<String>,
    status: Option<u16>,
    usage: Option<Tokens>,
    rule: Option<String>,
    error: Option<String>,
    request: Option<String>,
    action: Option<String>,
    tool: Option<String>,
    target: Option<String>,
    tool_use_id: Option<String>,
    would_deny: Option<bool>,
    outcome: Option<String>,
}

// ---- the listing ---------------------------------------------------------------------------------------------

impl Session {
    fn new(id: &str, user: &str, team: &str, at: SystemTime) -> Self {
        Self {
            id: id.to_owned(),
            user: user.to_owned(),
            team: team.to_owned(),
            client: None,
            first: at,
            last: at,
            requests: 0,
            actions: 0,
            denials: 0,
            alerts: 0,
            cost_micro_usd: 0,
            client_at: SystemTime::UNIX_EPOCH,
        }
    }

    /// Counts one record of the session (the records may come in any order).
    fn add(&mut self, kind: Kind, head: &Head, at: SystemTime) {
        self.first = self.first.min(at);
        if at >= self.last {
            self.last = at;
            if self.team != head.team() {
                head.team().clone_into(&mut self.team);
            }
        }
        match kind {
            Kind::Request => {
                self.requests += 1;
                self.denials += u64::from(head.denied());
                let cost = report::micro_usd(head.cost_usd.unwrap_or(0.0));
                self.cost_micro_usd = self.cost_micro_usd.saturating_add(cost);
                if let Some(agent) = head.user_agent.as_deref().filter(|_| at >= self.client_at) {
                    self.client_at = at;
                    if self.client.as_deref() != Some(agent) {
                        self.client = Some(agent.to_owned());
                    }
                }
            }
            Kind::Action => {
                self.actions += 1;
                self.denials += u64::from(head.denied());
                self.alerts += u64::from(head.alert == Some(true));
            }
            Kind::Outcome => {}
        }
    }
}

impl Listing {
    /// An empty listing over `filter`.
    pub fn new(filter: Filter) -> Self {
        Self::with_limit(filter, SESSIONS_LIMIT)
    }

    fn with_limit(filter: Filter, limit: usize) -> Self {
        Self {
            filter,
            limit,
            sessions: HashMap::new(),
            key: String::new(),
            not_shown: 0,
            without_session: 0,
            lines: Lines::default(),
        }
    }

    /// Lists the sessions of every line of `reader`; only an I/O error stops it (a line that is not a record is
    /// counted).
    pub fn read(filter: Filter, reader: impl BufRead) -> std::io::Result<Self> {
        let mut listing = Self::new(filter);
        report::each_line(reader, |line| listing.add_line(line))?;
        listing.prune(listing.limit);
        Ok(listing)
    }

    /// Counts one line of the audit log: a model request, action or outcome the filter admits into its session; such
    /// a record without a session is counted apart. Other records are passed over; a line that is not a JSON audit
    /// record is counted as invalid.
    fn add_line(&mut self, line: &[u8]) {
        if !self.lines.next(line) {
            return;
        }
        let Ok(parsed) = head(line) else { return self.lines.invalid() };
        let Some((kind, head, at)) = parsed else { return };
        if !self.filter.admits(at, head.team(), head.user()) {
            return;
        }
        match head.session() {
            Some(session) => self.add(session, kind, &head, at),
            None => self.without_session += 1,
        }
    }

    /// Counts a record of `session`, keeping at most a quarter over `limit` sessions in between prunes.
    fn add(&mut self, session: &str, kind: Kind, head: &Head, at: SystemTime) {
        self.key.clear();
        self.key.push_str(session);
        self.key.push('\0');
        self.key.push_str(head.user());
        if let Some(summary) = self.sessions.get_mut(self.key.as_str()) {
            return summary.add(kind, head, at);
        }
        let mut summary = Session::new(session, head.user(), head.team(), at);
        summary.add(kind, head, at);
        self.sessions.insert(self.key.clone(), summary);
        if self.sessions.len() > self.limit.saturating_add(self.limit / 4) {
            self.prune(self.limit);
        }
    }

    /// Leaves out the least recently active sessions until `keep` remain. The audit log is written in time
    /// order, so those are the sessions least likely to have more records to come.
    fn prune(&mut self, keep: usize) {
        let Some(excess) = self.sessions.len().checked_sub(keep).filter(|excess| *excess > 0) else { return };
        let mut lasts: Vec<SystemTime> = self.sessions.values().map(|session| session.last).collect();
        let threshold = *lasts.select_nth_unstable(excess - 1).1;
        // Every session older than the threshold goes, then as many of those at it as are still over.
        self.sessions.retain(|_, session| session.last >= threshold);
        let mut over = self.sessions.len().saturating_sub(keep);
        self.sessions.retain(|_, session| {
            let remove = over > 0 && session.last == threshold;
            over -= usize::from(remove);
            !remove
        });
        self.not_shown += excess as u64;
    }

    /// The window, team and user the listing was read with.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// The sessions: the most recently active first, then by session id and user.
    pub fn sessions(&self) -> Vec<&Session> {
        let mut sessions: Vec<&Session> = self.sessions.values().collect();
        sessions.sort_by(|a, b| b.last.cmp(&a.last).then_with(|| (&a.id, &a.user).cmp(&(&b.id, &b.user))));
        sessions
    }

    /// Sessions left out because there were more than `SESSIONS_LIMIT`.
    pub fn not_shown(&self) -> u64 {
        self.not_shown
    }

    /// Model requests, actions and outcomes the filter admits that carry no session id.
    pub fn without_session(&self) -> u64 {
        self.without_session
    }

    /// Lines that are not a JSON audit record.
    pub fn invalid_lines(&self) -> u64 {
        self.lines.invalid_lines()
    }

    /// The 1-based number of the first invalid line.
    pub fn first_invalid_line(&self) -> Option<u64> {
        self.lines.first_invalid_line()
    }

    /// What a reader should know beyond the rows: sessions left out, records in no session.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.not_shown > 0 {
            notes.push(format!(
                "{} more sessions not shown: over {} in the window, the least recently active are left out; narrow \
                 the window, or filter by user or team",
                self.not_shown, self.limit
            ));
        }
        if self.without_session > 0 {
            let (records, carry, are) =
                if self.without_session == 1 { ("record", "carries", "is") } else { ("records", "carry", "are") };
            notes.push(format!(
                "{} {records} in the window {carry} no session id and {are} in no session",
                self.without_session
            ));
        }
        notes
    }

    /// The listing as text in `format`, ending with a newline.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => {
                let mut out = format!("sessions {}\n", self.filter.title());
                self.table(&mut out);
                for note in self.notes() {
                    out.push_str(&format!("({note})\n"));
                }
                out
            }
            Format::Csv => {
                let mut out = String::new();
                self.csv(&mut out);
                out
            }
            Format::Json => {
                let document = JsonListing {
                    since: timestamp(self.filter.since),
                    team: self.filter.team.as_deref(),
                    user: self.filter.user.as_deref(),
                    sessions: self.sessions().into_iter().map(JsonSession::from).collect(),
                    sessions_not_shown: self.not_shown,
                    records_without_session: self.without_session,
                    invalid_lines: self.invalid_lines(),
                };
                pretty(&document)
            }
        }
    }

    /// A header and one aligned row per session.
    fn table(&self, out: &mut String) {
        let mut table = Table::new(
            &[
                "SESSION", "USER", "TEAM", "CLIENT", "FIRST", "LAST", "REQUESTS", "ACTIONS", "DENIALS", "ALERTS",
                "COST_USD",
            ],
            &[
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Right,
            ],
        );
        for session in self.sessions() {
            table.row(vec![
                report::printable(&session.id),
                report::printable(&session.user),
                report::printable(&session.team),
                session
                    .client
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), |client| report::clipped(client, CLIENT_WIDTH)),
                timestamp(session.first),
                timestamp(session.last),
                session.requests.to_string(),
                session.actions.to_string(),
                session.denials.to_string(),
                session.alerts.to_string(),
                report::usd_4(session.cost_micro_usd),
            ]);
        }
        table.render(out);
    }

    /// A header row and one row per session; a session without a client has an empty one.
    fn csv(&self, out: &mut String) {
        out.push_str("session,user,team,client,first,last,requests,actions,denials,alerts,cost_usd\n");
        for session in self.sessions() {
            let fields = [
                session.id.clone(),
                session.user.clone(),
                session.team.clone(),
                session.client.clone().unwrap_or_default(),
                timestamp(session.first),
                timestamp(session.last),
                session.requests.to_string(),
                session.actions.to_string(),
                session.denials.to_string(),
                session.alerts.to_string(),
                report::usd_4(session.cost_micro_usd),
            ];
            report::csv_row(out, fields.iter().map(String::as_str));
        }
    }
}

// ---- the timeline --------------------------------------------------------------------------------------------

impl Timeline {
    /// An empty timeline of session `id`.
    pub fn new(id: &str) -> Self {
        Self::with_limit(id, TIMELINE_LIMIT)
    }

    fn with_limit(id: &str, limit: usize) -> Self {
        let everything = Filter { team: None, user: None, since: SystemTime::UNIX_EPOCH };
        Self {
            id: id.to_owned(),
            limit,
            summary: Listing::new(everything),
            entries: Vec::new(),
            not_shown: 0,
            outcomes: HashMap::new(),
            lines: Lines::default(),
        }
    }

    /// The timeline of session `id` in every line of `reader`; only an I/O error stops it.
    pub fn read(id: &str, reader: impl BufRead) -> std::io::Result<Self> {
        let mut timeline = Self::new(id);
        report::each_line(reader, |line| timeline.add_line(line))?;
        timeline.finish();
        Ok(timeline)
    }

    /// Keeps one line of the audit log when it is a record of this session.
    fn add_line(&mut self, line: &[u8]) {
        if !self.lines.next(line) {
            return;
        }
        let Ok(parsed) = head(line) else { return self.lines.invalid() };
        let Some((kind, head, at)) = parsed else { return };
        if head.session() != Some(self.id.as_str()) {
            return;
        }
        let Ok(detail) = serde_json::from_slice::<Detail>(line) else { return self.lines.invalid() };
        self.summary.add(&self.id, kind, &head, at);
        let user = head.user().to_owned();
        let decision = head.decision.as_deref().unwrap_or("-").to_owned();
        let entry = match kind {
            Kind::Outcome => {
                if let (Some(tool_use_id), Some(outcome)) = (detail.tool_use_id, detail.outcome) {
                    if self.outcomes.len() < self.limit {
                        self.outcomes.entry(tool_use_id).or_insert(outcome);
                    }
                }
                return;
            }
            Kind::Request => Entry::Request(Request {
                at,
                id: detail.id.unwrap_or_default(),
                user,
                model: detail.model,
                status: detail.status,
                decision,
                tokens: detail.usage,
                cost_micro_usd: head.cost_usd.map(report::micro_usd),
                rule: detail.rule,
                error: detail.error,
            }),
            Kind::Action => Entry::Action(Action {
                at,
                id: detail.id.unwrap_or_default(),
                user,
                request: detail.request,
                action: detail.action.unwrap_or_else(|| "-".to_owned()),
                tool: detail.tool,
                target: detail.target,
                tool_use_id: detail.tool_use_id,
                decision,
                rule: detail.rule,
                alert: head.alert == Some(true),
                would_deny: detail.would_deny == Some(true),
                outcome: None,
            }),
        };
        if self.entries.len() < self.limit {
            self.entries.push(entry);
        } else {
            self.not_shown += 1;
        }
    }

    /// Puts the entries in time order (the file's order among equal times) and joins each action to its outcome.
    fn finish(&mut self) {
        self.entries.sort_by_key(Entry::at);
        for entry in &mut self.entries {
            if let Entry::Action(action) = entry {
                action.outcome = action.tool_use_id.as_ref().and_then(|id| self.outcomes.get(id)).cloned();
            }
        }
    }

    /// The session id asked for.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the file holds any record of the session.
    pub fn found(&self) -> bool {
        !self.summary.sessions.is_empty()
    }

    /// The session's summary per user (one, unless several users sent the same session id).
    pub fn sessions(&self) -> Vec<&Session> {
        self.summary.sessions()
    }

    /// The model requests and actions, in time order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Model requests and actions left out because there were more than `TIMELINE_LIMIT`.
    pub fn not_shown(&self) -> u64 {
        self.not_shown
    }

    /// Lines that are not a JSON audit record.
    pub fn invalid_lines(&self) -> u64 {
        self.lines.invalid_lines()
    }

    /// The 1-based number of the first invalid line.
    pub fn first_invalid_line(&self) -> Option<u64> {
        self.lines.first_invalid_line()
    }

    /// What a reader should know beyond the entries: those left out.
    pub fn notes(&self) -> Vec<String> {
        if self.not_shown == 0 {
            return Vec::new();
        }
        vec![format!(
            "timeline cut at {} entries: {} later model requests and actions not shown",
            self.limit, self.not_shown
        )]
    }

    /// The timeline as text in `format`, ending with a newline.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.table(),
            Format::Csv => self.csv(),
            Format::Json => {
                let document = JsonTimeline {
                    session: &self.id,
                    sessions: self.sessions().into_iter().map(JsonSession::from).collect(),
                    entries: self.entries.iter().map(JsonEntry::from).collect(),
                    entries_not_shown: self.not_shown,
                    invalid_lines: self.invalid_lines(),
                };
                pretty(&document)
            }
        }
    }

    /// `session ID`, the session's row as the listing shows it, then one aligned row per entry.
    fn table(&self) -> String {
        let mut out = format!("session {}\n", report::printable(&self.id));
        self.summary.table(&mut out);
        out.push('\n');
        let mut table = Table::new(
            &["TIME", "ENTRY", "WHAT", "TOOL", "TARGET", "DECISION", "RESULT", "INPUT", "OUTPUT", "COST_USD", "NOTE"],
            &[
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Left,
                Align::Right,
                Align::Right,
                Align::Right,
                Align::Left,
            ],
        );
        let text = |field: &Option<String>| field.as_deref().map(report::printable).unwrap_or_default();
        for entry in &self.entries {
            let row = match entry {
                Entry::Request(request) => {
                    let mut note = Vec::new();
                    if request.decision == "deny" {
                        note.extend(request.rule.as_deref().map(|rule| format!("rule {}", report::printable(rule))));
                    }
                    note.extend(request.error.as_deref().map(report::printable));
                    vec![
                        timestamp(request.at),
                        "request".to_owned(),
                        request.model.as_deref().map_or_else(|| "-".to_owned(), report::printable),
                        String::new(),
                        String::new(),
                        report::printable(&request.decision),
                        request.status.map(|status| status.to_string()).unwrap_or_default(),
                        request.tokens.map(|t| t.input_tokens.to_string()).unwrap_or_default(),
                        request.tokens.map(|t| t.output_tokens.to_string()).unwrap_or_default(),
                        request.cost_micro_usd.map(report::usd_4).unwrap_or_default(),
                        note.join("; "),
                    ]
                }
                Entry::Action(action) => {
                    let mut note = Vec::new();
                    note.extend(action.rule.as_deref().map(|rule| format!("rule {}", report::printable(rule))));
                    if action.alert {
                        note.push("alert".to_owned());
                    }
                    if action.would_deny {
                        note.push("would deny".to_owned());
                    }
                    vec![
                        timestamp(action.at),
                        "action".to_owned(),
                        report::printable(&action.action),
                        text(&action.tool),
                        action
                            .target
                            .as_deref()
                            .map(|target| report::clipped(target, TARGET_WIDTH))
                            .unwrap_or_default(),
                        report::printable(&action.decision),
                        action.outcome().to_owned(),
                        String::new(),
                        String::new(),
                        String::new(),
                        note.join("; "),
                    ]
                }
            };
            table.row(row);
        }
        table.render(&mut out);
        for note in self.notes() {
            out.push_str(&format!("({note})\n"));
        }
        out
    }

    /// A header row and one row per entry; fields that do not apply to the entry are empty.
    fn csv(&self) -> String {
        let mut out = String::from(
            "ts,entry,id,user,model,status,decision,input_tokens,output_tokens,cache_creation_input_tokens,\
             cache_read_input_tokens,cost_usd,request,action,tool,target,tool_use_id,rule,alert,would_deny,outcome,\
             error\n",
        );
        let text = |field: &Option<String>| field.clone().unwrap_or_default();
        for entry in &self.entries {
            let fields: [String; 22] = match entry {
                Entry::Request(request) => {
                    let tokens = |count: fn(&Tokens) -> u64| request.tokens.as_ref().map(count).map(|n| n.to_string());
                    [
                        timestamp(request.at),
                        "request".to_owned(),
                        request.id.clone(),
                        request.user.clone(),
                        text(&request.model),
                        request.status.map(|status| status.to_string()).unwrap_or_default(),
                        request.decision.clone(),
                        tokens(|t| t.input_tokens).unwrap_or_default(),
                        tokens(|t| t.output_tokens).unwrap_or_default(),
                        tokens(|t| t.cache_creation_input_tokens).unwrap_or_default(),
                        tokens(|t| t.cache_read_input_tokens).unwrap_or_default(),
                        request.cost_micro_usd.map(report::usd_4).unwrap_or_default(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        text(&request.rule),
                        String::new(),
                        String::new(),
                        String::new(),
                        text(&request.error),
                    ]
                }
                Entry::Action(action) => [
                    timestamp(action.at),
                    "action".to_owned(),
                    action.id.clone(),
                    action.user.clone(),
                    String::new(),
                    String::new(),
                    action.decision.clone(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    text(&action.request),
                    action.action.clone(),
                    text(&action.tool),
                    text(&action.target),
                    text(&action.tool_use_id),
                    text(&action.rule),
                    action.alert.to_string(),
                    action.would_deny.to_string(),
                    action.outcome().to_owned(),
                    String::new(),
                ],
            };
            report::csv_row(&mut out, fields.iter().map(String::as_str));
        }
        out
    }
}

impl Entry {
    /// When the request started or the call was seen.
    pub fn at(&self) -> SystemTime {
        match self {
            Entry::Request(request) => request.at,
            Entry::Action(action) => action.at,
        }
    }
}

impl Action {
    /// The outcome, or `pending` while none has been seen.
    pub fn outcome(&self) -> &str {
        self.outcome.as_deref().unwrap_or("pending")
    }
}

// ---- JSON ----------------------------------------------------------------------------------------------------

fn pretty(document: &impl Serialize) -> String {
    let mut text = serde_json::to_string_pretty(document).expect("a report of strings and numbers serialises");
    text.push('\n');
    text
}

#[derive(Serialize)]
struct JsonListing<'a> {
    since: String,
    team: Option<&'a str>,
    user: Option<&'a str>,
    sessions: Vec<JsonSession<'a>>,
    sessions_not_shown: u64,
    records_without_session: u64,
    invalid_lines: u64,
}

#[derive(Serialize)]
struct JsonSession<'a> {
    session: &'a str,
    user: &'a str,
    team: &'a str,
    client: Option<&'a str>,
    first: String,
    last: String,
    requests: u64,
    actions: u64,
    denials: u64,
    alerts: u64,
    cost_usd: f64,
}

impl<'a> From<&'a Session> for JsonSession<'a> {
    fn from(session: &'a Session) -> Self {
        Self {
            session: &session.id,
            user: &session.user,
            team: &session.team,
            client: session.client.as_deref(),
            first: timestamp(session.first),
            last: timestamp(session.last),
            requests: session.requests,
            actions: session.actions,
            denials: session.denials,
            alerts: session.alerts,
            cost_usd: report::usd(session.cost_micro_usd),
        }
    }
}

#[derive(Serialize)]
struct JsonTimeline<'a> {
    session: &'a str,
    sessions: Vec<JsonSession<'a>>,
    entries: Vec<JsonEntry<'a>>,
    entries_not_shown: u64,
    invalid_lines: u64,
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonEntry<'a> {
    Request {
        ts: String,
        entry: &'static str,
        id: &'a str,
        user: &'a str,
        model: Option<&'a str>,
        status: Option<u16>,
        decision: &'a str,
        usage: Option<Tokens>,
        cost_usd: Option<f64>,
        rule: Option<&'a str>,
        error: Option<&'a str>,
    },
    Action {
        ts: String,
        entry: &'static str,
        id: &'a str,
        user: &'a str,
        request: Option<&'a str>,
        action: &'a str,
        tool: Option<&'a str>,
        target: Option<&'a str>,
        tool_use_id: Option<&'a str>,
        decision: &'a str,
        rule: Option<&'a str>,
        alert: bool,
        would_deny: bool,
        outcome: &'a str,
    },
}

impl<'a> From<&'a Entry> for JsonEntry<'a> {
    fn from(entry: &'a Entry) -> Self {
        match entry {
            Entry::Request(request) => JsonEntry::Request {
                ts: timestamp(request.at),
                entry: "request",
                id: &request.id,
                user: &request.user,
                model: request.model.as_deref(),
                status: request.status,
                decision: &request.decision,
                usage: request.tokens,
                cost_usd: request.cost_micro_usd.map(report::usd),
                rule: request.rule.as_deref(),
                error: request.error.as_deref(),
            },
            Entry::Action(action) => JsonEntry::Action {
                ts: timestamp(action.at),
                entry: "action",
                id: &action.id,
                user: &action.user,
                request: action.request.as_deref(),
                action: &action.action,
                tool: action.tool.as_deref(),
                target: action.target.as_deref(),
                tool_use_id: action.tool_use_id.as_deref(),
                decision: &action.decision,
                rule: action.rule.as_deref(),
                alert: action.alert,
                would_deny: action.would_deny,
                outcome: action.outcome(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    fn since(text: &str) -> Filter {
        Filter { team: None, user: None, since: at(text) }
    }

    /// A model request as `request::finish` writes it, with the session fields (and the chain fields).
    fn request(ts: &str, session: Option<&str>, user: &str, agent: Option<&str>, decision: &str, cost: f64) -> Value {
        let mut record = json!({
            "ts": ts, "id": format!("req-{ts}"), "kind": "gateway", "listener": "gateway", "client": "10.0.0.1:5000",
            "user": user, "team": "red", "method": "POST", "host": "api.anthropic.com", "port": 443,
            "path": "/v1/messages", "decision": decision, "rule": if decision == "deny" { json!("budget.team.red.daily") } else { Value::Null },
            "status": if decision == "deny" { 429 } else { 200 }, "bytes_up": 10, "bytes_down": 20, "duration_ms": 5,
            "upstream": "api.anthropic.com", "model": "claude-sonnet-4-5",
            "usage": {"input_tokens": 100, "output_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 900},
            "cost_usd": cost, "error": if decision == "deny" { json!("daily budget exceeded") } else { Value::Null },
            "prev": "00", "hash": "11"
        });
        if decision == "deny" {
            let map = record.as_object_mut().unwrap();
            map.remove("usage");
            map.remove("cost_usd");
        }
        if let Some(session) = session {
            record["session"] = json!(session);
        }
        if let Some(agent) = agent {
            record["user_agent"] = json!(agent);
        }
        record
    }

    /// A tool call: `flags` may hold `alert` and `would_deny`.
    fn action(
        ts: &str,
        session: &str,
        user: &str,
        tool_use_id: &str,
        call: [&str; 3],
        decision: &str,
        flags: &[&str],
    ) -> Value {
        let mut record = json!({
            "ts": ts, "id": format!("act-{tool_use_id}"), "kind": "action", "listener": "gateway",
            "client": "10.0.0.1:5000", "user": user, "team": "red", "session": session, "request": "req-1",
            "model": "claude-sonnet-4-5", "action": call[0], "tool": call[1], "target": call[2],
            "tool_use_id": tool_use_id, "decision": decision,
            "rule": if decision == "deny" { json!("actions.deny[0]") } else { Value::Null },
        });
        for flag in flags {
            record[*flag] = json!(true);
        }
        record
    }

    fn outcome(ts: &str, session: &str, user: &str, tool_use_id: &str, outcome: &str) -> Value {
        json!({
            "ts": ts, "id": format!("out-{tool_use_id}"), "kind": "action_outcome", "user": user, "team": "red",
            "session": session, "request": "req-2", "tool_use_id": tool_use_id, "action": "bash:run", "tool": "Bash",
            "target": "ls", "outcome": outcome,
        })
    }

    fn text(lines: &[Value]) -> String {
        lines.iter().map(|line| format!("{line}\n")).collect()
    }

    fn list(filter: Filter, lines: &[Value]) -> Listing {
        Listing::read(filter, text(lines).as_bytes()).unwrap()
    }

    /// (id, user, team, client, requests, actions, denials, alerts, cost)
    type Row<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, u64, u64, u64, u64, u64);

    fn rows(listing: &Listing) -> Vec<Row<'_>> {
        listing
            .sessions()
            .into_iter()
            .map(|s| {
                let client = s.client.as_deref();
                (&*s.id, &*s.user, &*s.team, client, s.requests, s.actions, s.denials, s.alerts, s.cost_micro_usd)
            })
            .collect()
    }

    #[test]
    fn sums_each_session_and_sorts_by_last_activity() {
        let mut late_team = request("2026-05-02T10:05:00.000Z", Some("s1"), "alice", None, "allow", 0.001);
        late_team["team"] = json!("blue");
        let lines = vec![
            request("2026-05-02T10:00:00.000Z", Some("s1"), "alice", Some("claude-cli/2.1.300"), "allow", 0.0125),
            action("2026-05-02T10:00:02.000Z", "s1", "alice", "t1", ["bash:run", "Bash", "ls"], "allow", &[]),
            action("2026-05-02T10:00:02.000Z", "s1", "alice", "t2", ["file:read", "Read", ".env"], "allow", &["alert"]),
            action("2026-05-02T10:00:03.000Z", "s1", "alice", "t3", ["bash:run", "Bash", "curl x"], "deny", &[]),
            outcome("2026-05-02T10:01:00.000Z", "s1", "alice", "t1", "ran"),
            // A later request with a newer client, then an earlier one written late (replicas): the newest wins.
            request("2026-05-02T10:02:00.000Z", Some("s1"), "alice", Some("claude-cli/2.1.332"), "deny", 0.0),
            request("2026-05-02T10:01:30.000Z", Some("s1"), "alice", Some("claude-cli/2.1.299"), "allow", 0.0005),
            late_team,
            request("2026-05-02T11:00:00.000Z", Some("s2"), "bob", None, "allow", 0.5),
            action(
                "2026-05-02T09:00:00.000Z",
                "s3",
                "carol",
                "t9",
                ["web:fetch", "WebFetch", "https://x"],
                "allow",
                &["would_deny"],
            ),
            // Not in any session: counted apart. Not a session's kind: passed over.
            request("2026-05-02T12:00:00.000Z", None, "dave", Some("curl/8"), "allow", 1.0),
            json!({"ts": "2026-05-02T12:00:00.000Z", "kind": "connect", "user": "dave", "session": "s4", "decision": "allow"}),
            // An empty session id is none.
            request("2026-05-02T12:00:01.000Z", Some(""), "dave", None, "allow", 1.0),
            // Before the window.
            request("2026-04-30T10:00:00.000Z", Some("s0"), "alice", None, "allow", 9.0),
        ];
        let listing = list(since("2026-05-01T00:00:00Z"), &lines);
        assert_eq!(
            rows(&listing),
            vec![
                ("s2", "bob", "red", None, 1, 0, 0, 0, 500_000),
                ("s1", "alice", "blue", Some("claude-cli/2.1.332"), 4, 3, 2, 1, 14_000),
                ("s3", "carol", "red", None, 0, 1, 0, 0, 0),
            ]
        );
        let s1 = listing.sessions()[1];
        assert_eq!((s1.first, s1.last), (at("2026-05-02T10:00:00Z"), at("2026-05-02T10:05:00Z")));
        assert_eq!((listing.without_session(), listing.invalid_lines(), listing.not_shown()), (2, 0, 0));
        assert!(!Timeline::read("", text(&lines).as_bytes()).unwrap().found());
    }

    #[test]
    fn filters_by_user_team_and_time() {
        let mut blue = request("2026-05-02T10:00:00.000Z", Some("s2"), "bob", None, "allow", 0.1);
        blue["team"] = json!("blue");
        let lines = vec![
            request("2026-05-02T10:00:00.000Z", Some("s1"), "alice", None, "allow", 0.1),
            action("2026-05-03T10:00:00.000Z", "s1", "alice", "t1", ["bash:run", "Bash", "ls"], "allow", &[]),
            blue,
        ];
        let ids = |filter: Filter| -> Vec<String> {
            list(filter, &lines).sessions().iter().map(|s| format!("{}/{}", s.id, s.actions)).collect()
        };
        assert_eq!(ids(since("2026-05-01T00:00:00Z")), ["s1/1", "s2/0"]);
        assert_eq!(ids(Filter { user: Some("alice".into()), ..since("2026-05-01T00:00:00Z") }), ["s1/1"]);
        assert_eq!(ids(Filter { team: Some("blue".into()), ..since("2026-05-01T00:00:00Z") }), ["s2/0"]);
        assert_eq!(ids(since("2026-05-03T00:00:00Z")), ["s1/1"]);
        assert!(ids(Filter { user: Some("mallory".into()), ..since("2026-05-01T00:00:00Z") }).is_empty());
    }

    #[test]
    fn one_session_id_sent_by_two_users_is_two_rows() {
        let lines = vec![
            request("2026-05-02T10:00:00.000Z", Some("shared"), "alice", None, "allow", 0.1),
            request("2026-05-02T10:01:00.000Z", Some("shared"), "mallory", None, "allow", 0.2),
        ];
        let listing = list(since("2026-05-01T00:00:00Z"), &lines);
        let users: Vec<&str> = listing.sessions().iter().map(|s| &*s.user).collect();
        assert_eq!(users, ["mallory", "alice"]);
        let timeline = Timeline::read("shared", text(&lines).as_bytes()).unwrap();
        assert_eq!(timeline.sessions().len(), 2);
        assert_eq!(timeline.entries().len(), 2);
    }

    #[test]
    fn counts_lines_that_are_not_records() {
        let mut bad_type =
            action("2026-05-02T10:00:00.000Z", "s1", "alice", "t1", ["bash:run", "Bash", "ls"], "allow", &[]);
        bad_type["alert"] = json!("yes");
        let mut bad_time = request("2026-05-02T10:00:00.000Z", Some("s1"), "alice", None, "allow", 0.1);
        bad_time["ts"] = json!("last tuesday");
        let mut text =
            text(&[request("2026-05-02T10:00:00.000Z", Some("s1"), "alice", None, "allow", 0.1), bad_type, bad_time]);
        text.push_str("\n   \n{\"ts\":\"2026-05-02T10:00:01.000Z\",\"kind\":\"act");
        let listing = Listing::read(since("2026-05-01T00:00:00Z"), text.as_bytes()).unwrap();
        assert_eq!((listing.invalid_lines(), listing.first_invalid_line()), (3, Some(2)));
        assert_eq!(listing.sessions()[0].requests, 1);
        let timeline = Timeline::read("s1", text.as_bytes()).unwrap();
        assert_eq!((timeline.invalid_lines(), timeline.first_invalid_line()), (3, Some(2)));
    }

    #[test]
    fn past_the_limit_the_least_recently_active_sessions_are_left_out() {
        let mut listing = Listing::with_limit(since("2026-05-01T00:00:00Z"), 4);
        // Ten sessions of one request a minute apart, and one that is active between each of them.
        let mut lines = vec![request("2026-05-02T10:00:00.000Z", Some("busy"), "alice", None, "allow", 0.0)];
        for minute in 1..=10 {
            lines.push(request(
                &format!("2026-05-02T10:{minute:02}:00.000Z"),
                Some(&format!("s{minute}")),
                "bob",
                None,
                "allow",
                0.0,
            ));
            let ts = format!("2026-05-02T10:{minute:02}:30.000Z");
            lines.push(request(&ts, Some("busy"), "alice", None, "allow", 0.0));
        }
        for line in text(&lines).lines() {
            listing.add_line(line.as_bytes());
        }
        listing.prune(listing.limit);
        let ids: Vec<&str> = listing.sessions().iter().map(|s| &*s.id).collect();
        assert_eq!(ids, ["busy", "s10", "s9", "s8"]);
        assert_eq!(listing.not_shown(), 7);
        assert_eq!(listing.sessions()[0].requests, 11, "a session kept throughout keeps its counts");
        assert!(
            listing.notes()[0].starts_with("7 more sessions not shown: over 4 in the window"),
            "{:?}",
            listing.notes()
        );
    }

    #[test]
    fn pruning_leaves_out_exactly_the_excess_among_equal_times() {
        let mut listing = Listing::with_limit(since("2026-05-01T00:00:00Z"), 100);
        let lines: Vec<Value> = (0..6)
            .map(|n| {
                request(
                    if n < 4 { "2026-05-02T10:00:00.000Z" } else { "2026-05-02T11:00:00.000Z" },
                    Some(&format!("s{n}")),
                    "bob",
                    None,
                    "allow",
                    0.0,
                )
            })
            .collect();
        for line in text(&lines).lines() {
            listing.add_line(line.as_bytes());
        }
        listing.prune(3);
        let ids: Vec<&str> = listing.sessions().iter().map(|s| &*s.id).collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(&ids[..2], ["s4", "s5"]);
        assert_eq!(listing.not_shown(), 3);
    }

    fn timeline_lines() -> Vec<Value> {
        vec![
            request("2026-05-02T10:00:00.000Z", Some("s1"), "alice", Some("claude-cli/2.1.332"), "allow", 0.0125),
            // The outcome of t1 is written before the action record (another replica): still joined.
            outcome("2026-05-02T10:00:09.000Z", "s1", "alice", "t1", "ran"),
            action(
                "2026-05-02T10:00:02.000Z",
                "s1",
                "alice",
                "t1",
                ["file:read", "Read", "/repo/src/main.rs"],
                "allow",
                &[],
            ),
            action(
                "2026-05-02T10:00:02.000Z",
                "s1",
                "alice",
                "t2",
                ["bash:run", "Bash", "curl -s https://example.com/install.sh, then \"sh\"\nrm -rf /tmp/build"],
                "deny",
                &[],
            ),
            action(
                "2026-05-02T10:00:03.000Z",
                "s1",
                "alice",
                "t3",
                ["file:read", "Read", "/repo/.env"],
                "allow",
                &["alert"],
            ),
            outcome("2026-05-02T10:00:09.000Z", "s1", "alice", "t2", "refused"),
            // Only the first outcome of a call counts.
            outcome("2026-05-02T10:00:20.000Z", "s1", "alice", "t2", "ran"),
            request("2026-05-02T10:00:09.000Z", Some("s1"), "alice", Some("claude-cli/2.1.332"), "deny", 0.0),
            // Another session's records are not kept.
            action("2026-05-02T10:00:04.000Z", "s2", "bob", "t1", ["bash:run", "Bash", "make"], "allow", &[]),
            outcome("2026-05-02T10:00:05.000Z", "s2", "bob", "t3", "failed"),
        ]
    }

    #[test]
    fn a_timeline_orders_entries_and_joins_outcomes() {
        let timeline = Timeline::read("s1", text(&timeline_lines()).as_bytes()).unwrap();
        assert!(timeline.found());
        let entries: Vec<String> = timeline
            .entries()
            .iter()
            .map(|entry| match entry {
                Entry::Request(r) => format!("{} request {} {:?}", timestamp(r.at), r.decision, r.status),
                Entry::Action(a) => format!("{} {} {} {}", timestamp(a.at), a.action, a.decision, a.outcome()),
            })
            .collect();
        assert_eq!(
            entries,
            [
                "2026-05-02T10:00:00.000Z request allow Some(200)",
                "2026-05-02T10:00:02.000Z file:read allow ran",
                "2026-05-02T10:00:02.000Z bash:run deny refused",
                "2026-05-02T10:00:03.000Z file:read allow pending",
                "2026-05-02T10:00:09.000Z request deny Some(429)",
            ]
        );
        let summary = timeline.sessions();
        assert_eq!((summary[0].requests, summary[0].actions, summary[0].denials, summary[0].alerts), (2, 3, 2, 1));
        assert_eq!(summary[0].last, at("2026-05-02T10:00:20Z"), "outcomes are activity too");
        assert!(!Timeline::read("s9", text(&timeline_lines()).as_bytes()).unwrap().found());
    }

    #[test]
    fn a_timeline_past_its_limit_keeps_the_first_entries() {
        let mut timeline = Timeline::with_limit("s1", 3);
        for line in text(&timeline_lines()).lines() {
            timeline.add_line(line.as_bytes());
        }
        timeline.finish();
        assert_eq!(timeline.entries().len(), 3);
        assert_eq!(timeline.not_shown(), 2);
        assert_eq!(timeline.sessions()[0].actions, 3, "the summary counts every record");
        assert_eq!(timeline.notes(), ["timeline cut at 3 entries: 2 later model requests and actions not shown"]);
        assert!(timeline
            .render(Format::Table)
            .ends_with("(timeline cut at 3 entries: 2 later model requests and actions not shown)\n"));
        assert_eq!(serde_json::from_str::<Value>(&timeline.render(Format::Json)).unwrap()["entries_not_shown"], 2);
    }

    #[test]
    fn renders_the_listing_as_table_csv_and_json() {
        let lines = vec![
            request("2026-05-02T10:00:00.000Z", Some("s1"), "alice", Some("claude-cli/2.1.332"), "allow", 0.0125),
            action("2026-05-02T10:00:02.000Z", "s1", "alice", "t3", ["bash:run", "Bash", "curl x"], "deny", &["alert"]),
            request("2026-05-02T11:00:00.000Z", Some("s,2"), "b\"o\"b", None, "allow", 1.5),
            request("2026-05-02T12:00:00.000Z", None, "dave", None, "allow", 1.0),
            request("2026-05-02T12:00:01.000Z", None, "dave", None, "allow", 1.0),
        ];
        let listing = list(Filter { team: Some("red".into()), ..since("2026-05-01T00:00:00Z") }, &lines);
        assert_eq!(
            listing.render(Format::Table),
            "sessions since 2026-05-01T00:00:00.000Z, team red\n\
             SESSION  USER   TEAM  CLIENT              FIRST                     LAST                      REQUESTS  ACTIONS  DENIALS  ALERTS  COST_USD\n\
             s,2      b\"o\"b  red   -                   2026-05-02T11:00:00.000Z  2026-05-02T11:00:00.000Z         1        0        0       0    1.5000\n\
             s1       alice  red   claude-cli/2.1.332  2026-05-02T10:00:00.000Z  2026-05-02T10:00:02.000Z         1        1        1       1    0.0125\n\
             (2 records in the window carry no session id and are in no session)\n"
        );
        assert_eq!(
            listing.render(Format::Csv),
            "session,user,team,client,first,last,requests,actions,denials,alerts,cost_usd\n\
             \"s,2\",\"b\"\"o\"\"b\",red,,2026-05-02T11:00:00.000Z,2026-05-02T11:00:00.000Z,1,0,0,0,1.5000\n\
             s1,alice,red,claude-cli/2.1.332,2026-05-02T10:00:00.000Z,2026-05-02T10:00:02.000Z,1,1,1,1,0.0125\n"
        );
        let json: Value = serde_json::from_str(&listing.render(Format::Json)).unwrap();
        assert_eq!(
            json,
            json!({
                "since": "2026-05-01T00:00:00.000Z", "team": "red", "user": null,
                "sessions": [
                    {"session": "s,2", "user": "b\"o\"b", "team": "red", "client": null,
                     "first": "2026-05-02T11:00:00.000Z", "last": "2026-05-02T11:00:00.000Z",
                     "requests": 1, "actions": 0, "denials": 0, "alerts": 0, "cost_usd": 1.5},
                    {"session": "s1", "user": "alice", "team": "red", "client": "claude-cli/2.1.332",
                     "first": "2026-05-02T10:00:00.000Z", "last": "2026-05-02T10:00:02.000Z",
                     "requests": 1, "actions": 1, "denials": 1, "alerts": 1, "cost_usd": 0.0125},
                ],
                "sessions_not_shown": 0, "records_without_session": 2, "invalid_lines": 0,
            })
        );
    }

    #[test]
    fn renders_the_timeline_as_table_csv_and_json() {
        let timeline = Timeline::read("s1", text(&timeline_lines()).as_bytes()).unwrap();
        assert_eq!(
            timeline.render(Format::Table),
            "session s1\n\
             SESSION  USER   TEAM  CLIENT              FIRST                     LAST                      REQUESTS  ACTIONS  DENIALS  ALERTS  COST_USD\n\
             s1       alice  red   claude-cli/2.1.332  2026-05-02T10:00:00.000Z  2026-05-02T10:00:20.000Z         2        3        2       1    0.0125\n\
             \n\
             TIME                      ENTRY    WHAT               TOOL  TARGET                                                        DECISION  RESULT   INPUT  OUTPUT  COST_USD  NOTE\n\
             2026-05-02T10:00:00.000Z  request  claude-sonnet-4-5                                                                      allow     200        100      20    0.0125\n\
             2026-05-02T10:00:02.000Z  action   file:read          Read  /repo/src/main.rs                                             allow     ran\n\
             2026-05-02T10:00:02.000Z  action   bash:run           Bash  curl -s https://example.com/install.sh, then \"sh\"\\nrm -rf /…  deny      refused                           rule actions.deny[0]\n\
             2026-05-02T10:00:03.000Z  action   file:read          Read  /repo/.env                                                    allow     pending                           alert\n\
             2026-05-02T10:00:09.000Z  request  claude-sonnet-4-5                                                                      deny      429                               rule budget.team.red.daily; daily budget exceeded\n"
        );
        let csv = timeline.render(Format::Csv);
        let mut csv_lines = csv.split_inclusive('\n');
        assert_eq!(
            csv_lines.next(),
            Some("ts,entry,id,user,model,status,decision,input_tokens,output_tokens,cache_creation_input_tokens,cache_read_input_tokens,cost_usd,request,action,tool,target,tool_use_id,rule,alert,would_deny,outcome,error\n")
        );
        assert_eq!(
            csv_lines.next(),
            Some("2026-05-02T10:00:00.000Z,request,req-2026-05-02T10:00:00.000Z,alice,claude-sonnet-4-5,200,allow,100,20,0,900,0.0125,,,,,,,,,,\n")
        );
        assert_eq!(
            csv_lines.next(),
            Some("2026-05-02T10:00:02.000Z,action,act-t1,alice,,,allow,,,,,,req-1,file:read,Read,/repo/src/main.rs,t1,,false,false,ran,\n")
        );
        // The whole command, quoted: its comma, its quotes and its line break.
        assert!(
            csv.contains(",req-1,bash:run,Bash,\"curl -s https://example.com/install.sh, then \"\"sh\"\"\nrm -rf /tmp/build\",t2,actions.deny[0],false,false,refused,\n"),
            "{csv}"
        );
        assert!(csv.ends_with(",request,req-2026-05-02T10:00:09.000Z,alice,claude-sonnet-4-5,429,deny,,,,,,,,,,,budget.team.red.daily,,,,daily budget exceeded\n"), "{csv}");
        let json: Value = serde_json::from_str(&timeline.render(Format::Json)).unwrap();
        assert_eq!(json["session"], "s1");
        assert_eq!(json["sessions"].as_array().unwrap().len(), 1);
        assert_eq!(json["entries_not_shown"], 0);
        assert_eq!(
            json["entries"][0],
            json!({"ts": "2026-05-02T10:00:00.000Z", "entry": "request", "id": "req-2026-05-02T10:00:00.000Z",
                   "user": "alice", "model": "claude-sonnet-4-5", "status": 200, "decision": "allow",
                   "usage": {"input_tokens": 100, "output_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 900},
                   "cost_usd": 0.0125, "rule": null, "error": null})
        );
        assert_eq!(
            json["entries"][2],
            json!({"ts": "2026-05-02T10:00:02.000Z", "entry": "action", "id": "act-t2", "user": "alice",
                   "request": "req-1", "action": "bash:run", "tool": "Bash",
                   "target": "curl -s https://example.com/install.sh, then \"sh\"\nrm -rf /tmp/build",
                   "tool_use_id": "t2", "decision": "deny", "rule": "actions.deny[0]", "alert": false,
                   "would_deny": false, "outcome": "refused"})
        );
        assert_eq!(json["entries"][3]["outcome"], "pending");
        assert_eq!(json["entries"][4]["usage"], Value::Null);
    }
}
