//! `tollgate doctor`: run on a developer's machine, it reads what Claude Code would run with (`environment`) and
//! checks, in order, each step between Claude Code and the model API through tollgate (`steps`): the settings
//! files, the proxy variables, `NO_PROXY`, reaching the proxy, its TLS, the proxy credentials, the interception CA
//! in `NODE_EXTRA_CA_CERTS`, and a request to the model host through the tunnel. A failing step says what to fix;
//! the steps that need it are skipped.

pub mod environment;
pub mod step;
pub mod steps;

use serde::Serialize;

pub use environment::Environment;
pub use step::{Options, Step, Verdict, MODEL_HOST};

/// Every step, in order.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `host:port` checked.
    pub model_host: String,
    pub ok: bool,
    pub steps: Vec<Step>,
}

/// Runs every step against `environment`.
pub async fn run(environment: &Environment, options: &Options) -> Report {
    let steps = steps::check(environment, options).await;
    let ok = steps.iter().all(|step| step.verdict != Verdict::Fail);
    let model_host = steps::model_target(environment, options).map(|(host, port)| format!("{host}:{port}"));
    Report { model_host: model_host.unwrap_or_default(), ok, steps }
}

impl Report {
    /// The report for a person: one line per step, the fix under a failing one.
    pub fn text(&self) -> String {
        let mut out = format!("tollgate doctor: how Claude Code reaches {}\n", self.model_host);
        for step in &self.steps {
            let mark = match step.verdict {
                Verdict::Pass => "ok  ",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "skip",
            };
            out.push_str(&format!("{mark}  {:<28} {}\n", step.title, step.detail));
            if let Some(fix) = &step.fix {
                out.push_str(&format!("      fix: {fix}\n"));
            }
        }
        out.push_str(if self.ok {
            "Every step passed.\n"
        } else {
            "Fix the first failing step, then run tollgate doctor again.\n"
        });
        out
    }
}
