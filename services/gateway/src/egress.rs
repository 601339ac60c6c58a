//! The way out of the container: `POST /v1/fetch`, `CONNECT` tunnels and
//! absolute-form plain-http requests, each only to the role's egress
//! allowlist, each audited as [`EGRESS_ACTION`].
//!
//! Always refused, listed or not: link-local addresses (169.254.0.0/16,
//! fe80::/10, among them the cloud metadata address 169.254.169.254), the
//! other known metadata addresses (fd00:ec2::254, 100.100.100.200) and the
//! unspecified address. A host *name* must also resolve to something other
//! than those or loopback (a wildcard entry must not reach the worker's
//! own services); to reach a loopback service, list its IP address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use subjects::gateway::{FetchRequest, FetchResponse};
use tokio::net::TcpStream;

use crate::backend::{AuditOutcome, EGRESS_ACTION};
use crate::chat::error_chain;
use crate::reply::{self, error, one_line};
use crate::run::Run;
use crate::{Inner, Shared};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
const FETCH_REQUEST_MAX: usize = 1024 * 1024;

/// The role's allowlist, normalised once per run.
#[derive(Debug, Default)]
pub(crate) struct EgressPolicy {
    exact: Vec<String>,
    /// `.example.com` for `*.example.com`.
    suffixes: Vec<String>,
}

impl EgressPolicy {
    pub(crate) fn new(patterns: &[String]) -> EgressPolicy {
        let mut policy = EgressPolicy::default();
        for p in patterns {
            match p.trim().strip_prefix("*.") {
                Some(suffix) => {
                    let suffix = normalize_host(suffix);
                    if !suffix.is_empty() {
                        policy.suffixes.push(format!(".{suffix}"));
                    }
                }
                None => {
                    let host = normalize_host(p);
                    if !host.is_empty() {
                        policy.exact.push(host);
                    }
                }
            }
        }
        policy
    }

    /// `host` must be normalised.
    pub(crate) fn allows(&self, host: &str) -> bool {
        self.exact.iter().any(|e| e == host)
            || self
                .suffixes
                .iter()
                .any(|s| host.len() > s.len() && host.ends_with(s.as_str()))
    }
}

/// Lower case, no trailing dot, no IPv6 brackets, IP addresses in their
/// canonical text.
pub(crate) fn normalize_host(host: &str) -> String {
    let h = host.trim().trim_end_matches('.');
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    match h.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => h.to_ascii_lowercase(),
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn target_of(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Never reachable, whatever the allowlist says.
fn forbidden_ip(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4 == Ipv4Addr::new(100, 100, 100, 200)
        }
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.is_unspecified()
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

/// What a host *name* may resolve to.
fn name_may_reach(ip: IpAddr) -> bool {
    !forbidden_ip(ip) && !ip.to_canonical().is_loopback()
}

/// May the run reach `host` (normalised)? `Ok` carries the address when the
/// host is an IP address; `Err` the sentence of the 403.
fn decide(run: &Run, host: &str) -> Result<Option<IpAddr>, String> {
    let ip = host.parse::<IpAddr>().ok();
    if ip.is_some_and(forbidden_ip) {
        return Err(format!(
            "host {host} is a link-local or cloud metadata address, which no role may reach"
        ));
    }
    if !run.egress.allows(host) {
        return Err(format!(
            "host {host} is not in the egress allowlist of role {}",
            run.ctx.role
        ));
    }
    Ok(ip)
}

/// A host name that resolves only to addresses a name may not reach.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(String);

/// Resolves `host`, keeping only addresses a host name may reach.
async fn resolve_guarded(host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
    let all: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ResolveError::Failed(format!("{host} could not be resolved: {e}")))?
        .collect();
    let reachable: Vec<SocketAddr> = all
        .iter()
        .copied()
        .filter(|a| name_may_reach(a.ip()))
        .collect();
    if reachable.is_empty() {
        return Err(if all.is_empty() {
            ResolveError::Failed(format!("{host} resolves to no address"))
        } else {
            ResolveError::Refused(Refused(format!(
                "host {host} resolves only to loopback, link-local or metadata addresses, which the gateway refuses for a host name"
            )))
        });
    }
    Ok(reachable)
}

enum ResolveError {
    Refused(Refused),
    Failed(String),
}

/// The egress client's resolver: [`resolve_guarded`] for every name
/// (reqwest does not resolve IP addresses, which [`decide`] checks).
pub(crate) struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            match resolve_guarded(&host, 0).await {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err(ResolveError::Refused(r)) => {
                    Err(Box::new(r) as Box<dyn std::error::Error + Send + Sync>)
                }
                Err(ResolveError::Failed(s)) => Err(s.into()),
            }
        })
    }
}

