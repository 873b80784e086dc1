//! Alerts (`alerts:`): rules that watch spend, hours, agent actions, DLP blocks and failed sign-ins, and sinks
//! (webhooks, email) they go to.
//!
//! The request path only filters and hands a small `Event` to a bounded queue (`try_send`: a full queue drops the
//! event and counts it, never waits); with no rule configured that is one relaxed load and a branch. One task
//! (`engine`) evaluates the rules of the current config snapshot, keeps cooldowns (claimed in Redis with
//! `SET NX PX` when replicas share it, so an alert fires once, not once per replica), and delivers (`deliver`);
//! each alert becomes an audit record (`kind: "alert"`) and counts in `tollgate_alerts_total{rule,sink,result}`.

mod deliver;
pub mod engine;
pub mod event;
pub mod rules;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};

pub use event::{ActionEvent, Event, RequestEvent, Wants};
pub use rules::Alerts as Rules;

use crate::metrics::Metrics;

/// Events queued for the engine before the request path starts dropping them.
const QUEUE: usize = 4096;

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
    /// A queue for `rules` (the config's `alerts`); the engine takes its receiving end (`take_receiver`) when it
    /// starts.
    pub fn new(rules: Option<&Rules>, metrics: &Metrics) -> Alerts {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let alerts = Alerts {
            sender,
            receiver: Mutex::new(Some(receiver)),
            wants: AtomicU8::new(0),
            dropped: metrics.alert_events_dropped(),
        };
        alerts.configure(rules, metrics);
        alerts
    }

    /// Follows a new snapshot's rules: which events to send, and each rule × sink × result counter registered at 0.
    pub fn configure(&self, rules: Option<&Rules>, metrics: &Metrics) {
        let wants = match rules {
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

    /// Waits until the engine has evaluated every event queued so far and delivered what they raised (for tests:
    /// a point after which no alert of those events is still coming); returns at once once the engine has ended.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.sender.send(Event::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}
