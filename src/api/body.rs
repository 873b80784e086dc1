//! The response body toward the client: the upstream's frames passed on as they arrive (SSE events one by
//! one, never buffered whole), each shown to the usage meter on the way. When the body ends, is cut by the
//! upstream or dropped by the client, the request is settled: cost from the usage seen, the budget
//! reservation replaced by it, metrics, the concurrency slots given back, and the audit record.
//!
//! The end of a body is held back until the settlement is done, so a client that saw its response end finds
//! its spend counted, and (under `audit.on_failure: block`) its audit record written. A small whole message is
//! read and settled before its head is answered instead (`MeteredBody::settled`): the same steps, one write.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use super::actions::ResponseCalls;
use super::idle::Busy;
use crate::audit::Release;
use crate::config::Config;
use crate::limits::budget::Reservation;
use crate::limits::Admitted;
use crate::llm::usage::Meter;
use crate::request::door::Peer;
use crate::request::finish::{finish, Exchange};
use crate::shared::Shared;

/// Errors a response body can end with (the upstream's).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// What settling a request needs; taken exactly once, when the body ends or is dropped.
pub struct Settlement {
    pub shared: Arc<Shared>,
    pub config: Arc<Config>,
    pub peer: Arc<Peer>,
    pub exchange: Exchange,
    pub admitted: Option<Admitted>,
    pub reservation: Option<Reservation>,
}

/// How a response body ended.
#[derive(Debug)]
enum End {
    Complete,
    UpstreamCut(String),
    ClientCut,
    /// Dropped once shutdown's grace period had ended: tollgate cut it (its tunnel or connection), not the client.
    ShutdownCut,
}

/// A tollgate-made answer (one frame), or an upstream body being relayed and metered.
pub struct MeteredBody {
    inner: Inner,
    /// Keeps the connection's request in flight (not idle) until the body has been sent or dropped.
    _busy: Option<Busy>,
}

enum Inner {
    Refusal(Option<Bytes>),
    /// A refusal whose record was not written before shutdown stopped waiting: it fails instead of completing.
    Cut(bool),
    Upstream(Box<Relay>),
    /// A body read whole and settled before its head was answered: its bytes, then how it ended (`None`: whole),
    /// and their share of the body buffers until sent.
    Settled {
        data: Option<Bytes>,
        ended: Option<BodyError>,
        _buffered: Option<OwnedSemaphorePermit>,
    },
}

struct Relay {
    incoming: Source,
    meter: Option<Meter>,
    /// The response's tool calls, read as they pass (and held until decided, under a policy that can deny).
    actions: Option<ResponseCalls>,
    settlement: Option<Settlement>,
    /// The upstream's `Content-Length`: the body is complete when that many bytes went by.
    expected: Option<u64>,
    relayed: u64,
    settling: Option<Pin<Box<dyn Future<Output = Release> + Send>>>,
    /// What to hand out once the settlement is done: the last frame, an error, or the end.
    after_settling: Option<Result<Frame<Bytes>, BodyError>>,
}

impl MeteredBody {
    /// A response tollgate wrote itself, sent as `release` says: not when its record was not written.
    pub fn refusal(body: Bytes, release: Release) -> Self {
        let inner = match release {
            Release::Complete => Inner::Refusal(Some(body)),
            Release::Cut => Inner::Cut(false),
        };
        Self { inner, _busy: None }
    }

    /// The same body, holding `busy` until it has been sent or dropped.
    pub fn holding(self, busy: Busy) -> Self {
        Self { _busy: Some(busy), ..self }
    }

    /// The upstream's body, metered when `meter` is given, its tool calls read when `actions` is, settled when
    /// it ends.
    pub fn upstream(
        incoming: Incoming,
        meter: Option<Meter>,
        actions: Option<ResponseCalls>,
        settlement: Settlement,
    ) -> Self {
        let expected = incoming.size_hint().exact();
        Self::relay(Source::Upstream(incoming), expected, meter, actions, settlement)
    }

    /// A body the upstream sent whole and tollgate read before answering (to decide its tool calls): `sent` goes
    /// to the client (the body itself, or the refusal that replaced it); the meter has seen the upstream's body.
    pub fn whole(sent: Bytes, meter: Option<Meter>, settlement: Settlement) -> Self {
        let expected = Some(sent.len() as u64);
        Self::relay(Source::Whole(Some(sent)), expected, meter, None, settlement)
    }

    fn relay(
        incoming: Source,
        expected: Option<u64>,
        meter: Option<Meter>,
        actions: Option<ResponseCalls>,
        settlement: Settlement,
    ) -> Self {
        let relay = Relay {
            incoming,
            meter,
            actions,
            settlement: Some(settlement),
            expected,
            relayed: 0,
            settling: None,
            after_settling: None,
        };
        Self { inner: Inner::Upstream(Box::new(relay)), _busy: None }
    }