/// The refusal in a reqwest error's chain, if that is why it failed.
fn refusal_in(e: &reqwest::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r.0.clone());
        }
        cur = err.source();
    }
    None
}

/// `scheme://host:port/path` of a URL: no credentials, no query.
fn url_for_audit(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    let port = url.port_or_known_default().unwrap_or(0);
    format!("{}://{}{}", url.scheme(), target_of(host, port), url.path())
}

/// Headers that belong to one connection, not to the request.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Names listed in a `Connection` header (also hop-by-hop).
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(axum::http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Vault credentials for `url`, as headers (values marked sensitive).
struct Vault {
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The secret values, to scrub from what goes back to the container.
    secrets: Vec<String>,
}

impl Vault {
    async fn load(gw: &Inner, run: &Run, url: &str) -> Result<Vault, String> {
        let creds = gw
            .backend
            .credentials_for(&run.ctx.tenant, url)
            .await
            .map_err(|e| {
                tracing::error!(run = %run.ctx.run_id, "gateway: could not read the vault: {e}");
                "the gateway could not read the vault's credentials".to_string()
            })?;
        let mut vault = Vault {
            headers: Vec::with_capacity(creds.len()),
            secrets: Vec::with_capacity(creds.len()),
        };
        for (name, value) in creds {
            let (Ok(n), Ok(mut v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) else {
                tracing::error!(
                    tenant = %run.ctx.tenant,
                    header = %name,
                    "gateway: a vault credential is not a valid header and is skipped"
                );
                continue;
            };
            v.set_sensitive(true);
            vault.headers.push((n, v));
            if value.len() >= 4 {
                vault.secrets.push(value);
            }
        }
        Ok(vault)
    }

    fn names(&self, name: &HeaderName) -> bool {
        self.headers.iter().any(|(n, _)| n == name)
    }

    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "[redacted]");
            }
        }
        out
    }

    fn scrub_headers(&self, headers: &mut HeaderMap) {
        if self.secrets.is_empty() {
            return;
        }
        for value in headers.values_mut() {
            let text = String::from_utf8_lossy(value.as_bytes());
            if self.secrets.iter().any(|s| text.contains(s.as_str())) {
                *value = HeaderValue::from_static("[redacted]");
            }
        }
    }
}

