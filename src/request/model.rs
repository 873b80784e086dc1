//! The phases of a model-API request after `admit` (intercepted tunnels, gateway listeners, absolute-form requests
//! to a model host), in this order:
//!
//! 5. **path**: made canonical (`request::path`) and checked against `intercept.paths`;
//! 6. **body**: read whole, within `intercept.max_body`, `server.body_read_timeout` and the bytes all requests may
//!    hold at once (`server.max_buffered_body_bytes`); a compressed body is refused where it must be read;
//! 7. **model**: every model the body names must be allowed for the principal's teams;
//! 8. **DLP**: the detectors read the body (its JSON-decoded text too); a match blocks or is logged;
//! 9. **actions** (`api::actions`, for Messages requests): the conversation's replayed tool calls are read, their
//!    new outcomes recorded, and a result of a denied call refuses the request;
//! 10. **budget**: the request's worst case (input estimate plus `max_tokens` at the output price) is reserved
//!     against every budget that applies, or the request is refused.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::admit::state_unreachable;
use super::error::Error;
use super::finish::Exchange;
use super::path;
use crate::config::Config;
use crate::identity::Principal;
use crate::limits::budget::Reservation;
use crate::llm::request::RequestFacts;
use crate::shared::Shared;

/// Phase 5: the canonical path, if the path rules allow it; the exchange records the canonical path.
pub fn check_path<'a>(config: &Config, raw: &'a str, exchange: &mut Exchange) -> Result<Cow<'a, str>, Error> {
    let canonical = path::canonical(raw).map_err(|problem| Error::BadRequest(format!("path {raw:?}: {problem}")))?;
    if canonical != raw {
        exchange.path = Some(canonical.to_string());
    }
    config
        .llm
        .paths
        .check(&canonical)
        .map_err(|denied| Error::PathDenied { path: canonical.to_string(), rule: denied.rule })?;
    Ok(canonical)
}

/// A request body read whole, with the share of `server.max_buffered_body_bytes` it holds until it is dropped.
#[derive(Debug)]
pub struct Body {
    pub bytes: Bytes,
    _held: Option<OwnedSemaphorePermit>,
}

/// Phase 6: reads the whole body, refusing one larger than `max_body` (by its `Content-Length` before reading),
/// one slower than `server.body_read_timeout`, and one the shared buffer cannot hold now.
pub async fn read_body<B>(
    config: &Config,
    buffers: &Arc<Semaphore>,
    headers: &HeaderMap,
    body: B,
) -> Result<Body, Error>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let max_body = config.llm.max_body;
    let declared = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max_body) {
        return Err(Error::BodyTooLarge(max_body));
    }
    let capacity = config.server.max_buffered_body_bytes;
    let read = collect(buffers, capacity, declared, body, max_body, || Error::BodyTooLarge(max_body));
    let timeout = config.server.body_read_timeout;
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(Error::BodyTimeout(timeout)),
    }
}

/// Reads a body whole, at most `max` bytes (`too_large` past it), holding its size in `buffers` (whose
/// `capacity` the error names when it cannot): a `declared` length is taken at once, before a byte is read.
pub async fn collect<B>(
    buffers: &Arc<Semaphore>,
    capacity: u64,
    declared: Option<u64>,
    mut body: B,
    max: u64,
    too_large: impl Fn() -> Error,
) -> Result<Body, Error>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let take = |held: &mut Option<OwnedSemaphorePermit>, bytes: usize| -> Result<(), Error> {
        let Ok(bytes) = u32::try_from(bytes) else { return Err(Error::BuffersFull(capacity)) };
        if bytes == 0 {
            return Ok(());
        }
        let permit = buffers.clone().try_acquire_many_owned(bytes).map_err(|_| Error::BuffersFull(capacity))?;
        match held {
            Some(held) => held.merge(permit),
            None => *held = Some(permit),
        }
        Ok(())
    };
    let mut held = None;
    if let Some(length) = declared {
        if length > max {
            return Err(too_large());
        }
        take(&mut held, length as usize)?;
    }
    let mut collected = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| Error::ClientClosed(std::io::Error::other(error.to_string())))?;
        let Ok(data) = frame.into_data() else { continue };
        if collected.len() as u64 + data.len() as u64 > max {
            return Err(too_large());
        }
        let beyond_declared = (collected.len() + data.len()).saturating_sub(declared.unwrap_or(0) as usize);
        let already_beyond = collected.len().saturating_sub(declared.unwrap_or(0) as usize);
        take(&mut held, beyond_declared - already_beyond)?;
        collected.extend_from_slice(&data);
    }
    Ok(Body { bytes: collected.freeze(), _held: held })
}