    /// The same body read to its end and settled now, before its head is answered (`idle`: the longest wait for
    /// the upstream's next bytes). Metering, tool calls, the record and every way of ending are the relay's own;
    /// only the order changes: the client gets the head once the body is in, so head and body leave in one write
    /// and the record (under `audit.on_failure: block`) is written before either. For small sized bodies only.
    pub async fn settled(self, idle: Duration, buffered: Option<OwnedSemaphorePermit>) -> Self {
        let Self { inner, _busy: busy } = self;
        let mut relay = match inner {
            Inner::Upstream(relay) => relay,
            inner => return Self { inner, _busy: busy },
        };
        let mut data = BytesMut::new();
        let ended = loop {
            // Only the upstream's bytes are timed: a settlement waits as on the relay (for its record under
            // `audit.on_failure: block`, until shutdown cuts it), and is not turned into a cut. The settling future
            // lives in the relay, so a read given up while it runs resumes it.
            let frame = if relay.settling.is_some() {
                relay.frame().await
            } else {
                match tokio::time::timeout(idle, relay.frame()).await {
                    Ok(frame) => frame,
                    Err(_) if relay.settling.is_some() => continue,
                    Err(_) => {
                        // A stalled upstream ends the body as a cut one would; the relay then settles.
                        let stalled: BodyError = format!("no bytes from the upstream for {}s", idle.as_secs()).into();
                        relay.begin_settling(End::UpstreamCut(stalled.to_string()), Some(Err(stalled)));
                        continue;
                    }
                }
            };
            match frame {
                Some(Ok(frame)) => {
                    if let Some(bytes) = frame.data_ref() {
                        data.extend_from_slice(bytes);
                    }
                }
                Some(Err(error)) => break Some(error),
                None => break None,
            }
        };
        let data = (!data.is_empty()).then(|| data.freeze());
        Self { inner: Inner::Settled { data, ended, _buffered: buffered }, _busy: busy }
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().inner {
            Inner::Refusal(body) => Poll::Ready(body.take().map(|bytes| Ok(Frame::data(bytes)))),
            Inner::Cut(failed) => Poll::Ready((!std::mem::replace(failed, true)).then(|| Err(cut_before_record()))),
            Inner::Upstream(relay) => relay.poll_frame(cx),
            Inner::Settled { data, ended, .. } => Poll::Ready(match data.take() {
                Some(bytes) => Some(Ok(Frame::data(bytes))),
                None => ended.take().map(Err),
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Refusal(body) => body.is_none(),
            Inner::Cut(failed) => *failed,
            Inner::Upstream(relay) => {
                relay.settlement.is_none() && relay.settling.is_none() && relay.incoming.is_end_stream()
            }
            Inner::Settled { data, ended, .. } => data.is_none() && ended.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Refusal(Some(body)) => SizeHint::with_exact(body.len() as u64),
            Inner::Refusal(None) => SizeHint::with_exact(0),
            Inner::Cut(_) => SizeHint::default(),
            // Held calls may be replaced by an error event: the length is not known ahead.
            Inner::Upstream(relay) if relay.actions.as_ref().is_some_and(ResponseCalls::holds) => SizeHint::default(),
            Inner::Upstream(relay) => relay.incoming.size_hint(),
            Inner::Settled { data, ended: None, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Inner::Settled { .. } => SizeHint::default(),
        }
    }
}

impl Relay {
    /// The next frame toward the client, as a future.
    async fn frame(&mut self) -> Option<Result<Frame<Bytes>, BodyError>> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            if let Some(settling) = &mut self.settling {
                let release = ready!(settling.as_mut().poll(cx));
                self.settling = None;
                if release == Release::Cut {
                    // Shutdown stopped waiting for the audit record: the response must not complete.
                    self.after_settling = Some(Err(cut_before_record()));
                }
                if matches!(self.after_settling, Some(Err(_))) {
                    // hyper drops what it buffered in this round when a body fails: give it one round to
                    // flush the events before the error, so the client gets every event that was billed.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                return Poll::Ready(self.after_settling.take());
            }
            if matches!(self.after_settling, Some(Err(_))) {
                return Poll::Ready(self.after_settling.take());
            }
            match ready!(self.incoming.poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let mut frame = Some(frame);
                    if let Some(data) = frame.as_ref().and_then(Frame::data_ref) {
                        self.relayed += data.len() as u64;
                        // A body read whole was metered as the upstream sent it; what goes out may be the
                        // refusal that replaced it.
                        let upstream = matches!(self.incoming, Source::Upstream(_));
                        if let Some(meter) = self.meter.as_mut().filter(|_| upstream) {
                            meter.feed(data);
                        }
                        if let Some(actions) = &mut self.actions {
                            let out = actions.feed(data);
                            if actions.holds() {
                                frame = (!out.is_empty()).then(|| Frame::data(out));
                            }
                            self.note_denial();
                        }
                    }
                    if self.expected == Some(self.relayed) && self.settlement.is_some() {
                        // The last bytes of a sized body: settle before the client can see it end.
                        let frame = self.with_held_rest(frame);
                        self.begin_settling(End::Complete, frame.map(Ok));
                        continue;
                    }
                    match frame {
                        Some(frame) => return Poll::Ready(Some(Ok(frame))),
                        // Held, or after a denied call: nothing for the client yet; read on (the meter still
                        // counts what the upstream generates).
                        None => continue,
                    }
                }
                Some(Err(error)) => {
                    let reason = error.to_string();
                    if self.settlement.is_none() {
                        return Poll::Ready(Some(Err(error)));
                    }
                    self.begin_settling(End::UpstreamCut(reason), Some(Err(error)));
                }
                None if self.settlement.is_some() => {
                    let rest = self.with_held_rest(None);
                    self.begin_settling(End::Complete, rest.map(Ok));
                }
                None => return Poll::Ready(None),
            }
        }
    }

    /// `frame` with what the action reader still holds at the end of the body appended.
    fn with_held_rest(&mut self, frame: Option<Frame<Bytes>>) -> Option<Frame<Bytes>> {
        let Some(actions) = &mut self.actions else { return frame };
        let rest = actions.finish();
        let holds = actions.holds();
        self.note_denial();
        if !holds || rest.is_empty() {
            return frame;
        }
        match frame.map(Frame::into_data) {
            None => Some(Frame::data(rest)),
            Some(Ok(data)) => {
                let mut joined = bytes::BytesMut::with_capacity(data.len() + rest.len());
                joined.extend_from_slice(&data);
                joined.extend_from_slice(&rest);
                Some(Frame::data(joined.freeze()))
            }
            // A trailers frame: the held bytes go first would reorder it; trailers do not occur on these responses.
            Some(Err(frame)) => Some(frame),
        }
    }

    /// A denied call ended the response: the request's record says so.
    fn note_denial(&mut self) {
        let Some(denied) = self.actions.as_mut().and_then(ResponseCalls::take_denied) else { return };
        if let Some(settlement) = &mut self.settlement {
            let exchange = &mut settlement.exchange;
            exchange.rule = denied.rule();
            exchange.reason = denied.kind();
            // The response was ended by a deny: the request's decision (its status stays the 200 that was sent).
            exchange.decision = denied.decision();
            exchange.error = Some(format!("response ended: {denied}"));
        }
    }

    fn begin_settling(&mut self, end: End, then: Option<Result<Frame<Bytes>, BodyError>>) {
        if let Some(settlement) = self.settlement.take() {
            self.settling = Some(Box::pin(settlement.settle(self.meter.take(), end, self.relayed)));
        }
        self.after_settling = then;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The client went away before the end (or shutdown cut it): settle what was seen, off this (synchronous)
        // drop. A client that stops reading after the error of a denied call (Claude Code does) leaves tokens the
        // model generated after it: the upstream is read on to its end, within its idle timeout, so that they are
        // metered.
        let Some(settlement) = self.settlement.take() else { return };
        let mut meter = self.meter.take();
        let mut relayed = self.relayed;
        let denied = self.actions.as_ref().is_some_and(ResponseCalls::ended);
        let mut source = std::mem::replace(&mut self.incoming, Source::Whole(None));
        let idle = settlement.config.upstream.idle_timeout;
        // Past the grace period shutdown cuts what is still open: the drop is its doing.
        let end = if settlement.shared.shutdown.cut_tunnels.is_cancelled() { End::ShutdownCut } else { End::ClientCut };
        let settle = async move {
            if denied {
                while let Ok(Some(Ok(frame))) = tokio::time::timeout(idle, source.frame()).await {
                    if let (Some(data), Some(meter)) = (frame.data_ref(), &mut meter) {
                        relayed += data.len() as u64;
                        meter.feed(data);
                    }
                }
            }
            settlement.settle(meter, end, relayed).await
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(settle);
            }
            Err(_) => tracing::warn!("a cut response could not be settled outside the runtime"),
        }
    }
}

