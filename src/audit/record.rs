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
}
