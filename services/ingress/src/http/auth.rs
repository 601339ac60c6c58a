//! Who is calling, for which tenant, and whether they may.
//!
//! Every request passes, in order:
//!
//! 1. the per-peer rate limit (by IP address, before anything is looked up);
//! 2. for every route but `/healthz`: `Authorization: Bearer <key>` (401
//!    without a valid one), the per-key rate limit, the tenant (the key's;
//!    only an operator key may name another with `X-Colony-Tenant`, 403
//!    otherwise), and the route's scope from [`access`], the one table of
//!    what each route needs (403 without it);
//! 3. for a request with a body: `Content-Type: application/json` (415), so
//!    that a web page cannot post to a Colony on the same machine.
//!
//! The handler then finds the [`Caller`] among the request's extensions;
//! every query it makes is filtered by `caller.tenant`, so another tenant's
//! task, employee, memory, audit row, credential or key is a 404, exactly as
//! if it did not exist.
//!
//! Keys are looked up by hash and kept for [`KEY_CACHE_TTL`]: a key revoked
//! through this process is forgotten at once, through another within that
//! time.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use store::{ApiKey, Scope, Store};
use uuid::Uuid;

use super::error::Refusal;
use super::AppState;

/// How long a looked-up key is trusted without asking Postgres again.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// Keys held in the cache at most (it is emptied when full).
const KEY_CACHE_MAX: usize = 10_000;

/// A rate: so many requests a second, with bursts up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    pub(crate) fn quota(self) -> Quota {
        let per = NonZeroU32::new(self.per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.burst.max(self.per_second).max(1)).unwrap_or(per);
        Quota::per_second(per).allow_burst(burst)
    }
}

/// The HTTP API's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Per client IP address, before authentication.
    pub per_peer: Rate,
    /// Per API key.
    pub per_key: Rate,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_peer: Rate {
                per_second: 2000,
                burst: 4000,
            },
            per_key: Rate {
                per_second: 1000,
                burst: 2000,
            },
        }
    }
}

/// Who a request acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub key_id: Uuid,
    /// The tenant every query of this request is filtered by.
    pub tenant: String,
    pub scope: Scope,
}

impl Caller {
    pub fn is_operator(&self) -> bool {
        self.scope == Scope::Operator
    }

    /// Admin keys (and operator keys) may do what needs more than the
    /// route's own scope (an employee's quota above its role's).
    pub fn require(&self, scope: Scope, what: &str) -> Result<(), Refusal> {
        if self.scope >= scope {
            Ok(())
        } else {
            Err(Refusal::forbidden(format!(
                "{what} needs a key with scope {scope}; this key's scope is {}",
                self.scope
            )))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, Refusal> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            // A route outside the authenticated table: refuse, loudly.
            tracing::error!(path = %parts.uri.path(), "a handler asked for the caller on a route that is not authenticated");
            Refusal::forbidden("this route is not open to API keys")
        })
    }
}

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Open,
    Needs(Scope),
}