/// Phases 6 to 8 on the body read: its encoding, the models a metered request names, and DLP (whatever the path:
/// data leaves through any body). Returns a metered request's worst-case cost in micro-dollars.
pub fn check_body(
    shared: &Shared,
    config: &Config,
    principal: &Principal,
    headers: &HeaderMap,
    body: &Bytes,
    metered: bool,
    exchange: &mut Exchange,
) -> Result<i64, Error> {
    if metered || (config.llm.dlp.is_some() && !body.is_empty()) {
        refuse_compressed(headers)?;
    }
    let mut worst_case = 0;
    if metered {
        let facts = RequestFacts::read(body);
        check_model(config, principal, &facts)?;
        let model = facts.model.as_deref().unwrap_or("");
        let output = facts.max_tokens.unwrap_or(0);
        worst_case = config.llm.pricing.estimate_micro_usd(model, facts.estimated_input_tokens, output);
        exchange.model = facts.model;
    }
    scan(shared, config, body, exchange)?;
    Ok(worst_case)
}

/// Refuses a compressed request body: the model, DLP and budget checks read the body as sent.
fn refuse_compressed(headers: &HeaderMap) -> Result<(), Error> {
    for value in headers.get_all(http::header::CONTENT_ENCODING) {
        let encodings = String::from_utf8_lossy(value.as_bytes());
        if encodings.split(',').any(|encoding| !encoding.trim().eq_ignore_ascii_case("identity")) {
            return Err(Error::CompressedBody(encodings.trim().to_owned()));
        }
    }
    Ok(())
}

/// Phase 7: the model must match one of the `models` globs of one of the principal's teams, when any of them sets
/// `models` (several teams: the most permissive wins, as for destinations).
fn check_model(config: &Config, principal: &Principal, facts: &RequestFacts) -> Result<(), Error> {
    // No allocation on the allowed path: the list and the message are only built for a refusal.
    let restricting = || {
        principal
            .teams
            .iter()
            .filter_map(|team| config.teams.get(team).map(|settings| (team, settings)))
            .filter(|(_, settings)| !settings.models.is_empty())
    };
    let Some((team, _)) = restricting().next() else { return Ok(()) };
    // Every model named must be allowed (a batch names one per request), and a body must name one.
    let allows = |model: &str| restricting().any(|(_, settings)| settings.model_globs.is_match(model));
    let denied = facts.models().find(|model| !allows(model));
    if denied.is_none() && facts.models().next().is_some() {
        return Ok(());
    }
    let allowed = restricting().flat_map(|(_, s)| s.models.iter().map(String::as_str)).collect::<Vec<_>>().join(", ");
    let rule: Arc<str> = format!("teams.{team}.models").into();
    match denied {
        None => Err(Error::ModelMissing { rule, allowed }),
        Some(model) => Err(Error::ModelDenied { model: model.to_owned(), team: Some(team.clone()), rule, allowed }),
    }
}

/// Phase 8: runs the DLP detectors; with `action: block` the first match refuses the request. Matches are recorded
/// by detector name only.
fn scan(shared: &Shared, config: &Config, body: &Bytes, exchange: &mut Exchange) -> Result<(), Error> {
    let Some(dlp) = &config.llm.dlp else { return Ok(()) };
    let found = dlp.scan(body);
    for detector in &found {
        shared.metrics.dlp_match(detector, dlp.blocks());
    }
    exchange.dlp = found;
    match exchange.dlp.first() {
        Some(detector) if dlp.blocks() => {
            Err(Error::DlpBlocked { detector: detector.clone(), rule: format!("dlp.{detector}").into() })
        }
        _ => Ok(()),
    }
}

/// Phase 10: reserves the worst case against every budget that applies; `state.on_error` decides when the state
/// backend cannot be reached.
pub async fn reserve(
    shared: &Shared,
    config: &Config,
    principal: &Principal,
    worst_case: i64,
    now: SystemTime,
) -> Result<Reservation, Error> {
    match config.llm.budgets.reserve(shared.limiter.backend(), principal, worst_case, now).await {
        Ok(Ok(reservation)) => Ok(reservation),
        Ok(Err(refusal)) => Err(Error::BudgetSpent(refusal)),
        Err(error) => state_unreachable(shared, config, error, "budgets").map(|()| Reservation::none()),
    }
}