/// `POST /v1/fetch`.
pub(crate) async fn fetch(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    let Some(run) = shared.current() else {
        return reply::no_run();
    };
    let gw = &shared.gw;
    let bytes = match reply::read_body(body, FETCH_REQUEST_MAX).await {
        Ok(b) => b,
        Err((status, sentence)) => return error(status, sentence),
    };
    let req: FetchRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the fetch request is not valid: {e}"),
            )
        }
    };
    let url = match reqwest::Url::parse(&req.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the fetch URL {} must be http or https with a host",
                    one_line(&req.url, 200)
                ),
            )
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the fetch URL {} does not parse: {e}",
                    one_line(&req.url, 200)
                ),
            )
        }
    };
    let host = normalize_host(url.host_str().unwrap_or_default());
    let target = target_of(&host, url.port_or_known_default().unwrap_or(0));
    let shown = url_for_audit(&url);
    let audit =
        |outcome, detail: &str| run.audit(gw, EGRESS_ACTION, Some(target.clone()), outcome, detail);

    if let Some(reason) = run.over_quota() {
        audit(AuditOutcome::Denied, &format!("fetch {shown}: {reason}"));
        return reply::over_quota(reason);
    }
    if let Err(sentence) = decide(&run, &host) {
        audit(AuditOutcome::Denied, &format!("fetch {shown}: {sentence}"));
        return error(StatusCode::FORBIDDEN, sentence);
    }
    let method = match req.method.as_deref().map(str::trim) {
        None | Some("") => Method::GET,
        Some(m) => match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(m) if m != Method::CONNECT => m,
            _ => {
                let sentence = format!(
                    "the fetch method {} is not an HTTP method the gateway sends",
                    one_line(m, 40)
                );
                audit(AuditOutcome::Failed, &sentence);
                return error(StatusCode::BAD_REQUEST, sentence);
            }
        },
    };
    let vault = match Vault::load(gw, &run, url.as_str()).await {
        Ok(v) => v,
        Err(sentence) => {
            audit(AuditOutcome::Failed, &format!("fetch {shown}: {sentence}"));
            return error(StatusCode::INTERNAL_SERVER_ERROR, sentence);
        }
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len() + vault.headers.len());
    for (name, value) in &req.headers {
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            let sentence = format!(
                "the fetch header {} is not a valid HTTP header",
                one_line(name, 60)
            );
            audit(AuditOutcome::Failed, &sentence);
            return error(StatusCode::BAD_REQUEST, sentence);
        };
        if hop_by_hop(&n) || n == HOST || n == CONTENT_LENGTH || vault.names(&n) {
            continue;
        }
        headers.append(n, v);
    }
    for (n, v) in &vault.headers {
        headers.insert(n.clone(), v.clone());
    }
    let mut outbound = gw
        .egress
        .request(method.clone(), url.clone())
        .headers(headers)
        .timeout(FETCH_TIMEOUT);
    if let Some(body) = req.body {
        outbound = outbound.body(body);
    }
    let resp = match outbound.send().await {
        Ok(r) => r,
        Err(e) => return egress_failure(&run, gw, &target, &format!("fetch {method} {shown}"), e),
    };
    let status = resp.status();
    let mut resp_headers = resp.headers().clone();
    vault.scrub_headers(&mut resp_headers);
    let limit = gw.limits.fetch_max_bytes;
    let mut kept = Vec::with_capacity(limit.min(64 * 1024));
    let mut truncated = false;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                let room = limit - kept.len();
                if chunk.len() > room {
                    kept.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                kept.extend_from_slice(&chunk);
            }
            Err(e) => {
                return egress_failure(&run, gw, &target, &format!("fetch {method} {shown}"), e)
            }
        }
    }
    audit(
        AuditOutcome::Allowed,
        &format!(
            "fetch {method} {shown} answered {}{}",
            status.as_u16(),
            if truncated { " (truncated)" } else { "" }
        ),
    );
    reply::json(
        StatusCode::OK,
        &FetchResponse {
            status: status.as_u16(),
            headers: resp_headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: vault.scrub(&String::from_utf8_lossy(&kept)),
            truncated,
        },
    )
}

/// A request the egress client could not complete: 403 when the name
/// resolved only to refused addresses, else 502. Audited.
fn egress_failure(run: &Run, gw: &Inner, target: &str, what: &str, e: reqwest::Error) -> Response {
    let (outcome, status, sentence) = match refusal_in(&e) {
        Some(refusal) => (AuditOutcome::Denied, StatusCode::FORBIDDEN, refusal),
        None => (
            AuditOutcome::Failed,
            StatusCode::BAD_GATEWAY,
            format!(
                "{target} could not be reached: {}",
                error_chain(&e.without_url())
            ),
        ),
    };
    run.audit(
        gw,
        EGRESS_ACTION,
        Some(target.to_string()),
        outcome,
        &format!("{what}: {sentence}"),
    );
    error(status, sentence)
}

