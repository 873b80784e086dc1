//! The model-API sections of the config compiled: `upstreams`, `routing`, `intercept`, `dlp`, `pricing` and
//! `budgets`. Part of every config snapshot, so a reload swaps them with the rest.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use http::uri::{Authority, Scheme};

use super::file;
use super::teams::TeamSettings;
use crate::limits::budget::Budgets;
use crate::llm::dlp::Dlp;
use crate::llm::pricing::Pricing;
use crate::policy::RuleSet;
use crate::target::Target;

/// Everything intercepted and gateway requests need besides identity, destinations and limits.
#[derive(Debug)]
pub struct Llm {
    pub upstreams: BTreeMap<Arc<str>, Arc<ModelUpstream>>,
    pub routes: Vec<Route>,
    pub intercept: Option<Intercept>,
    pub paths: PathRules,
    /// Paths (without the query) whose requests are metered, DLP-scanned and model-checked.
    pub meter_paths: Vec<String>,
    pub max_body: u64,
    /// `intercept.telemetry`: whether telemetry calls inside intercepted tunnels are forwarded or answered here.
    pub telemetry: file::Telemetry,
    pub dlp: Option<Dlp>,
    pub pricing: Pricing,
    pub budgets: Budgets,
}

/// One entry of `upstreams`.
#[derive(Debug)]
pub struct ModelUpstream {
    pub name: Arc<str>,
    pub scheme: Scheme,
    pub authority: Authority,
    /// Where the connection goes (host and port of the URL).
    pub target: Target,
    /// A path prefix of the URL (`/anthropic`), empty for none; the request's path is appended.
    pub base_path: String,
    /// Sent as `x-api-key` in place of the client's credential.
    pub api_key: Option<http::HeaderValue>,
}

/// One `routing` entry.
#[derive(Debug)]
pub struct Route {
    pub listener: Option<String>,
    pub region: Option<String>,
    pub team: Option<String>,
    pub host: Option<String>,
    pub to: Arc<ModelUpstream>,
    /// `routing[N]`, for logs.
    pub name: Arc<str>,
}

/// What a routing decision may look at.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    pub listener: &'a str,
    pub teams: &'a [Arc<str>],
    pub team_settings: &'a BTreeMap<Arc<str>, TeamSettings>,
    /// The intercepted host; `None` on gateway listeners.
    pub host: Option<&'a str>,
    /// The region the caller's token names (`auth.oidc.region`); without one, its teams' regions apply.
    pub region: Option<&'a str>,
}

/// `intercept` compiled.
#[derive(Debug)]
pub struct Intercept {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub hosts: RuleSet,
    pub leaf_validity: Duration,
    pub leaf_cache: usize,
}

/// `intercept.paths` compiled: globs where `*` also matches `/`, matched without case on canonical paths.
#[derive(Debug)]
pub struct PathRules {
    allow: GlobSet,
    deny: GlobSet,
}

/// Why a path is refused: the rule that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathDenied {
    pub rule: Arc<str>,
}

