//! The phases every request runs first, whichever door it came through, in this order:
//!
//! 1. **identify**: a verified client certificate, the door's credential (`Proxy-Authorization`; `Authorization`
//!    or `x-api-key` on gateway listeners), the principal of the tunnel it arrived in, or the anonymous principal;
//!    a principal whose credential expired, or that a reload removed or changed, is refused;
//! 2. **audit health**: with `audit.on_failure: block`, nothing is admitted while records cannot be written;
//! 3. **destination**: the policy on the target (global and team deny rules, team hours, private-address guard,
//!    allow lists, default); a model-API request is routed first, and a configured upstream is held to the deny
//!    rules (names and CIDRs) and hours; every address the destination resolves to is checked before it is dialled;
//! 4. **limits**: rate limits and concurrency slots of the user, its teams and the organisation.
//!
//! A model-API request then runs the phases of `request::model` (path, body, model, DLP, budget).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::error::Error;
use super::finish::Exchange;
use crate::config::llm::{ModelUpstream, RouteRequest};
use crate::config::Config;
use crate::identity::{AuthError, Principal};
use crate::limits::{Admitted, StateError};
use crate::policy::Decision;
use crate::shared::Shared;
use crate::target::{Host, Target};

/// What a request presents to prove who sent it, by door.
#[derive(Debug, Clone, Copy)]
pub enum Credentials<'a> {
    /// The forward proxy (CONNECT and absolute-form): a verified client certificate wins over
    /// `Proxy-Authorization`.
    Proxy { certificate: Option<&'a Principal>, proxy_authorization: Option<&'a [u8]> },
    /// A request inside an intercepted tunnel: the principal its CONNECT established.
    Tunnel(&'a Principal),
    /// A gateway listener: a verified client certificate, else `Authorization: Bearer` or `x-api-key`.
    Api { certificate: Option<&'a Principal>, authorization: Option<&'a [u8]>, api_key: Option<&'a [u8]> },
}

/// What a request wants to reach.
#[derive(Debug, Clone, Copy)]
pub enum Destination<'a> {
    /// A host and port the client named (CONNECT, absolute-form): decided by name here, by address at the dial.
    Named(&'a Target),
    /// A model-API request: the host it names (inside a tunnel, in absolute form; none on a gateway listener),
    /// then the first matching route.
    Model { host: Option<&'a Target>, listener: &'a str },
}

/// Where an admitted model-API request goes.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// An entry of `upstreams`, chosen by a route.
    Configured(Arc<ModelUpstream>),
    /// The host the client named.
    Origin(Target),
}

impl Upstream {
    /// Where the connection goes.
    pub fn target(&self) -> &Target {
        match self {
            Upstream::Configured(upstream) => &upstream.target,
            Upstream::Origin(target) => target,
        }
    }
}

/// What an admitted request holds until it ends.
#[derive(Debug)]
pub struct Admission {
    /// Its concurrency slots.
    pub slots: Admitted,
    /// For a model-API request, where it goes.
    pub upstream: Option<Upstream>,
}

/// The first four phases, in order; fills in the exchange's principal and rule as it goes.
pub async fn admit(
    shared: &Shared,
    config: &Config,
    credentials: Credentials<'_>,
    destination: Destination<'_>,
    client: IpAddr,
    exchange: &mut Exchange,
) -> Result<Admission, Error> {
    let now = shared.clock.now();
    let principal = identify(shared, config, credentials, client, now).await?;
    exchange.principal = Some(principal.clone());
    let principal = &principal;
    if let Some(sink) = shared.auditor.unavailable_sink() {
        return Err(Error::AuditUnavailable { sink });
    }
    let upstream = match destination {
        Destination::Named(target) => {
            exchange.rule = Some(decide(config, target, principal, now)?);
            None
        }
        Destination::Model { host, listener } => {
            let upstream = route(shared, config, host, listener, principal, now, exchange).await?;
            Some(upstream)
        }
    };
    let slots = limit(shared, config, principal, now).await?;
    Ok(Admission { slots, upstream })
}