/// `CONNECT host:port`: a byte tunnel to an allowed host (TLS end to end,
/// so no credential is added).
pub(crate) async fn connect(shared: Arc<Shared>, req: Request<Incoming>) -> Response {
    let Some(run) = shared.current() else {
        return reply::no_run();
    };
    let gw = &shared.gw;
    let Some(authority) = req.uri().authority().cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            "a CONNECT request needs a host:port target",
        );
    };
    let host = normalize_host(authority.host());
    let Some(port) = authority.port_u16() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "the CONNECT target {} has no port",
                one_line(authority.as_str(), 200)
            ),
        );
    };
    let target = target_of(&host, port);
    let audit =
        |outcome, detail: &str| run.audit(gw, EGRESS_ACTION, Some(target.clone()), outcome, detail);
    if let Some(reason) = run.over_quota() {
        audit(AuditOutcome::Denied, &format!("CONNECT: {reason}"));
        return reply::over_quota(reason);
    }
    let ip = match decide(&run, &host) {
        Ok(ip) => ip,
        Err(sentence) => {
            audit(AuditOutcome::Denied, &format!("CONNECT: {sentence}"));
            return error(StatusCode::FORBIDDEN, sentence);
        }
    };
    let addrs = match ip {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => match resolve_guarded(&host, port).await {
            Ok(a) => a,
            Err(ResolveError::Refused(Refused(sentence))) => {
                audit(AuditOutcome::Denied, &format!("CONNECT: {sentence}"));
                return error(StatusCode::FORBIDDEN, sentence);
            }
            Err(ResolveError::Failed(why)) => {
                let sentence = format!("{target} could not be reached: {why}");
                audit(AuditOutcome::Failed, &format!("CONNECT: {sentence}"));
                return error(StatusCode::BAD_GATEWAY, sentence);
            }
        },
    };
    let upstream = match connect_any(&addrs).await {
        Ok(s) => s,
        Err(why) => {
            let sentence = format!("{target} could not be reached: {why}");
            audit(AuditOutcome::Failed, &format!("CONNECT: {sentence}"));
            return error(StatusCode::BAD_GATEWAY, sentence);
        }
    };
    let peer = upstream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    audit(
        AuditOutcome::Allowed,
        &format!("CONNECT tunnel opened to {peer}"),
    );

    let ended = run.ended.clone();
    let shutdown = shared.shutdown.clone();
    let run_id = run.ctx.run_id;
    shared.tasks.spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(run = %run_id, "gateway: CONNECT upgrade failed: {e}");
                return;
            }
        };
        let mut client = TokioIo::new(upgraded);
        let mut upstream = upstream;
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                if let Ok((up, down)) = copied {
                    tracing::debug!(run = %run_id, up, down, "gateway: tunnel closed");
                }
            }
            _ = ended.cancelled() => {}
            _ = shutdown.cancelled() => {}
        }
    });
    Response::new(Body::empty())
}

async fn connect_any(addrs: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut last = String::from("no address to connect to");
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        }
    }
    Err(last)
}

