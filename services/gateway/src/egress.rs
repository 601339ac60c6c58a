//! The way out of the container: `POST /v1/fetch`, `CONNECT` tunnels and
//! absolute-form plain-http requests, each only to the role's egress
//! allowlist, each audited as [`EGRESS_ACTION`] and metered in bytes.
//!
//! Two checks, both needed:
//!
//! 1. The role's allowlist ([`EgressPolicy`]): `host`, `*.suffix` or
//!    `[v6]`, each with an optional `:port`. An entry without a port allows
//!    80 and 443 only.
//! 2. Where the connection really goes ([`AddressPolicy`]): every address an
//!    IP literal stands for or a name resolves to must be public. Loopback,
//!    RFC 1918, carrier-grade NAT, link-local, unique-local, multicast,
//!    unspecified, NAT64, 6to4 and Teredo wrappers of those, documentation
//!    and other reserved ranges are refused, listed or not. Only the
//!    operator can open a private range (`COLONY_EGRESS_ALLOW_PRIVATE`, a
//!    list of CIDRs); link-local (the cloud metadata address among it),
//!    multicast, broadcast, unspecified and the other known metadata
//!    addresses stay closed even then. A name is resolved once, checked, and
//!    the connection goes to the checked address, so a second lookup cannot
//!    change the answer.

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
use ipnet::IpNet;
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