impl Llm {
    /// Compiles the model-API sections; an error is a key path and a message.
    pub fn compile(parsed: &file::File, teams: &BTreeMap<Arc<str>, TeamSettings>) -> Result<Llm, (String, String)> {
        let mut upstreams = BTreeMap::new();
        for (name, upstream) in &parsed.upstreams {
            let compiled = ModelUpstream::compile(name, upstream).map_err(|m| (format!("upstreams.{name}.url"), m))?;
            upstreams.insert(Arc::from(name.as_str()), Arc::new(compiled));
        }
        let mut routes = Vec::with_capacity(parsed.routing.len());
        for (index, route) in parsed.routing.iter().enumerate() {
            let Some(to) = upstreams.get(route.to.as_str()) else {
                return Err((
                    format!("routing[{index}].to"),
                    format!("upstream {:?} is not defined under upstreams", route.to),
                ));
            };
            if let Some(team) = &route.when.team {
                if !teams.contains_key(team.as_str()) {
                    return Err((format!("routing[{index}].when.team"), format!("team {team:?} is not defined")));
                }
            }
            if let Some(listener) = &route.when.listener {
                if !parsed.listeners.iter().any(|l| &l.name == listener) {
                    return Err((
                        format!("routing[{index}].when.listener"),
                        format!("listener {listener:?} is not defined"),
                    ));
                }
            }
            routes.push(Route {
                listener: route.when.listener.clone(),
                region: route.when.region.clone(),
                team: route.when.team.clone(),
                host: route.when.host.as_ref().map(|h| h.to_ascii_lowercase()),
                to: to.clone(),
                name: format!("routing[{index}]").into(),
            });
        }
        let intercept = match &parsed.intercept {
            Some(section) if !section.hosts.is_empty() => Some(Intercept::compile(section)?),
            _ => None,
        };
        let default_paths = file::InterceptPaths::default();
        let paths_file = parsed.intercept.as_ref().map(|i| &i.paths).unwrap_or(&default_paths);
        let paths = PathRules::compile(paths_file)?;
        let meter_paths = match &parsed.intercept {
            Some(section) => section.meter_paths.clone(),
            None => file::default_meter_paths(),
        };
        let max_body = parsed.intercept.as_ref().map_or(32 << 20, |i| i.max_body.0);
        if max_body == 0 {
            return Err(("intercept.max_body".into(), "must be greater than zero".into()));
        }
        let dlp = match &parsed.dlp {
            Some(section) => Some(Dlp::compile(section).map_err(|(key, m)| (format!("dlp.{key}"), m))?),
            None => None,
        };
        let pricing = if parsed.pricing.is_empty() {
            Pricing::builtin()
        } else {
            Pricing::compile(&parsed.pricing).map_err(|(index, m)| (format!("pricing[{index}]"), m))?
        };
        let budgets = super::budgets::compile(teams, &parsed.budgets)?;
        let telemetry = parsed.intercept.as_ref().map_or(file::Telemetry::Pass, |i| i.telemetry);
        Ok(Llm { upstreams, routes, intercept, paths, meter_paths, max_body, telemetry, dlp, pricing, budgets })
    }

    /// The upstream for a request: the first route whose conditions all hold.
    pub fn route(&self, request: RouteRequest<'_>) -> Option<&Route> {
        self.routes.iter().find(|route| route.matches(&request))
    }

    /// Whether requests to `path` are metered (and DLP-scanned and model-checked).
    /// The path is canonical (`request::path`); letters compare without case, so that an upstream matching
    /// paths without case cannot be reached past the meter with `/V1/Messages`.
    pub fn is_metered(&self, path: &str) -> bool {
        self.meter_paths.iter().any(|p| p.eq_ignore_ascii_case(path))
    }

    /// Whether CONNECTs to `target` are intercepted.
    pub fn intercepts(&self, target: &Target) -> bool {
        self.intercept.as_ref().is_some_and(|i| i.hosts.first_match(target).is_some())
    }
}

impl Route {
    fn matches(&self, request: &RouteRequest<'_>) -> bool {
        let listener = self.listener.as_deref().is_none_or(|l| l == request.listener);
        let team = self.team.as_deref().is_none_or(|t| request.teams.iter().any(|own| &**own == t));
        let region = self.region.as_deref().is_none_or(|region| match request.region {
            Some(own) => own == region,
            None => request.teams.iter().any(|own| {
                request.team_settings.get(own).and_then(|s| s.region.as_deref()).is_some_and(|r| r == region)
            }),
        });
        let host = self.host.as_deref().is_none_or(|h| request.host == Some(h));
        listener && team && region && host
    }
}