/// An absolute-form request (`GET http://host/path`): forwarded to an
/// allowed host with the vault's credentials, the answer streamed back.
pub(crate) async fn forward(shared: Arc<Shared>, req: Request<Incoming>) -> Response {
    let Some(run) = shared.current() else {
        return reply::no_run();
    };
    let gw = &shared.gw;
    if req.uri().scheme_str() != Some("http") {
        return error(
            StatusCode::BAD_REQUEST,
            "the proxy forwards only plain http URLs; for https it takes CONNECT",
        );
    }
    let url = match reqwest::Url::parse(&req.uri().to_string()) {
        Ok(u) if u.host_str().is_some() => u,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the proxy URL {} does not parse",
                    one_line(&req.uri().to_string(), 200)
                ),
            )
        }
    };
    let host = normalize_host(url.host_str().unwrap_or_default());
    let target = target_of(&host, url.port_or_known_default().unwrap_or(80));
    let shown = url_for_audit(&url);
    let method = req.method().clone();
    let what = format!("{method} {shown}");
    let audit =
        |outcome, detail: &str| run.audit(gw, EGRESS_ACTION, Some(target.clone()), outcome, detail);
    if let Some(reason) = run.over_quota() {
        audit(AuditOutcome::Denied, &format!("{what}: {reason}"));
        return reply::over_quota(reason);
    }
    if let Err(sentence) = decide(&run, &host) {
        audit(AuditOutcome::Denied, &format!("{what}: {sentence}"));
        return error(StatusCode::FORBIDDEN, sentence);
    }
    let vault = match Vault::load(gw, &run, url.as_str()).await {
        Ok(v) => v,
        Err(sentence) => {
            audit(AuditOutcome::Failed, &format!("{what}: {sentence}"));
            return error(StatusCode::INTERNAL_SERVER_ERROR, sentence);
        }
    };

    let (parts, body) = req.into_parts();
    let listed = connection_listed(&parts.headers);
    let has_body = parts.headers.contains_key(TRANSFER_ENCODING)
        || parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0);
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + vault.headers.len());
    for (name, value) in &parts.headers {
        if hop_by_hop(name)
            || *name == HOST
            || vault.names(name)
            || listed.iter().any(|l| l == name.as_str())
        {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    for (n, v) in &vault.headers {
        headers.insert(n.clone(), v.clone());
    }
    let mut outbound = gw.egress.request(method, url).headers(headers);
    if has_body {
        outbound = outbound.body(reqwest::Body::wrap_stream(
            Body::new(body).into_data_stream(),
        ));
    }
    let resp = match outbound.send().await {
        Ok(r) => r,
        Err(e) => return egress_failure(&run, gw, &target, &what, e),
    };
    let status = resp.status();
    audit(
        AuditOutcome::Allowed,
        &format!("{what} answered {}", status.as_u16()),
    );

    let resp_listed = connection_listed(resp.headers());
    let mut out_headers = HeaderMap::with_capacity(resp.headers().len());
    for (name, value) in resp.headers() {
        if hop_by_hop(name) || resp_listed.iter().any(|l| l == name.as_str()) {
            continue;
        }
        out_headers.append(name.clone(), value.clone());
    }
    vault.scrub_headers(&mut out_headers);
    let mut out = Response::new(Body::from_stream(resp.bytes_stream()));
    *out.status_mut() = status;
    *out.headers_mut() = out_headers;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_hosts_and_subdomains_only() {
        let p = EgressPolicy::new(&[
            "API.github.com.".into(),
            "*.example.org".into(),
            "[::1]".into(),
            "10.0.0.7".into(),
        ]);
        assert!(p.allows(&normalize_host("api.github.com")));
        assert!(p.allows(&normalize_host("Api.GitHub.com.")));
        assert!(!p.allows(&normalize_host("github.com")));
        assert!(p.allows(&normalize_host("a.example.org")));
        assert!(p.allows(&normalize_host("b.a.example.org")));
        assert!(!p.allows(&normalize_host("example.org")));
        assert!(!p.allows(&normalize_host("badexample.org")));
        assert!(p.allows(&normalize_host("[0:0:0:0:0:0:0:1]")));
        assert!(p.allows(&normalize_host("10.0.0.7")));
        assert!(!p.allows(&normalize_host("10.0.0.8")));
    }

    #[test]
    fn metadata_link_local_and_unspecified_are_forbidden() {
        for ip in [
            "169.254.169.254",
            "169.254.1.1",
            "fe80::1",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "100.100.100.200",
            "0.0.0.0",
            "::",
        ] {
            assert!(forbidden_ip(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.1", "10.1.2.3", "93.184.216.34", "::1"] {
            assert!(!forbidden_ip(ip.parse().unwrap()), "{ip}");
        }
        assert!(!name_may_reach("127.0.0.1".parse().unwrap()));
        assert!(!name_may_reach("::ffff:127.0.0.1".parse().unwrap()));
        assert!(name_may_reach("93.184.216.34".parse().unwrap()));
    }
}