/// Where a relayed body comes from.
enum Source {
    Upstream(Incoming),
    /// Read whole already: one frame.
    Whole(Option<Bytes>),
}

impl Source {
    /// The next frame, as a future.
    async fn frame(&mut self) -> Option<Result<Frame<Bytes>, BodyError>> {
        std::future::poll_fn(|cx| self.poll_frame(cx)).await
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self {
            Source::Upstream(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Into::into),
            Source::Whole(body) => Poll::Ready(body.take().map(|bytes| Ok(Frame::data(bytes)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Upstream(incoming) => incoming.is_end_stream(),
            Source::Whole(body) => body.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Upstream(incoming) => incoming.size_hint(),
            Source::Whole(Some(body)) => SizeHint::with_exact(body.len() as u64),
            Source::Whole(None) => SizeHint::with_exact(0),
        }
    }
}

/// The error a response ends with when its audit record was not written before shutdown stopped waiting.
fn cut_before_record() -> BodyError {
    "cut at shutdown: the audit record was not written (audit.on_failure: block)".into()
}

impl Settlement {
    /// Cost, spend, metrics, slots and the audit record of a finished (or cut) response; says whether the
    /// response may complete. Cost, metrics and the error text are worked out when it is called; the future it
    /// returns settles the spend, gives back the slots and hands over the record, and holds only what those need
    /// (it is boxed for every relayed response).
    fn settle(self, meter: Option<Meter>, end: End, relayed: u64) -> impl Future<Output = Release> + Send {
        let Settlement { shared, config, peer, mut exchange, admitted, reservation } = self;
        exchange.bytes_down = relayed;
        let mut cost_micro_usd = 0;
        let metered = meter.map(Meter::finish);
        if let Some(metered) = &metered {
            if metered.model.is_some() {
                exchange.model = metered.model.clone();
            }
            let model = exchange.model.clone().unwrap_or_default();
            if let Some(usage) = metered.usage {
                cost_micro_usd = config.llm.pricing.cost_micro_usd(&model, &usage);
                let cost_usd = cost_micro_usd as f64 / 1e6;
                exchange.usage = Some(usage);
                exchange.cost_usd = Some(cost_usd);
                let team = exchange.team();
                shared.metrics.metered(team.as_deref().unwrap_or("-"), &model, &usage, cost_usd);
            }
            if let Some(error) = &metered.error {
                exchange.error = Some(format!("upstream error: {error}"));
            }
        }
        let seen = metered.as_ref().is_some_and(|m| m.usage.is_some());
        let incomplete = metered.as_ref().is_some_and(|m| !m.complete);
        // A successful response that told no usage and did not end as a whole message (compressed despite
        // `accept-encoding: identity`, over `MAX_JSON_BODY`, malformed, cut early) keeps its estimate charged:
        // budgets fail closed. (`count_tokens` answers a whole body without usage: free.)
        let succeeded = (200..300).contains(&exchange.status);
        let unread = !seen && incomplete && succeeded;
        let billed = match (seen, unread && reservation.is_some()) {
            (true, _) => "; billed for the usage seen",
            (false, true) => "; no usage seen, the estimate stays charged",
            (false, false) => "",
        };
        let cut = match end {
            End::Complete => {
                if incomplete && succeeded && exchange.error.is_none() {
                    exchange.error = Some(format!("response ended without a complete message to meter{billed}"));
                }
                None
            }
            End::UpstreamCut(reason) => {
                exchange.upstream_failure = Some("protocol");
                Some(format!("stream cut by the upstream ({reason}){billed}"))
            }
            End::ClientCut => Some(format!("stream cut by the client{billed}")),
            End::ShutdownCut => Some(format!("stream cut at shutdown (server.shutdown_grace ended){billed}")),
        };
        if let Some(cut) = cut {
            // After what already ended the response (a denied agent action), if anything did.
            exchange.error = Some(match exchange.error.take() {
                Some(before) => format!("{before}; then {cut}"),
                None => cut,
            });
        }
        if let Some(reservation) = &reservation {
            if unread {
                cost_micro_usd = reservation.estimate_micro_usd();
            }
        }
        async move {
            if let Some(reservation) = reservation {
                match reservation.settle(cost_micro_usd, shared.clock.now()).await {
                    Ok(ratios) => {
                        for (team, ratio) in ratios {
                            shared.metrics.budget_used(&team, ratio);
                        }
                    }
                    Err(error) => {
                        shared.metrics.state_error(shared.limiter.backend_name());
                        tracing::warn!(%error, id = %exchange.id, "spend not settled: the estimate stays charged");
                    }
                }
            }
            if let Some(admitted) = admitted {
                admitted.release().await;
            }
            finish(&shared, &peer, exchange).await
        }
    }
}
