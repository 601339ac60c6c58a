//! Dead letters a person can act on (admin keys, the tenant's own only).
//!
//! - `GET /v1/dlq[?source=&since=&until=&status=&limit=]` → `{"entries":
//!   […]}`, newest first: each with its id (the DLQ stream sequence), source,
//!   original subject, reason, time, headers, payload and what was done
//!   with it.
//! - `POST /v1/dlq/{id}/replay`: resubmit it through the one admission
//!   path, with a fresh idempotency key (`dlq-replay-<id>`) recorded
//!   against it; an intake submission (task or goal) as it was, a work
//!   message as a new task of the same role, input and employee.
//! - `POST /v1/dlq/{id}/discard`: mark it dealt with.
//! - `POST /v1/dlq/replay`, `POST /v1/dlq/discard` with `{"source"?,
//!   "since"?, "until"?}`: the same for every open one that matches (at most
//!   1 000). Every action is an audit row.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use store::dlq::NewDlqAction;
use store::{NewAudit, Outcome};
use subjects::ops::{DlqBulk, DlqEntry, DlqList, DlqOutcome, DlqRefused};
use subjects::{header, stream, subject, WorkItem};
use time::OffsetDateTime;

use super::{read_json, AppState, Caller, Refusal};

/// A list walks the stream back in windows of this many sequences, reading
/// only the tenant's dead letters in each.
const WINDOW: u64 = 10_000;
/// Windows one list looks at, at most (the newest 10 million messages).
const MAX_WINDOWS: u32 = 1_000;
/// What a dead letter's status can be.
const STATUSES: [&str; 3] = ["open", "replayed", "discarded"];

/// One dead letter.
struct Entry {
    seq: u64,
    source: String,
    original: String,
    reason: String,
    at: OffsetDateTime,
    headers: Vec<(String, String)>,
    payload: bytes::Bytes,
    tenant: Option<String>,
}

impl Entry {
    fn view(&self, action: Option<&store::dlq::DlqAction>) -> DlqEntry {
        let payload: Value = serde_json::from_slice(&self.payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&self.payload).into_owned()));
        DlqEntry {
            source: self.source.clone(),
            subject: self.original.clone(),
            reason: self.reason.clone(),
            at: self.at,
            headers: self.headers.iter().cloned().collect(),
            payload,
            outcome: action.map_or_else(
                || DlqOutcome {
                    id: self.seq,
                    status: "open".into(),
                    task_id: None,
                    goal_id: None,
                    idempotency_key: None,
                },
                outcome,
            ),
        }
    }
}

/// What was done with a dead letter, as the API shows it.
fn outcome(a: &store::dlq::DlqAction) -> DlqOutcome {
    DlqOutcome {
        id: a.seq,
        status: a.action.clone(),
        task_id: a.task_id,
        goal_id: a.goal_id,
        idempotency_key: a.idempotency_key.clone(),
    }
}

/// One dead letter as stored. Its tenant is its subject's
/// (`colony.dlq.<source>.<tenant>`), or, for one stored before dead letters
/// were filed by tenant, what its subject or body names.
fn entry_of(m: async_nats::jetstream::message::StreamMessage) -> Entry {
    let get = |name: &str| {
        m.headers
            .get(name)
            .map(|v| v.as_str().to_string())
            .unwrap_or_default()
    };
    let original = get(header::ORIGINAL_SUBJECT);
    let tenant = match subject::dlq_filed_tenant(&m.subject) {
        Some(subject::NO_TENANT) => None,
        Some(t) => Some(t.to_string()),
        None => subject::dlq_tenant_of(&original, &m.payload),
    };
    Entry {
        seq: m.sequence,
        source: subject::dlq_source(&m.subject)
            .unwrap_or_default()
            .to_string(),
        reason: get(header::REASON),
        tenant,
        original,
        at: m.time,
        headers: m
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", "),
                )
            })
            .collect(),
        payload: m.payload,
    }
}

fn unavailable(e: impl std::fmt::Display) -> Refusal {
    tracing::warn!(error = %e, "the dead-letter stream does not answer");
    Refusal::unavailable("the dead-letter stream does not answer; retry in a few seconds")
}