/// The one table of the HTTP API's routes and what each needs: every
/// route the router serves is here (the tenancy test calls each), and the
/// OpenAPI description documents exactly these.
pub const ROUTES: &[(&str, &str, Access)] = {
    use Access::{Needs, Open};
    use Scope::{Admin, Operator, Read, Submit};
    &[
        ("GET", "/healthz", Open),
        ("GET", "/", Open),
        ("GET", "/ui/{file}", Open),
        ("GET", "/openapi.json", Open),
        ("GET", "/v1/whoami", Needs(Read)),
        ("GET", "/v1/overview", Needs(Read)),
        ("GET", "/v1/feed", Needs(Read)),
        ("GET", "/v1/tasks", Needs(Read)),
        ("GET", "/v1/streams", Needs(Operator)),
        ("POST", "/v1/tasks", Needs(Submit)),
        ("GET", "/v1/tasks/{id}", Needs(Read)),
        ("GET", "/v1/tasks/{id}/events", Needs(Read)),
        ("POST", "/v1/tasks/{id}/cancel", Needs(Submit)),
        ("POST", "/v1/employees", Needs(Submit)),
        ("GET", "/v1/employees", Needs(Read)),
        ("GET", "/v1/employees/{id}", Needs(Read)),
        ("DELETE", "/v1/employees/{id}", Needs(Admin)),
        ("GET", "/v1/employees/{id}/memory", Needs(Read)),
        ("POST", "/v1/employees/{id}/pause", Needs(Submit)),
        ("POST", "/v1/employees/{id}/resume", Needs(Submit)),
        ("POST", "/v1/employees/{id}/score", Needs(Admin)),
        ("GET", "/v1/audit", Needs(Admin)),
        ("POST", "/v1/credentials", Needs(Admin)),
        ("GET", "/v1/credentials", Needs(Admin)),
        ("DELETE", "/v1/credentials/{id}", Needs(Admin)),
        ("POST", "/v1/keys", Needs(Admin)),
        ("GET", "/v1/keys", Needs(Admin)),
        ("DELETE", "/v1/keys/{id}", Needs(Admin)),
        ("GET", "/v1/workers", Needs(Operator)),
        ("GET", "/metrics", Needs(Operator)),
        ("POST", "/v1/goals", Needs(Submit)),
        ("GET", "/v1/goals", Needs(Read)),
        ("GET", "/v1/goals/{id}", Needs(Read)),
        ("GET", "/v1/goals/{id}/events", Needs(Read)),
        ("POST", "/v1/goals/{id}/pause", Needs(Submit)),
        ("POST", "/v1/goals/{id}/resume", Needs(Submit)),
        ("POST", "/v1/goals/{id}/approve", Needs(Submit)),
        ("POST", "/v1/goals/{id}/cancel", Needs(Submit)),
        ("POST", "/v1/goals/{id}/replan", Needs(Submit)),
        ("POST", "/v1/goals/{id}/decide", Needs(Submit)),
        ("GET", "/v1/leaderboard", Needs(Read)),
        ("POST", "/v1/webhooks", Needs(Admin)),
        ("GET", "/v1/webhooks", Needs(Admin)),
        ("DELETE", "/v1/webhooks/{id}", Needs(Admin)),
        ("GET", "/v1/webhooks/{id}/deliveries", Needs(Admin)),
        ("POST", "/v1/schedules", Needs(Submit)),
        ("GET", "/v1/schedules", Needs(Read)),
        ("GET", "/v1/schedules/{id}", Needs(Read)),
        ("PATCH", "/v1/schedules/{id}", Needs(Submit)),
        ("DELETE", "/v1/schedules/{id}", Needs(Submit)),
        ("POST", "/v1/schedules/{id}/pause", Needs(Submit)),
        ("POST", "/v1/schedules/{id}/resume", Needs(Submit)),
        ("POST", "/v1/schedules/{id}/trigger", Needs(Submit)),
        ("POST", "/v1/schedules/{id}/backfill", Needs(Submit)),
        ("GET", "/v1/schedules/{id}/fires", Needs(Read)),
        ("GET", "/v1/dlq", Needs(Admin)),
        ("POST", "/v1/dlq/replay", Needs(Admin)),
        ("POST", "/v1/dlq/discard", Needs(Admin)),
        ("POST", "/v1/dlq/{id}/replay", Needs(Admin)),
        ("POST", "/v1/dlq/{id}/discard", Needs(Admin)),
    ]
};

/// What the route `path` (its pattern) needs for `method`; `None` for a
/// method the route does not take.
pub fn access(method: &Method, path: &str) -> Option<Access> {
    ROUTES
        .iter()
        .find(|(m, p, _)| *m == method.as_str() && *p == path)
        .map(|(_, _, a)| *a)
}

fn limited(by: &str) {
    telemetry::get().limited(by);
}

/// Rate limiters and the key cache, shared by every request.
pub struct Gate {
    store: Store,
    default_tenant: String,
    peers: DefaultKeyedRateLimiter<IpAddr>,
    keys: DefaultKeyedRateLimiter<Uuid>,
    cache: Mutex<HashMap<Vec<u8>, (ApiKey, Instant)>>,
    /// Keys revoked through this process: never cached again (a lookup in
    /// flight while one is revoked must not put it back).
    revoked: Mutex<std::collections::HashSet<Uuid>>,
}