impl ModelUpstream {
    fn compile(name: &str, upstream: &file::NamedUpstream) -> Result<ModelUpstream, String> {
        let uri: http::Uri = upstream.url.parse().map_err(|e| format!("invalid URL {:?}: {e}", upstream.url))?;
        let scheme = match uri.scheme_str() {
            Some("https") => Scheme::HTTPS,
            Some("http") => Scheme::HTTP,
            _ => return Err(format!("{:?}: write an http:// or https:// URL", upstream.url)),
        };
        let authority = uri.authority().cloned().ok_or_else(|| format!("{:?} names no host", upstream.url))?;
        if authority.as_str().contains('@') {
            return Err("credentials in the URL are not supported: use api_key".to_owned());
        }
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let target =
            Target::parse_authority(&format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(default_port)))
                .map_err(|e| e.to_string())?;
        if uri.query().is_some() {
            return Err("a query string is not supported in an upstream URL".to_owned());
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let api_key = match &upstream.api_key {
            Some(key) if key.is_empty() => None,
            Some(key) => {
                let mut value = http::HeaderValue::from_str(key).map_err(|_| "api_key holds invalid characters")?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(ModelUpstream { name: name.into(), scheme, authority, target, base_path, api_key })
    }
}

impl Intercept {
    fn compile(section: &file::Intercept) -> Result<Intercept, (String, String)> {
        let hosts = RuleSet::compile("intercept.hosts", &section.hosts)
            .map_err(|(index, e)| (format!("intercept.hosts[{index}]"), e.0))?;
        if section.leaf_validity.0 < Duration::from_secs(3600) {
            return Err(("intercept.leaf_validity".into(), "must be at least 1h".into()));
        }
        if section.leaf_cache == 0 {
            return Err(("intercept.leaf_cache".into(), "must be at least 1".into()));
        }
        Ok(Intercept {
            ca_cert: PathBuf::from(&section.ca.cert),
            ca_key: PathBuf::from(&section.ca.key),
            hosts,
            leaf_validity: section.leaf_validity.0,
            leaf_cache: section.leaf_cache,
        })
    }
}

impl PathRules {
    fn compile(paths: &file::InterceptPaths) -> Result<PathRules, (String, String)> {
        let set = |list: &[String], key: &str| -> Result<GlobSet, (String, String)> {
            let mut builder = GlobSetBuilder::new();
            for (index, pattern) in list.iter().enumerate() {
                if !pattern.starts_with('/') {
                    return Err((format!("intercept.paths.{key}[{index}]"), format!("{pattern:?} must start with /")));
                }
                let glob =
                    GlobBuilder::new(pattern).literal_separator(false).case_insensitive(true).build().map_err(|e| {
                        (format!("intercept.paths.{key}[{index}]"), format!("invalid glob {pattern:?}: {e}"))
                    })?;
                builder.add(glob);
            }
            builder.build().map_err(|e| (format!("intercept.paths.{key}"), e.to_string()))
        };
        Ok(PathRules { allow: set(&paths.allow, "allow")?, deny: set(&paths.deny, "deny")? })
    }

    /// Checks a path (without its query): a deny glob wins, then it must match an allow glob.
    pub fn check(&self, path: &str) -> Result<(), PathDenied> {
        if let Some(index) = self.deny.matches(path).first() {
            return Err(PathDenied { rule: format!("intercept.paths.deny[{index}]").into() });
        }
        if self.allow.is_match(path) {
            Ok(())
        } else {
            Err(PathDenied { rule: "intercept.paths.allow".into() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_rules_and_meter_paths_ignore_case() {
        let paths = file::InterceptPaths { allow: vec!["/v1/*".into()], deny: vec!["/v1/files*".into()] };
        let rules = PathRules::compile(&paths).expect("compiles");
        assert!(rules.check("/v1/messages").is_ok());
        assert!(rules.check("/V1/Messages").is_ok());
        assert_eq!(rules.check("/V1/FILES/x").unwrap_err().rule.as_ref(), "intercept.paths.deny[0]");
        assert_eq!(rules.check("/api/x").unwrap_err().rule.as_ref(), "intercept.paths.allow");
    }
}