/// Phase 1: who sent the request, as the current config sees it at `now`. A failure is counted by method.
pub async fn identify(
    shared: &Shared,
    config: &Config,
    credentials: Credentials<'_>,
    client: IpAddr,
    now: SystemTime,
) -> Result<Principal, Error> {
    let identity = &config.identity;
    let identified = match credentials {
        // A verified client certificate is the stronger proof: it wins over any header.
        Credentials::Proxy { certificate: Some(principal), .. }
        | Credentials::Api { certificate: Some(principal), .. } => identity.refresh(principal, now),
        Credentials::Proxy { certificate: None, proxy_authorization } => {
            identity.identify(proxy_authorization, client, now, &shared.verifiers).await
        }
        Credentials::Tunnel(principal) => identity.refresh(principal, now),
        Credentials::Api { certificate: None, authorization, api_key } => {
            identity.identify_api(authorization, api_key, client, now, &shared.verifiers).await
        }
    };
    identified.map_err(|error: AuthError| {
        // A check the verifiers had no room for is not a failed sign-in (`tollgate_password_checks_total` counts it).
        if error != AuthError::Busy {
            shared.metrics.auth_failure(error.method());
            // No credentials at all is the first leg of a challenge, not a failed sign-in.
            if error != AuthError::Missing {
                shared.alerts.auth_failure(client, now);
            }
        }
        Error::Auth(error)
    })
}

/// Phase 3 for a named target: the whole policy, by name (addresses are checked when dialled).
fn decide(config: &Config, target: &Target, principal: &Principal, now: SystemTime) -> Result<Arc<str>, Error> {
    match config.policy.decide(target, &principal.teams, now) {
        Decision::Allow { rule } => Ok(rule),
        Decision::Deny { rule, reason } => Err(Error::Denied { target: target.to_string(), rule, reason }),
    }
}

/// Phase 3 for a model-API request: the named host's policy, the route, the configured upstream's deny rules and
/// hours, and the deny CIDRs of every address the upstream resolves to (or was dialled at).
async fn route(
    shared: &Shared,
    config: &Config,
    host: Option<&Target>,
    listener: &str,
    principal: &Principal,
    now: SystemTime,
    exchange: &mut Exchange,
) -> Result<Upstream, Error> {
    if let Some(target) = host {
        exchange.target = Some(target.clone());
        exchange.rule = Some(decide(config, target, principal, now)?);
    }
    let host_name = host.map(|target| match &target.host {
        Host::Name(name) => name.to_string(),
        Host::Ip(ip) => ip.to_string(),
    });
    let route = config.llm.route(RouteRequest {
        listener,
        teams: &principal.teams,
        team_settings: &config.teams,
        host: host_name.as_deref(),
        region: principal.region.as_deref(),
    });
    let upstream = match (route, host) {
        (Some(route), _) => {
            let upstream = &route.to;
            if let Err(Decision::Deny { rule, reason }) =
                config.policy.check_upstream(&upstream.target, &principal.teams, now)
            {
                return Err(Error::Denied { target: upstream.target.to_string(), rule, reason });
            }
            if exchange.target.is_none() {
                // A gateway request is recorded with the upstream it goes to.
                exchange.target = Some(upstream.target.clone());
                exchange.rule = Some(route.name.clone());
            }
            Upstream::Configured(upstream.clone())
        }
        (None, Some(target)) => Upstream::Origin(target.clone()),
        (None, None) => return Err(Error::NoRoute { listener: listener.into() }),
    };
    let configured = matches!(upstream, Upstream::Configured(_));
    let target = upstream.target();
    for &address in shared.models.addresses(config, target, configured).await?.iter() {
        let checked = if configured {
            config.policy.check_upstream_address(address, target.port, &principal.teams)
        } else {
            config.policy.check_address(address, target.port, &principal.teams)
        };
        if let Err(Decision::Deny { rule, reason }) = checked {
            return Err(Error::Denied { target: format!("{target} ({address})"), rule, reason });
        }
    }
    Ok(upstream)
}

/// Phase 4: one request of the principal's plan from the rate limits and its concurrency slots, or the limit
/// that refuses; with the state backend unreachable, `state.on_error` decides.
pub async fn limit(
    shared: &Shared,
    config: &Config,
    principal: &Principal,
    now: SystemTime,
) -> Result<Admitted, Error> {
    match shared.limiter.admit(config.limits.plan(principal), now).await {
        Ok(Ok(admitted)) => Ok(admitted),
        Ok(Err(refusal)) => {
            shared.metrics.rate_limited(refusal.scope().label());
            Err(Error::from(refusal))
        }
        Err(error) => state_unreachable(shared, config, error, "limits").map(|()| Admitted::none()),
    }
}

/// The one answer to a state backend that cannot be reached (limits, budgets), counted either way: with
/// `state.on_error: allow` the request goes on unchecked (and a warning says which check was skipped), else it is
/// refused with 503.
pub fn state_unreachable(shared: &Shared, config: &Config, error: StateError, skipped: &str) -> Result<(), Error> {
    shared.metrics.state_error(shared.limiter.backend_name());
    if config.state.allow_on_error {
        tracing::warn!(%error, "{skipped} not enforced: the state backend is unreachable (state.on_error: allow)");
        Ok(())
    } else {
        Err(Error::StateUnavailable(error))
    }
}
