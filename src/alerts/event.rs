//! The events the request path hands to the alert engine, and the bits that say which of them the current rules
//! want: small, built only when a rule could care.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::actions::tools::Action;

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
