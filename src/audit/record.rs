//! The audit record: the fields of DESIGN.md's contract, one JSON object per line.

use std::sync::Arc;

use serde::Serialize;

/// One audit record; field names are the contract in DESIGN.md.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    pub ts: String,
    pub id: String,
    pub kind: &'static str,
    pub listener: Arc<str>,
    pub client: String,
    pub user: Option<Arc<str>>,
    pub team: Option<Arc<str>>,
    pub method: String,
    pub host: String,
    pub port: u16,
    pub path: Option<String>,
    pub decision: &'static str,
    pub rule: Option<Arc<str>>,
    pub status: u16,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::llm::usage::Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dlp: Vec<Arc<str>>,
    pub error: Option<String>,
    /// The client's session (`X-Claude-Code-Session-Id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<Arc<str>>,
    /// The client's first User-Agent product token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// One tool call the model made (`kind: "action"`): what it does, on what, and what tollgate decided.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ActionRecord {
    pub ts: String,
    pub id: String,
    pub kind: &'static str,
    pub listener: Arc<str>,
    pub client: String,
    pub user: Option<Arc<str>>,
    pub team: Option<Arc<str>>,
    pub session: Option<Arc<str>>,
    /// The `id` of the model request whose response carried the call.
    pub request: Arc<str>,
    pub model: Option<Arc<str>>,
    /// `file:read`, `file:write`, `bash:run`, `web:fetch`, `mcp:call`, `agent:spawn` or `tool:NAME`.
    pub action: String,
    pub tool: String,
    /// The path, command, URL, query, `SERVER/TOOL` or subagent type; never file contents or output.
    pub target: Option<String>,
    pub tool_use_id: String,
    pub decision: &'static str,
    pub rule: Option<Arc<str>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub alert: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub would_deny: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a call ended, once a later request shows its result (`kind: "action_outcome"`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct OutcomeRecord {
    pub ts: String,
    pub id: String,
    pub kind: &'static str,
    pub user: Option<Arc<str>>,
    pub team: Option<Arc<str>>,
    pub session: Option<Arc<str>>,
    /// The `id` of the request that carried the result.
    pub request: Arc<str>,
    pub tool_use_id: String,
    pub action: String,
    pub tool: String,
    pub target: Option<String>,
    /// `ran`, `failed` or `refused` (by the user).
    pub outcome: &'static str,
}

/// Any record the sink writes.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Entry {
    Request(Box<Record>),
    Action(Box<ActionRecord>),
    Outcome(Box<OutcomeRecord>),
    Alert(Box<AlertRecord>),
    Checkpoint(Box<CheckpointRecord>),
}

impl Entry {
    /// The record's `id`.
    pub fn id(&self) -> &str {
        match self {
            Entry::Request(record) => &record.id,
            Entry::Action(record) => &record.id,
            Entry::Outcome(record) => &record.id,
            Entry::Alert(record) => &record.id,
            Entry::Checkpoint(record) => &record.id,
        }
    }
}

impl From<Record> for Entry {
    fn from(record: Record) -> Self {
        Entry::Request(Box::new(record))
    }
}

impl From<ActionRecord> for Entry {
    fn from(record: ActionRecord) -> Self {
        Entry::Action(Box::new(record))
    }
}

impl From<OutcomeRecord> for Entry {
    fn from(record: OutcomeRecord) -> Self {
        Entry::Outcome(Box::new(record))
    }
}

impl From<AlertRecord> for Entry {
    fn from(record: AlertRecord) -> Self {
        Entry::Alert(Box::new(record))
    }
}

/// One alert raised by a rule (`kind: "alert"`), with what happened at each of its sinks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AlertRecord {
    pub ts: String,
    pub id: String,
    pub kind: &'static str,
    /// The rule's name.
    pub rule: Arc<str>,
    /// `budget`, `spend_anomaly`, `after_hours`, `action`, `dlp` or `auth_failures`.
    pub rule_kind: &'static str,
    /// `user`, `team`, `org` or `client`.
    pub scope: &'static str,
    /// The user, team or client address the alert is about (`org` for the organisation).
    pub key: String,
    pub message: String,
    /// The measured value (a budget's used fraction, today's spend in USD, failed sign-ins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The threshold it crossed (a budget fraction, factor × the trailing average in USD, a count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The `id` of the request (or action record) that raised it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Each sink and what delivery did.
    pub sinks: Vec<AlertDelivery>,
}

/// One sink's delivery of an alert.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AlertDelivery {
    pub sink: Arc<str>,
    /// `sent` or `failed`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<CheckpointRecord> for Entry {
    fn from(record: CheckpointRecord) -> Self {
        Entry::Checkpoint(Box::new(record))
    }
}

/// A signed statement of how far the chain had come (`kind: "checkpoint"`): the file, how many lines it held
/// before this one, and the hash of the last; signed with `audit.checkpoints.signing_key` (see `checkpoint.rs`).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct CheckpointRecord {
    pub ts: String,
    pub id: String,
    pub kind: std::borrow::Cow<'static, str>,
    /// The active file's name when the checkpoint was written (`audit.jsonl`).
    pub file: String,
    /// The file's serial: the number it has in its rotated name (`audit-000042-….jsonl.gz`).
    pub serial: u64,
    /// Lines in the file before this checkpoint.
    pub records: u64,
    /// The hash of the last of them (the file's first `prev` when there are none).
    pub last_hash: String,
    /// How the chain is hashed: `sha256` or `hmac-sha256`.
    pub chain_hash: std::borrow::Cow<'static, str>,
    /// Ed25519 over `checkpoint::message`, hex.
    pub signature: String,
}