use subjects::gateway::{split_egress_entry as split_entry, EGRESS_DEFAULT_PORTS as DEFAULT_PORTS};

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `.example.com` for `*.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    host: HostPattern,
    /// `None`: [`DEFAULT_PORTS`].
    port: Option<u16>,
}

/// The role's allowlist, normalised once per run.
#[derive(Debug, Default)]
pub(crate) struct EgressPolicy {
    rules: Vec<Rule>,
}

impl EgressPolicy {
    pub(crate) fn new(patterns: &[String]) -> EgressPolicy {
        let mut policy = EgressPolicy::default();
        for p in patterns {
            let Some((host, port)) = split_entry(p) else {
                continue;
            };
            let host = match host.strip_prefix("*.") {
                Some(suffix) => {
                    let suffix = normalize_host(suffix);
                    if suffix.is_empty() {
                        continue;
                    }
                    HostPattern::Suffix(format!(".{suffix}"))
                }
                None => {
                    let host = normalize_host(host);
                    if host.is_empty() {
                        continue;
                    }
                    HostPattern::Exact(host)
                }
            };
            policy.rules.push(Rule { host, port });
        }
        policy
    }

    /// `host` must be normalised.
    pub(crate) fn allows(&self, host: &str, port: u16) -> bool {
        self.rules.iter().any(|r| {
            let host_ok = match &r.host {
                HostPattern::Exact(e) => e == host,
                HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            };
            let port_ok = match r.port {
                Some(p) => p == port,
                None => DEFAULT_PORTS.contains(&port),
            };
            host_ok && port_ok
        })
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

/// What kind of address is not public, for the refusal's sentence, and
/// whether the operator may open it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotPublic {
    pub kind: &'static str,
    /// Link-local, metadata, multicast, broadcast, unspecified: never.
    pub openable: bool,
}

const fn never(kind: &'static str) -> Option<NotPublic> {
    Some(NotPublic {
        kind,
        openable: false,
    })
}

const fn private(kind: &'static str) -> Option<NotPublic> {
    Some(NotPublic {
        kind,
        openable: true,
    })
}

/// `None` for a public address; else what it is.
pub(crate) fn classify(ip: IpAddr) -> Option<NotPublic> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<NotPublic> {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        _ if ip == Ipv4Addr::new(100, 100, 100, 200) => never("cloud metadata address"),
        _ if ip.is_broadcast() => never("broadcast address"),
        (0, _, _) => never("unspecified (\"this network\") address"),
        (127, _, _) => private("loopback address"),
        (10, _, _) | (192, 168, _) => private("private (RFC 1918) address"),
        (172, b, _) if (16..32).contains(&b) => private("private (RFC 1918) address"),
        (100, b, _) if (64..128).contains(&b) => private("carrier-grade NAT address"),
        (169, 254, _) => never("link-local or cloud metadata address"),
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => {
            private("reserved (protocol or documentation) address")
        }
        (198, b, _) if b == 18 || b == 19 => private("reserved (benchmarking) address"),
        (a, _, _) if (224..240).contains(&a) => never("multicast address"),
        (a, _, _) if a >= 240 => private("reserved address"),
        _ => None,
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<NotPublic> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return never("unspecified address");
    }
    if ip.is_loopback() {
        return private("loopback address");
    }
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return never("cloud metadata address");
    }
    match s[0] {
        x if x & 0xffc0 == 0xfe80 => never("link-local address"),
        x if x & 0xffc0 == 0xfec0 => private("site-local address"),
        x if x & 0xfe00 == 0xfc00 => private("unique local (ULA) address"),
        x if x & 0xff00 == 0xff00 => never("multicast address"),
        0x0064 if s[1] == 0xff9b => private("NAT64 address"),
        // 6to4 wraps an IPv4 address: judge that one.
        0x2002 => classify_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        )),
        0x2001 if s[1] == 0 => private("Teredo address"),
        0x2001 if s[1] == 0x0db8 => private("reserved (documentation) address"),
        0x0100 if s[1] == 0 && s[2] == 0 && s[3] == 0 => private("reserved (discard) address"),
        // ::/96 (IPv4-compatible, deprecated) and the rest of ::/8.
        0 => private("reserved address"),
        _ => None,
    }
}

/// Where egress may connect: public addresses, and the private ranges the
/// operator opened.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow_private: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(allow_private: Vec<IpNet>) -> AddressPolicy {
        AddressPolicy { allow_private }
    }

    /// `Err` with what kind of address `ip` is when egress may not go there.
    pub fn check(&self, ip: IpAddr) -> Result<(), NotPublic> {
        let canonical = ip.to_canonical();
        match classify(canonical) {
            None => Ok(()),
            Some(n)
                if n.openable
                    && self
                        .allow_private
                        .iter()
                        .any(|net| net.contains(&canonical)) =>
            {
                Ok(())
            }
            Some(n) => Err(n),
        }
    }
}

/// The sentence of a refused address.
fn refused_sentence(host: &str, ip: IpAddr, n: NotPublic) -> String {
    let how = if n.openable {
        "which the gateway refuses unless the operator opens its range with COLONY_EGRESS_ALLOW_PRIVATE"
    } else {
        "which no role may reach"
    };
    if host.parse::<IpAddr>().is_ok() {
        format!("host {host} is a {}, {how}", n.kind)
    } else {
        format!("host {host} resolves to {ip}, a {}, {how}", n.kind)
    }
}

/// May the run reach `host` (normalised) on `port`? `Ok` carries the
/// address when the host is an IP address; `Err` the sentence of the 403.
fn decide(gw: &Inner, run: &Run, host: &str, port: u16) -> Result<Option<IpAddr>, String> {
    let ip = host.parse::<IpAddr>().ok();
    if let Some(ip) = ip {
        if let Err(n) = gw.addresses.check(ip) {
            return Err(refused_sentence(host, ip, n));
        }
    }
    if !run.egress.allows(host, port) {
        return Err(format!(
            "{} is not in the egress allowlist of role {} (an entry without a port allows 80 and 443)",
            target_of(host, port),
            run.ctx.role
        ));
    }
    Ok(ip)
}

/// A host name that resolves only to addresses egress may not reach.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Refused(String);

/// Resolves `host`; every address must pass `policy` (one refused address
/// refuses the name: a name that points inside is not trusted for its other
/// answers either).
async fn resolve_guarded(
    policy: &AddressPolicy,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let all: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ResolveError::Failed(format!("{host} could not be resolved: {e}")))?
        .collect();
    if all.is_empty() {
        return Err(ResolveError::Failed(format!(
            "{host} resolves to no address"
        )));
    }
    for a in &all {
        if let Err(n) = policy.check(a.ip()) {
            return Err(ResolveError::Refused(Refused(refused_sentence(
                host,
                a.ip(),
                n,
            ))));
        }
    }
    Ok(all)
}

enum ResolveError {
    Refused(Refused),
    Failed(String),
}

/// The egress client's resolver: [`resolve_guarded`] for every name
/// (reqwest does not resolve IP addresses, which [`decide`] checks).
pub(crate) struct GuardedResolver(pub(crate) Arc<AddressPolicy>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let policy = self.0.clone();
        Box::pin(async move {
            match resolve_guarded(&policy, &host, 0).await {
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
    let port = url.port_or_known_default().unwrap_or(0);
    let target = target_of(&host, port);
    let shown = url_for_audit(&url);
    let audit =
        |outcome, detail: &str| run.audit(gw, EGRESS_ACTION, Some(target.clone()), outcome, detail);

    if let Some(reason) = run.over_quota() {
        audit(AuditOutcome::Denied, &format!("fetch {shown}: {reason}"));
        return reply::over_quota(reason);
    }
    if let Err(sentence) = decide(gw, &run, &host, port) {
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
        run.count_out(body.len());
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
                run.count_in(chunk.len());
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
    let ip = match decide(gw, &run, &host, port) {
        Ok(ip) => ip,
        Err(sentence) => {
            audit(AuditOutcome::Denied, &format!("CONNECT: {sentence}"));
            return error(StatusCode::FORBIDDEN, sentence);
        }
    };
    let addrs = match ip {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => match resolve_guarded(&gw.addresses, &host, port).await {
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
    let run = run.clone();
    shared.tasks.spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(run = %run_id, "gateway: CONNECT upgrade failed: {e}");
                return;
            }
        };
        let mut client = TokioIo::new(upgraded);
        let mut upstream = Counted {
            inner: upstream,
            run: run.clone(),
        };
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

/// A tunnel's upstream side, counting what passes into the run's meter.
struct Counted {
    inner: TcpStream,
    run: Arc<Run>,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.run.count_in(n);
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            self.run.count_out(*n);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
    let port = url.port_or_known_default().unwrap_or(80);
    let target = target_of(&host, port);
    let shown = url_for_audit(&url);
    let method = req.method().clone();
    let what = format!("{method} {shown}");
    let audit =
        |outcome, detail: &str| run.audit(gw, EGRESS_ACTION, Some(target.clone()), outcome, detail);
    if let Some(reason) = run.over_quota() {
        audit(AuditOutcome::Denied, &format!("{what}: {reason}"));
        return reply::over_quota(reason);
    }
    if let Err(sentence) = decide(gw, &run, &host, port) {
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
        let counter = run.clone();
        outbound = outbound.body(reqwest::Body::wrap_stream(
            Body::new(body).into_data_stream().inspect(move |c| {
                if let Ok(c) = c {
                    counter.count_out(c.len());
                }
            }),
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
    let counter = run.clone();
    let mut out = Response::new(Body::from_stream(resp.bytes_stream().inspect(move |c| {
        if let Ok(c) = c {
            counter.count_in(c.len());
        }
    })));
    *out.status_mut() = status;
    *out.headers_mut() = out_headers;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> EgressPolicy {
        EgressPolicy::new(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn patterns_match_exact_hosts_and_subdomains_on_their_ports() {
        let p = policy(&[
            "API.github.com.",
            "*.example.org",
            "[::1]:8080",
            "10.0.0.7:8443",
            "files.example.net:8000",
            "2001:db8::1",
        ]);
        let ok = |h: &str, port| p.allows(&normalize_host(h), port);
        assert!(ok("api.github.com", 443) && ok("Api.GitHub.com.", 80));
        assert!(!ok("api.github.com", 8080), "no port: 80 and 443 only");
        assert!(!ok("api.github.com", 22));
        assert!(!ok("github.com", 443));
        assert!(ok("a.example.org", 443) && ok("b.a.example.org", 80));
        assert!(!ok("example.org", 443) && !ok("badexample.org", 443));
        assert!(ok("[0:0:0:0:0:0:0:1]", 8080) && !ok("::1", 443));
        assert!(ok("10.0.0.7", 8443) && !ok("10.0.0.7", 443) && !ok("10.0.0.8", 8443));
        assert!(ok("files.example.net", 8000) && !ok("files.example.net", 80));
        assert!(ok("2001:db8::1", 443));
    }

    #[test]
    fn entries_split_into_host_and_port() {
        assert_eq!(split_entry("a.org"), Some(("a.org", None)));
        assert_eq!(split_entry("a.org:8080"), Some(("a.org", Some(8080))));
        assert_eq!(split_entry("[::1]:443"), Some(("::1", Some(443))));
        assert_eq!(split_entry("[::1]"), Some(("::1", None)));
        assert_eq!(split_entry("::1"), Some(("::1", None)));
        assert_eq!(split_entry("a.org:0"), None);
        assert_eq!(split_entry("a.org:x"), None);
        assert_eq!(split_entry("[::1]x"), None);
    }

    #[test]
    fn only_public_addresses_pass() {
        let closed = AddressPolicy::default();
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "::ffff:127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.100.100.200",
            "169.254.169.254",
            "169.254.1.1",
            "fe80::1",
            "fd00:ec2::254",
            "fd12:3456::1",
            "fc00::1",
            "224.0.0.1",
            "ff02::1",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "2001:0:4136:e378::1",
            "::7f00:1",
            "fec0::1",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert!(closed.check(addr).is_err(), "{ip} must be refused");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "2002:5db8:d822::1",
            "::ffff:8.8.8.8",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert!(closed.check(addr).is_ok(), "{ip} is public");
        }
    }

    #[test]
    fn the_operator_opens_private_ranges_but_never_metadata_or_link_local() {
        let open = AddressPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
            "169.254.0.0/16".parse().unwrap(),
            "0.0.0.0/0".parse().unwrap(),
        ]);
        for ip in ["127.0.0.1", "::ffff:127.0.0.1", "10.9.8.7", "192.168.0.1"] {
            assert!(open.check(ip.parse().unwrap()).is_ok(), "{ip}");
        }
        for ip in [
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(open.check(ip.parse().unwrap()).is_err(), "{ip}");
        }
        let n = AddressPolicy::default()
            .check("127.0.0.1".parse().unwrap())
            .unwrap_err();
        assert_eq!(
            refused_sentence("127.0.0.1", "127.0.0.1".parse().unwrap(), n),
            "host 127.0.0.1 is a loopback address, which the gateway refuses unless the operator opens its range with COLONY_EGRESS_ALLOW_PRIVATE"
        );
        let n = AddressPolicy::default()
            .check("169.254.169.254".parse().unwrap())
            .unwrap_err();
        assert_eq!(
            refused_sentence("metadata.internal", "169.254.169.254".parse().unwrap(), n),
            "host metadata.internal resolves to 169.254.169.254, a link-local or cloud metadata address, which no role may reach"
        );
    }
}