async fn entry(s: &AppState, seq: u64) -> Result<Option<Entry>, Refusal> {
    let stream =
        s.0.js
            .get_stream_no_info(stream::DLQ)
            .await
            .map_err(unavailable)?;
    Ok(stream.get_raw_message(seq).await.ok().map(entry_of))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Filter {
    source: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    since: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    until: Option<OffsetDateTime>,
}

impl Filter {
    fn check(&self) -> Result<(), Refusal> {
        if let Some(src) = &self.source {
            if !subject::DLQ_SOURCES.contains(&src.as_str()) {
                return Err(Refusal::bad(format!(
                    "source {src:?} is not one of {}",
                    subject::DLQ_SOURCES.join(", ")
                )));
            }
        }
        Ok(())
    }

    fn matches(&self, e: &Entry) -> bool {
        self.source.as_ref().is_none_or(|s| *s == e.source)
            && self.since.is_none_or(|t| e.at >= t)
            && self.until.is_none_or(|t| e.at < t)
    }
}

/// The tenant's dead letters that match, newest first, with their actions.
async fn scan(
    s: &AppState,
    caller: &Caller,
    f: &Filter,
    status: Option<&str>,
    limit: usize,
) -> Result<Vec<(Entry, Option<store::dlq::DlqAction>)>, Refusal> {
    let mut stream = s.0.js.get_stream(stream::DLQ).await.map_err(unavailable)?;
    let state = stream.info().await.map_err(unavailable)?.state.clone();
    // Only the tenant's subject is read: another tenant's dead letters, how
    // many there may be, cost one step per window, not one per message.
    let filter = subject::dlq_of_tenant(&caller.tenant);
    let mut found = Vec::new();
    // How many the tenant has, by subject, and where its newest is: the
    // walk starts there and ends once it has met them all.
    let counts: std::collections::HashMap<String, usize> = stream
        .info_with_subjects(filter.clone())
        .await
        .map_err(unavailable)?
        .try_collect()
        .await
        .map_err(unavailable)?;
    let mut left: usize = counts.values().sum();
    if left == 0 {
        return Ok(found);
    }
    let mut hi = 0;
    for subject in counts.keys() {
        if let Ok(m) = stream.get_last_raw_message_by_subject(subject).await {
            hi = hi.max(m.sequence);
        }
    }
    let mut windows = 0;
    while hi >= state.first_sequence.max(1) && found.len() < limit && windows < MAX_WINDOWS {
        windows += 1;
        let lo = state
            .first_sequence
            .max(hi.saturating_sub(WINDOW - 1))
            .max(1);
        // The tenant's dead letters in [lo, hi], oldest first.
        let mut in_window = Vec::new();
        let mut seq = lo;
        while seq <= hi {
            let got = stream
                .raw_message_builder()
                .sequence(seq)
                .next_by_subject(filter.clone())
                .send()
                .await;
            match got {
                Ok(m) if m.sequence <= hi => {
                    seq = m.sequence + 1;
                    in_window.push(entry_of(m));
                }
                _ => break,
            }
        }
        left = left.saturating_sub(in_window.len());
        let mut stop = false;
        let mut batch = Vec::new();
        for e in in_window.into_iter().rev() {
            if f.since.is_some_and(|t| e.at < t) {
                stop = true;
                break;
            }
            if e.tenant.as_deref() == Some(caller.tenant.as_str()) && f.matches(&e) {
                batch.push(e);
            }
        }
        // What was done with them, for the status.
        let actions =
            s.0.store
                .dlq_actions(&batch.iter().map(|e| e.seq).collect::<Vec<_>>())
                .await?;
        for e in batch {
            let a = actions.get(&e.seq).cloned();
            let st = a.as_ref().map_or("open", |a| a.action.as_str());
            if status.is_none_or(|want| want == st) && found.len() < limit {
                found.push((e, a));
            }
        }
        if stop || left == 0 || lo <= state.first_sequence.max(1) {
            break;
        }
        hi = lo - 1;
    }
    Ok(found)
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    source: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    since: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    until: Option<OffsetDateTime>,
    status: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn list(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<DlqList>, Refusal> {
    let Ok(Query(q)) = q else {
        return Err(Refusal::bad(
            "the query takes source=, since= and until= (RFC 3339), status=open|replayed|discarded and limit=<1-500>",
        ));
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(Refusal::bad(format!(
            "limit is {limit}; use a number from 1 to 500"
        )));
    }
    let f = Filter {
        source: q.source,
        since: q.since,
        until: q.until,
    };
    f.check()?;
    if let Some(st) = &q.status {
        if !STATUSES.contains(&st.as_str()) {
            return Err(Refusal::bad(format!(
                "status {st:?} is not one of {}",
                STATUSES.join(", ")
            )));
        }
    }
    let entries = scan(&s, &caller, &f, q.status.as_deref(), limit)
        .await?
        .iter()
        .map(|(e, a)| e.view(a.as_ref()))
        .collect();
    Ok(Json(DlqList { entries }))
}

/// Replay or discard one dead letter; the answer says what it became.
async fn act(
    s: &AppState,
    caller: &Caller,
    e: &Entry,
    replay: bool,
) -> Result<DlqOutcome, Refusal> {
    let key = format!("dlq-replay-{}", e.seq);
    let (mut task_id, mut goal_id) = (None, None);
    if replay {
        let rules = &s.0.cfg.rules;
        let tenant = caller.tenant.as_str();
        if e.source == subject::DLQ_INTAKE && subject::intake_goal_tenant(&e.original).is_some() {
            let new = rules.check_goal(&e.payload, tenant, Some(key.clone()))?;
            let created = s.0.store.create_goal(&new).await?;
            s.0.relay.send(created.outbox);
            goal_id = Some(created.goal.id);
        } else if e.source == subject::DLQ_INTAKE {
            let new = rules.check(&e.payload, tenant, Some(key.clone()))?;
            let c = admission::admit(&s.0.store, rules, new, None).await?;
            s.0.relay.send(c.outbox);
            task_id = Some(c.task.id);
        } else if e.source == subject::DLQ_WORK {
            let item: WorkItem = serde_json::from_slice(&e.payload)
                .map_err(|_| Refusal::bad("this dead letter is not a work message; discard it"))?;
            if item.goal_id.is_some() {
                return Err(Refusal::bad(
                    "this is a goal's sub-task; retry it with decide on its goal",
                ));
            }
            let sub = json!({"role": item.role, "input": item.input, "timeout_secs": item.timeout_secs,
                             "employee_id": item.employee_id});
            let bytes = serde_json::to_vec(&sub).unwrap_or_default();
            let new = rules.check(&bytes, tenant, Some(key.clone()))?;
            let c = admission::admit(&s.0.store, rules, new, None).await?;
            s.0.relay.send(c.outbox);
            task_id = Some(c.task.id);
        } else {
            return Err(Refusal::bad(
                "a loop message is not replayed (the patrol re-plans a stuck goal); discard it",
            ));
        }
    }
    let action = if replay { "replayed" } else { "discarded" };
    let recorded =
        s.0.store
            .record_dlq_action(&NewDlqAction {
                seq: e.seq,
                tenant: &caller.tenant,
                source: &e.source,
                action,
                task_id,
                goal_id,
                idempotency_key: replay.then_some(key.as_str()),
                key_id: Some(caller.key_id),
            })
            .await?;
    if !recorded && !replay {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            format!("dead letter {} was dealt with already", e.seq),
        ));
    }
    s.0.store
        .insert_audit(&NewAudit {
            at: OffsetDateTime::now_utc(),
            tenant: caller.tenant.clone(),
            employee_id: None,
            task_id,
            run_id: None,
            action: if replay { "dlq.replay" } else { "dlq.discard" }.into(),
            target: Some(format!("dlq {} ({})", e.seq, e.source)),
            outcome: Outcome::Allowed,
            detail: Some(match (task_id, goal_id) {
                (Some(t), _) => format!("replayed as task {t} with idempotency key {key}"),
                (_, Some(g)) => format!("replayed as goal {g} with idempotency key {key}"),
                _ => format!("discarded: {}", e.reason),
            }),
        })
        .await?;
    Ok(DlqOutcome {
        id: e.seq,
        status: action.to_string(),
        task_id,
        goal_id,
        idempotency_key: replay.then_some(key),
    })
}

/// A dead letter of the caller's tenant and what was done with it.
async fn one(
    s: &AppState,
    caller: &Caller,
    raw: &str,
) -> Result<(Entry, Option<store::dlq::DlqAction>), Refusal> {
    let seq: u64 = raw
        .parse()
        .map_err(|_| Refusal::bad(format!("{raw:?} is not a dead letter id (a number)")))?;
    let missing = || Refusal::not_found(format!("dead letter {seq} does not exist"));
    let e = entry(s, seq).await?.ok_or_else(missing)?;
    if e.tenant.as_deref() != Some(caller.tenant.as_str()) {
        return Err(missing());
    }
    let done = s.0.store.dlq_actions(&[seq]).await?.remove(&seq);
    Ok((e, done))
}

async fn act_once(
    s: AppState,
    caller: Caller,
    raw: String,
    replay: bool,
) -> Result<Json<DlqOutcome>, Refusal> {
    match one(&s, &caller, &raw).await? {
        (e, None) => Ok(Json(act(&s, &caller, &e, replay).await?)),
        // Replaying again answers what the first replay made.
        (_, Some(a)) if replay && a.action == "replayed" => Ok(Json(outcome(&a))),
        (e, Some(a)) => Err(Refusal::new(
            StatusCode::CONFLICT,
            format!("dead letter {} was {} already", e.seq, a.action),
        )),
    }
}

pub(super) async fn replay(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<DlqOutcome>, Refusal> {
    act_once(s, caller, raw, true).await
}

pub(super) async fn discard(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
) -> Result<Json<DlqOutcome>, Refusal> {
    act_once(s, caller, raw, false).await
}

/// Every open dead letter of the tenant that matches, replayed or
/// discarded; the ones that could not be are listed with why.
async fn bulk(
    s: AppState,
    caller: Caller,
    body: Body,
    replay: bool,
) -> Result<Json<DlqBulk>, Refusal> {
    let f: Filter = read_json(body, "filter").await?;
    f.check()?;
    let mut done = Vec::new();
    let mut refused = Vec::new();
    for (e, _) in scan(&s, &caller, &f, Some("open"), 1000).await? {
        match act(&s, &caller, &e, replay).await {
            Ok(v) => done.push(v),
            Err(r) => refused.push(DlqRefused {
                id: e.seq,
                error: r.error,
            }),
        }
    }
    Ok(Json(DlqBulk { done, refused }))
}

pub(super) async fn replay_all(
    State(s): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Json<DlqBulk>, Refusal> {
    bulk(s, caller, body, true).await
}

pub(super) async fn discard_all(
    State(s): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Json<DlqBulk>, Refusal> {
    bulk(s, caller, body, false).await
}
