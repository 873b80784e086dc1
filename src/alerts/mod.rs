//! Alerts (`alerts:`): rules that watch spend, hours, agent actions, DLP blocks and failed sign-ins, and sinks
//! (webhooks, email) they go to.
//!
//! The request path only filters and hands a small `Event` to a bounded queue (`try_send`: a full queue drops the
//! event and counts it, never waits); with no rule configured that is one relaxed load and a branch. One task
//! (`engine`) evaluates the rules of the current config snapshot, keeps cooldowns (claimed in Redis with
//! `SET NX PX` when replicas share it, so an alert fires once, not once per replica), and delivers (`deliver`);
//! each alert becomes an audit record (`kind: "alert"`) and counts in `tollgate_alerts_total{rule,sink,result}`.

mod deliver;
mod engine;
pub mod rules;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};

pub use engine::run;
pub use rules::Alerts as Rules;

use crate::actions::tools::Action;
use crate::config::Config;
use crate::metrics::Metrics;

/// Events queued for the engine before the request path starts dropping them.
const QUEUE: usize = 4096;

/// Which events the request path sends: bits of the rules' kinds in the current snapshot.
pub struct Wants;

impl Wants {
    /// Metered requests with a cost (`budget`, `spend_anomaly`).
    pub const METERED: u8 = 1;
    /// Requests refused by team hours (`after_hours`).
    pub const HOURS_DENIED: u8 = 2;
    /// Allowed model requests (`after_hours` with an alert-only window).
    pub const MODEL_USE: u8 = 4;
    /// Requests a DLP detector blocked (`dlp`).
    pub const DLP: u8 = 8;
    /// Failed sign-ins (`auth_failures`).
    pub const AUTH_FAILURE: u8 = 16;
    /// Agent actions marked `alert`, denied or that would be denied (`action`).
    pub const ACTION: u8 = 32;
}

/// What the request path tells the engine.
#[derive(Debug)]
pub enum Event {
    Request(Box<RequestEvent>),
    Action(Box<ActionEvent>),
    AuthFailure {
        client: IpAddr,
        at: SystemTime,
    },
    /// Answered once every event before it is evaluated and every delivery it started has ended (`Alerts::flush`).
    Flush(oneshot::Sender<()>),
}

/// A finished request, as the rules need it.
#[derive(Debug)]
pub struct RequestEvent {
    pub id: String,
    pub at: SystemTime,
    pub user: Option<Arc<str>>,
    pub teams: Arc<[Arc<str>]>,
    /// Its metered cost (0: not metered, or nothing to charge).
    pub cost_micro_usd: i64,
    /// Refused by team hours: the rule (`teams.NAME.hours`).
    pub hours_rule: Option<Arc<str>>,
    /// An allowed model request: its model.
    pub model: Option<String>,
    /// The detectors that blocked it (empty: not blocked by DLP).
    pub dlp_blocked: Vec<Arc<str>>,
}

/// An agent action that a policy marked `alert`, denied or would deny.
#[derive(Debug)]
pub struct ActionEvent {
    pub id: String,
    pub at: SystemTime,
    pub user: Option<Arc<str>>,
    pub teams: Arc<[Arc<str>]>,
    pub action: Action,
    /// `alert`, `deny` or `would_deny`.
    pub verdict: &'static str,
    pub rule: Option<Arc<str>>,
}

/// The request path's handle: the queue to the engine and which events the current rules want.
pub struct Alerts {
    sender: mpsc::Sender<Event>,
    receiver: Mutex<Option<mpsc::Receiver<Event>>>,
    wants: AtomicU8,
    dropped: IntCounter,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts").field("wants", &self.wants.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl Alerts {
    /// A queue for `config`'s rules; the engine takes its receiving end (`take_receiver`) when it starts.
    pub fn new(config: &Config, metrics: &Metrics) -> Alerts {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let alerts = Alerts {
            sender,
            receiver: Mutex::new(Some(receiver)),
            wants: AtomicU8::new(0),
            dropped: metrics.alert_events_dropped(),
        };
        alerts.configure(config, metrics);
        alerts
    }

    /// Follows a new snapshot: which events to send, and each rule × sink × result counter registered at 0.
    pub fn configure(&self, config: &Config, metrics: &Metrics) {
        let wants = match &config.alerts {
            Some(alerts) => {
                for rule in &alerts.rules {
                    for sink in &rule.sinks {
                        for result in ["sent", "failed", "suppressed"] {
                            metrics.alert_counter(&rule.name, &alerts.sinks[*sink].name, result);
                        }
                    }
                }
                alerts.wants
            }
            None => 0,
        };
        self.wants.store(wants, Ordering::Relaxed);
    }

    /// The receiving end of the queue, once.
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<Event>> {
        self.receiver.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Whether any rule is configured: the request path's one branch.
    #[inline]
    pub fn active(&self) -> bool {
        self.wants.load(Ordering::Relaxed) != 0
    }

    /// Whether the current rules want events of `kind` (`Wants` bits).
    #[inline]
    pub fn wants(&self, kind: u8) -> bool {
        self.wants.load(Ordering::Relaxed) & kind != 0
    }

    /// Queues `event` if there is room; drops and counts it if not.
    pub fn send(&self, event: Event) {
        if self.sender.try_send(event).is_err() {
            self.dropped.inc();
        }
    }

    /// Queues a failed sign-in from `client`, when a rule watches them.
    pub fn auth_failure(&self, client: IpAddr, at: SystemTime) {
        if self.wants(Wants::AUTH_FAILURE) {
            self.send(Event::AuthFailure { client, at });
        }
    }

    /// Waits until the engine has evaluated every event queued so far and delivered what they raised (tests and
    /// shutdown); returns at once when no engine runs.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.sender.send(Event::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}