impl Gate {
    pub fn new(store: Store, default_tenant: String, limits: Limits) -> Gate {
        Gate {
            store,
            default_tenant,
            peers: DefaultKeyedRateLimiter::keyed(limits.per_peer.quota()),
            keys: DefaultKeyedRateLimiter::keyed(limits.per_key.quota()),
            cache: Mutex::new(HashMap::new()),
            revoked: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Forget limiter state of peers and keys not seen lately.
    pub fn tidy(&self) {
        self.peers.retain_recent();
        self.keys.retain_recent();
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (_, at)| at.elapsed() < KEY_CACHE_TTL);
    }

    /// Drop a revoked key from the cache at once.
    pub fn forget(&self, key_id: Uuid) {
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key_id);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (k, _)| k.id != key_id);
    }

    fn check_peer(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.peers.check_key(&peer_key(ip)).map_err(|not_until| {
            limited("peer");
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Refusal::too_many(
                format!(
                    "too many requests from {ip}; wait {} s and retry",
                    secs(wait)
                ),
                secs(wait),
            )
        })
    }

    fn check_key(&self, key: &ApiKey) -> Result<(), Refusal> {
        self.keys.check_key(&key.id).map_err(|not_until| {
            limited("key");
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Refusal::too_many(
                format!(
                    "too many requests with key {}; wait {} s and retry",
                    key.prefix,
                    secs(wait)
                ),
                secs(wait),
            )
        })
    }

    async fn key(&self, secret: &str) -> Result<ApiKey, Refusal> {
        let hash = store::keys::key_hash(secret);
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&hash)
                .filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL)
                .map(|(k, _)| k.clone())
        };
        if let Some(k) = cached {
            return Ok(k);
        }
        let Some(key) = self.store.key_by_secret(secret).await? else {
            return Err(Refusal::unauthenticated(
                "the API key is not valid (unknown or revoked); send Authorization: Bearer <key> with a key from colony keys create",
            ));
        };
        if self
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key.id)
        {
            return Err(Refusal::unauthenticated(
                "the API key is not valid (unknown or revoked); send Authorization: Bearer <key> with a key from colony keys create",
            ));
        }
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= KEY_CACHE_MAX {
                cache.clear();
            }
            cache.insert(hash, (key.clone(), Instant::now()));
        }
        let (store, id) = (self.store.clone(), key.id);
        tokio::spawn(async move {
            if let Err(e) = store.touch_key(id).await {
                tracing::debug!(key = %id, error = %e, "last_used_at not updated");
            }
        });
        Ok(key)
    }

    /// The tenant a request with `key` acts for.
    fn tenant(&self, key: &ApiKey, headers: &HeaderMap) -> Result<String, Refusal> {
        let asked =
            match headers.get("x-colony-tenant") {
                None => None,
                Some(v) => Some(v.to_str().map_err(|_| {
                    Refusal::bad("the X-Colony-Tenant header must be visible ASCII")
                })?),
            };
        let tenant = match (key.scope, asked) {
            (Scope::Operator, Some(t)) => t.to_string(),
            (Scope::Operator, None) => self.default_tenant.clone(),
            (_, None) => key.tenant.clone(),
            (_, Some(t)) if t == key.tenant => key.tenant.clone(),
            (_, Some(_)) => {
                return Err(Refusal::forbidden(format!(
                    "only an operator key may choose a tenant with X-Colony-Tenant; this key belongs to tenant {}",
                    key.tenant
                )))
            }
        };
        if subjects::is_token(&tenant) {
            Ok(tenant)
        } else {
            Err(Refusal::bad(format!(
                "tenant {tenant:?} is not valid; use 1-64 letters, digits, '-' or '_'"
            )))
        }
    }
}

/// What the per-peer limit counts by: the address, and for IPv6 its /64
/// (a host gets a whole /64 and could walk it).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Whole seconds to wait, at least one.
fn secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The bearer key of a request, if it sent one.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Refusal> {
    let Some(v) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = v
        .to_str()
        .map_err(|_| Refusal::unauthenticated("the Authorization header must be visible ASCII"))?;
    match text.split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() => {
            Ok(Some(key.trim()))
        }
        _ => Err(Refusal::unauthenticated(
            "the Authorization header must be Bearer <key>",
        )),
    }
}

/// True when the request carries a body.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

