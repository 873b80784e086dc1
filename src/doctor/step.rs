//! What the doctor is asked (`Options`) and what each of its steps found (`Step`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// The host Claude Code sends model requests to, unless `ANTHROPIC_BASE_URL` names another.
pub const MODEL_HOST: &str = "api.anthropic.com";

/// What to check against.
#[derive(Debug, Clone)]
pub struct Options {
    /// `HOST[:PORT]` of the model API; `None` = `ANTHROPIC_BASE_URL`'s host, else `api.anthropic.com:443`.
    pub model_host: Option<String>,
    /// The managed settings file to read (default: this operating system's).
    pub managed_settings: PathBuf,
    /// How long each network step may take.
    pub timeout: Duration,
}

/// How one step went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// Not checked: an earlier step it needs failed, or it does not apply.
    Skip,
}

/// One checked step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `settings`, `proxy`, `no_proxy`, `reach`, `proxy_tls`, `credentials`, `ca`, `model`.
    pub step: &'static str,
    pub title: &'static str,
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to change, when the step failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}