fn json_content(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// The per-peer limit, for every request (an outer layer).
pub async fn limit_peers(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if let Err(r) = s.0.gate.check_peer(peer.ip()) {
        return r.into_response();
    }
    next.run(req).await
}

/// Authentication, tenant, scope and content type, for every matched route
/// (a route layer, so the matched path is known).
pub async fn authorize(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    match admit(&s.0.gate, &mut req) {
        Ok(None) => next.run(req).await,
        Ok(Some(pending)) => match pending.finish(&s.0.gate).await {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                next.run(req).await
            }
            Err(r) => r.into_response(),
        },
        Err(r) => r.into_response(),
    }
}

/// What is left to check once the key is looked up.
struct Pending {
    secret: String,
    needs: Scope,
    headers: HeaderMap,
    body: bool,
    json: bool,
}

impl Pending {
    async fn finish(self, gate: &Gate) -> Result<Caller, Refusal> {
        let key = gate.key(&self.secret).await?;
        gate.check_key(&key)?;
        let tenant = gate.tenant(&key, &self.headers)?;
        if key.scope < self.needs {
            return Err(Refusal::forbidden(format!(
                "this needs a key with scope {}; this key's scope is {}",
                self.needs, key.scope
            )));
        }
        if self.body && !self.json {
            return Err(Refusal::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        Ok(Caller {
            key_id: key.id,
            tenant,
            scope: key.scope,
        })
    }
}

/// The synchronous part: route, method and bearer. `Ok(None)` for an open
/// route.
fn admit(_gate: &Gate, req: &mut Request) -> Result<Option<Pending>, Refusal> {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let needs = match access(req.method(), &path) {
        Some(Access::Open) => return Ok(None),
        Some(Access::Needs(s)) => s,
        None => {
            return Err(Refusal::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "{path} does not take {}; see the README for the API",
                    req.method()
                ),
            ))
        }
    };
    let headers = req.headers();
    let Some(secret) = bearer(headers)? else {
        return Err(Refusal::unauthenticated(
            "this endpoint needs an API key: send Authorization: Bearer <key> (colony keys create makes one)",
        ));
    };
    Ok(Some(Pending {
        secret: secret.to_string(),
        needs,
        body: has_body(headers),
        json: json_content(headers),
        headers: headers.clone(),
    }))
}

/// Forgets stale limiter and cache entries every minute, until dropped.
pub fn spawn_tidying(gate: Arc<Gate>, stop: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tick.tick() => gate.tidy(),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn every_route_has_an_entry_and_only_health_and_the_dashboard_files_are_open() {
        let routes = [
            ("GET", "/healthz", Some(Access::Open)),
            ("GET", "/", Some(Access::Open)),
            ("GET", "/ui/{file}", Some(Access::Open)),
            ("POST", "/", None),
            ("GET", "/v1/overview", Some(Access::Needs(Scope::Read))),
            ("GET", "/v1/streams", Some(Access::Needs(Scope::Operator))),
            ("POST", "/v1/tasks", Some(Access::Needs(Scope::Submit))),
            ("GET", "/v1/tasks/{id}", Some(Access::Needs(Scope::Read))),
            ("DELETE", "/v1/tasks/{id}", None),
            ("GET", "/v1/audit", Some(Access::Needs(Scope::Admin))),
            ("GET", "/v1/workers", Some(Access::Needs(Scope::Operator))),
            (
                "DELETE",
                "/v1/employees/{id}",
                Some(Access::Needs(Scope::Admin)),
            ),
            ("GET", "/v1/nothing", None),
        ];
        for (m, p, want) in routes {
            assert_eq!(access(&m.parse().unwrap(), p), want, "{m} {p}");
        }
    }

    #[test]
    fn bearer_keys_and_json_bodies_are_recognised() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Ok(None));
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer  colony_x "),
        );
        assert_eq!(bearer(&h), Ok(Some("colony_x")));
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h).unwrap_err().status, 401);
        assert!(!has_body(&h));
        h.insert("content-length", HeaderValue::from_static("3"));
        assert!(has_body(&h) && !json_content(&h));
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(json_content(&h));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        assert!(!json_content(&h));
    }

    #[test]
    fn a_v6_peer_is_limited_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(peer_key(v4), v4);
        assert_eq!(peer_key("::ffff:127.0.0.1".parse().unwrap()), v4);
    }

    #[test]
    fn waits_round_up_to_whole_seconds() {
        assert_eq!(secs(Duration::from_millis(1)), 1);
        assert_eq!(secs(Duration::from_secs(2)), 2);
        assert_eq!(secs(Duration::from_millis(2001)), 3);
    }
}
