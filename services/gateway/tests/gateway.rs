//! The gateway on a real unix socket, against a real HTTP upstream on
//! 127.0.0.1 and the in-memory backend of `support`.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use futures_util::StreamExt;
use gateway::{AuditOutcome, DailyUsage, Quotas, EGRESS_ACTION};
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

fn close_to(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

// ------------------------------------------------------------------ model calls

#[tokio::test]
async fn the_key_goes_upstream_never_back_and_the_containers_own_is_stripped() {
    let s = Setup::new().await;
    let meter = s.container.begin_run(s.ctx());
    let ctx = meter.context().clone();
    let answer = call(
        &s.sock(),
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer container-made-this-up"),
        ],
        chat_body(ROLE_MODEL, false).to_string(),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["choices"][0]["message"]["content"], "Hello");
    assert!(!answer.everything().contains(KEY));

    let seen = s.upstream.seen_at("/v1/chat/completions");
    assert_eq!(seen.len(), 1);
    let auths: Vec<_> = seen[0].headers.get_all("authorization").iter().collect();
    assert_eq!(auths.len(), 1, "exactly one Authorization upstream");
    assert_eq!(auths[0].to_str().unwrap(), format!("Bearer {KEY}"));
    // The role's model name is mapped to the provider's; the rest is intact.
    let sent = seen[0].json();
    assert_eq!(sent["model"], PROVIDER_MODEL);
    assert_eq!(sent["messages"][0]["content"], "Say hello");

    let totals = meter.totals();
    assert_eq!(totals.prompt_tokens, PROMPT_TOKENS);
    assert_eq!(totals.completion_tokens, COMPLETION_TOKENS);
    assert_eq!(totals.calls, 1);
    assert!(close_to(totals.cost_usd, CALL_COST), "{}", totals.cost_usd);

    let final_totals = meter.finish().await;
    assert_eq!(final_totals, totals);
    let usage = lock(&s.backend.usage).clone();
    assert_eq!(usage.len(), 1);
    let u = &usage[0];
    assert_eq!(
        (
            u.run_id,
            u.task_id,
            u.employee_id,
            u.tenant.as_str(),
            u.role.as_str()
        ),
        (ctx.run_id, ctx.task_id, ctx.employee_id, "t1", "coder")
    );
    assert_eq!(
        (u.model.as_str(), u.provider_model.as_str()),
        (ROLE_MODEL, PROVIDER_MODEL)
    );
    assert_eq!(
        (u.prompt_tokens, u.completion_tokens),
        (PROMPT_TOKENS, COMPLETION_TOKENS)
    );
    assert!(close_to(u.cost_usd, CALL_COST));
    assert!(!u.estimated && !u.streamed);
}

#[tokio::test]
async fn a_model_without_a_price_costs_nothing_and_a_model_without_usage_is_estimated() {
    let s = Setup::new().await;
    let meter = s.container.begin_run(s.ctx_model("unpriced-model"));
    let a = chat(&s.sock(), "unpriced-model").await;
    assert_eq!(a.status, 200);
    assert_eq!(s.upstream.seen()[0].json()["model"], "unpriced-model");
    let t = meter.totals();
    assert_eq!(
        (t.prompt_tokens, t.completion_tokens, t.cost_usd),
        (PROMPT_TOKENS, COMPLETION_TOKENS, 0.0)
    );
    drop(meter);

    let meter = s.container.begin_run(s.ctx_model("no-usage"));
    let a = chat(&s.sock(), "no-usage").await;
    assert_eq!(a.status, 200);
    let usage = {
        meter.finish().await;
        lock(&s.backend.usage).clone()
    };
    let est = usage.iter().find(|u| u.model == "no-usage").unwrap();
    assert!(est.estimated);
    assert!(
        est.prompt_tokens > 0 && est.completion_tokens > 0,
        "{est:?}"
    );
}

#[tokio::test]
async fn a_run_may_call_only_its_roles_model_and_a_priceless_one_not_under_a_cost_quota() {
    let s = Setup::new().await;
    let meter = s.container.begin_run(s.ctx());
    let a = chat(&s.sock(), "gpt-expensive").await;
    assert_eq!(a.status, 403);
    assert_eq!(
        a.error(),
        "role coder may call only its model worker-model, not gpt-expensive"
    );
    drop(meter);
    let mut ctx = s.ctx_model("unpriced-model");
    ctx.quotas.cost_usd_per_day = Some(5.0);
    let meter = s.container.begin_run(ctx);
    let a = chat(&s.sock(), "unpriced-model").await;
    assert_eq!(a.status, 403);
    assert_eq!(
        a.error(),
        "model unpriced-model has no price (COLONY_MODEL_PRICES) and role coder has a cost quota, so its calls cannot be metered; the operator must give it a price"
    );
    meter.finish().await;
    assert!(
        s.upstream.seen().is_empty(),
        "neither call left the gateway"
    );
    let audits = s.backend.audits_of(gateway::MODEL_ACTION);
    assert_eq!(outcome_of(&audits), vec![AuditOutcome::Denied; 2]);
    assert_eq!(audits[0].target.as_deref(), Some("gpt-expensive"));
}

#[tokio::test]
async fn a_stream_passes_through_as_it_arrives_and_its_usage_is_metered() {
    let s = Setup::new().await;
    let meter = s.container.begin_run(s.ctx_model("gated"));
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("host", "gateway")
        .header("content-type", "application/json")
        .body(Body::from(chat_body("gated", true).to_string()))
        .unwrap();
    let resp = send(&s.sock(), req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut frames = Body::new(resp.into_body()).into_data_stream();

    // The upstream holds the rest back until released: the first chunk
    // must arrive on its own, so the gateway does not buffer.
    let first = tokio::time::timeout(Duration::from_secs(10), frames.next())
        .await
        .expect("the first chunk before the rest is released")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("\"Hel\""));
    assert_eq!(
        meter.totals().calls,
        0,
        "not metered before the usage chunk"
    );
    s.upstream.state.gate.notify_one();

    let mut rest = Vec::new();
    while let Some(frame) = frames.next().await {
        rest.extend_from_slice(&frame.unwrap());
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(rest.contains("\"lo\""));
    assert!(
        rest.contains("\"prompt_tokens\":900"),
        "usage passed on: {rest}"
    );
    assert!(rest.trim_end().ends_with("data: [DONE]"));

    let sent = s.upstream.seen_at("/v1/chat/completions")[0].json();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let t = meter.totals();
    assert_eq!(
        (t.prompt_tokens, t.completion_tokens, t.calls),
        (PROMPT_TOKENS, COMPLETION_TOKENS, 1)
    );

    meter.finish().await;
    let usage = lock(&s.backend.usage).clone();
    assert_eq!(usage.len(), 1);
    assert!(usage[0].streamed && !usage[0].estimated);
}

#[tokio::test]
async fn a_stream_keeps_the_callers_stream_options() {
    let s = Setup::new().await;
    let _meter = s.container.begin_run(s.ctx());
    let mut body = chat_body(ROLE_MODEL, true);
    body["stream_options"] = json!({"include_usage": false, "other": 1});
    let a = post_json(&s.sock(), "/v1/chat/completions", &body).await;
    assert_eq!(a.status, 200);
    assert!(a.text().contains("data: [DONE]"));
    let sent = s.upstream.seen()[0].json();
    assert_eq!(
        sent["stream_options"],
        json!({"include_usage": true, "other": 1})
    );
    assert_eq!(sent["model"], PROVIDER_MODEL);
}

#[tokio::test]
async fn a_reader_that_leaves_mid_stream_is_still_metered() {
    let s = Setup::new().await;
    let meter = s.container.begin_run(s.ctx_model("gated"));
    {
        let req = Request::builder()
            .method("POST")
            .uri("/v1/chat/completions")
            .header("host", "gateway")
            .body(Body::from(chat_body("gated", true).to_string()))
            .unwrap();
        let resp = send(&s.sock(), req).await;
        let mut frames = Body::new(resp.into_body()).into_data_stream();
        frames.next().await.unwrap().unwrap();
        // The reader goes away with the rest still held back.
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.upstream.state.gate.notify_one();
    let t = meter.finish().await;
    assert_eq!(
        (t.prompt_tokens, t.completion_tokens),
        (PROMPT_TOKENS, COMPLETION_TOKENS)
    );
    assert_eq!(lock(&s.backend.usage).len(), 1);
}

#[tokio::test]
async fn a_provider_that_is_down_is_a_502_with_one_sentence() {
    // A port nothing listens on: bind one, note it, close it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let upstream = Upstream::start().await;
    let s = Setup::with_base_url(upstream, format!("http://127.0.0.1:{port}/v1")).await;
    let meter = s.container.begin_run(s.ctx());
    let a = chat(&s.sock(), ROLE_MODEL).await;
    assert_eq!(a.status, 502);
    let e = a.error();
    assert!(
        e.starts_with("the model provider could not be reached"),
        "{e}"
    );
    assert!(!a.everything().contains(KEY));
    assert_eq!(meter.totals().calls, 0);
}

#[tokio::test]
async fn provider_refusals_pass_their_status_in_one_sentence_without_the_key() {
    let s = Setup::new().await;
    let meter = s.container.begin_run(s.ctx_model("fail-400"));
    let a = chat(&s.sock(), "fail-400").await;
    assert_eq!(a.status, 400);
    let e = a.error();
    assert!(
        e.starts_with(
            "the model provider refused the request with 400: The model `fail-400` does not exist"
        ),
        "{e}"
    );
    assert!(!e.contains(KEY), "{e}");
    assert!(e.contains("[redacted]"), "{e}");

    drop(meter);
    let _meter = s.container.begin_run(s.ctx_model("fail-500"));
    let a = chat(&s.sock(), "fail-500").await;
    assert_eq!(a.status, 502);
    assert_eq!(
        a.error(),
        "the model provider failed with 500: upstream exploded"
    );
}

#[tokio::test]
async fn a_malformed_request_is_a_400_and_never_reaches_the_provider() {
    let s = Setup::new().await;
    let _meter = s.container.begin_run(s.ctx());
    let a = call(&s.sock(), "POST", "/v1/chat/completions", &[], "not json").await;
    assert_eq!(a.status, 400);
    assert!(a
        .error()
        .starts_with("the chat completion request is not a JSON object"));
    let a = post_json(&s.sock(), "/v1/chat/completions", &json!({"messages": []})).await;
    assert_eq!(a.status, 400);
    assert!(a.error().contains("names no model"));
    assert!(s.upstream.seen().is_empty());
}

// ------------------------------------------------------------------ quotas

#[tokio::test]
async fn crossing_the_token_quota_answers_that_call_fires_at_once_and_refuses_the_next() {
    let s = Setup::new().await;
    let mut ctx = s.ctx();
    ctx.quotas = Quotas {
        tokens_per_run: Some(1000),
        ..Quotas::default()
    };
    let meter = s.container.begin_run(ctx);
    let exceeded = meter.exceeded();
    assert!(!exceeded.is_cancelled());

    let a = chat(&s.sock(), ROLE_MODEL).await;
    assert_eq!(a.status, 200, "the call that crosses still gets its answer");
    assert_eq!(a.json()["choices"][0]["message"]["content"], "Hello");
    assert!(
        exceeded.is_cancelled(),
        "fired by the time the answer arrived"
    );
    let reason = "quota_exceeded: tokens_per_run 1234 > 1000 (prompt 900, completion 334)";
    assert_eq!(meter.exceeded_reason().as_deref(), Some(reason));

    let a = chat(&s.sock(), ROLE_MODEL).await;
    assert_eq!(a.status, 429);
    assert_eq!(
        a.error(),
        format!("{reason}, so this run may make no more requests")
    );
    assert_eq!(s.upstream.seen_at("/v1/chat/completions").len(), 1);
    assert_eq!(meter.totals().calls, 1);
}

#[tokio::test]
async fn the_wall_quota_fires_by_itself() {
    let s = Setup::new().await;
    let mut ctx = s.ctx();
    ctx.quotas.wall_secs_per_run = Some(0.2);
    let meter = s.container.begin_run(ctx);
    tokio::time::timeout(Duration::from_secs(10), meter.exceeded().cancelled())
        .await
        .expect("the wall quota fires");
    assert!(meter.elapsed() >= Duration::from_millis(200));
    let reason = meter.exceeded_reason().unwrap();
    assert!(
        reason.starts_with("quota_exceeded: wall_secs_per_run 0.2 reached"),
        "{reason}"
    );
    let a = chat(&s.sock(), ROLE_MODEL).await;
    assert_eq!(a.status, 429);
    assert!(a.error().contains("wall_secs_per_run"));
    assert!(s.upstream.seen().is_empty());
}

#[tokio::test]
async fn the_cost_quota_counts_dollars_by_the_price_table() {
    let s = Setup::new().await;
    let mut ctx = s.ctx();
    ctx.quotas.cost_usd_per_run = Some(0.004);
    let meter = s.container.begin_run(ctx);
    assert_eq!(chat(&s.sock(), ROLE_MODEL).await.status, 200);
    assert!(meter.exceeded().is_cancelled());
    assert_eq!(
        meter.exceeded_reason().as_deref(),
        Some("quota_exceeded: cost_usd_per_run 0.004472 > 0.004 (prompt 900 tokens, completion 334 tokens)")
    );
    assert_eq!(chat(&s.sock(), ROLE_MODEL).await.status, 429);
}

#[tokio::test]
async fn daily_quotas_count_what_every_run_spent_today() {
    let s = Setup::new().await;
    let mut ctx = s.ctx();
    ctx.quotas.tokens_per_day = Some(5000);
    s.backend.spent_today(
        &ctx,
        DailyUsage {
            tokens: 4000,
            cost_usd: 0.0,
        },
    );
    let meter = s.container.begin_run(ctx.clone());
    assert_eq!(chat(&s.sock(), ROLE_MODEL).await.status, 200);
    // Settled to what the call used: 4000 + 1234 crosses 5000.
    tokio::time::timeout(Duration::from_secs(5), meter.exceeded().cancelled())
        .await
        .expect("the crossing is noticed");
    assert_eq!(s.backend.today(&ctx).tokens, 5234);
    assert_eq!(
        meter.exceeded_reason().as_deref(),
        Some(format!("quota_exceeded: tokens_per_day 5234 > 5000 (today's total of employee {}, over every run)", ctx.employee_id.unwrap()).as_str())
    );
    assert_eq!(chat(&s.sock(), ROLE_MODEL).await.status, 429);
    drop(meter);

    // A day already spent stops the next run at its first call, which is
    // not sent and not charged.
    let mut ctx = s.ctx();
    ctx.quotas.cost_usd_per_day = Some(1.0);
    s.backend.spent_today(
        &ctx,
        DailyUsage {
            tokens: 0,
            cost_usd: 1.5,
        },
    );
    let meter = s.container.begin_run(ctx.clone());
    let a = chat(&s.sock(), ROLE_MODEL).await;
    assert_eq!(a.status, 429);
    assert!(a.error().contains("cost_usd_per_day 1.5"), "{}", a.text());
    assert!(meter.exceeded().is_cancelled());
    assert_eq!(s.backend.today(&ctx).cost_usd, 1.5, "given back");
    assert_eq!(s.upstream.seen_at("/v1/chat/completions").len(), 1);
}

#[tokio::test]
async fn a_streamed_answer_is_charged_chunk_by_chunk_and_ends_at_the_crossing() {
    let s = Setup::new().await;
    let mut ctx = s.ctx_model("gated");
    // The prompt's estimate (a token per four characters) fits and leaves
    // one token for the answer (the provider is told max_tokens 1; this one
    // ignores it): the first content chunk fills the day, the second
    // crosses it and is the last one passed.
    ctx.quotas.tokens_per_day = Some(1000);
    // "Say hello": 9 characters, 3 tokens.
    let prompt = 3;
    s.backend.spent_today(
        &ctx,
        DailyUsage {
            tokens: 1000 - prompt - 1,
            cost_usd: 0.0,
        },
    );
    let meter = s.container.begin_run(ctx.clone());
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("host", "gateway")
        .header("content-type", "application/json")
        .body(Body::from(chat_body("gated", true).to_string()))
        .unwrap();
    let resp = send(&s.sock(), req).await;
    assert_eq!(resp.status(), 200);
    let mut frames = Body::new(resp.into_body()).into_data_stream();
    let mut got = Vec::new();
    while let Ok(Some(Ok(f))) = tokio::time::timeout(Duration::from_secs(5), frames.next()).await {
        got.push(String::from_utf8_lossy(&f).into_owned());
        if got.len() == 1 {
            // Let the rest come: it must not pass.
            s.upstream.state.gate.notify_one();
        }
    }
    assert_eq!(s.upstream.seen()[0].json()["max_tokens"], 1);
    assert_eq!(got.len(), 2, "up to the chunk that crossed: {got:?}");
    assert!(got[0].contains("Hel") && got[1].contains("lo"));
    assert!(meter.exceeded().is_cancelled());
    let reason = meter.exceeded_reason().unwrap_or_default();
    assert!(
        reason.starts_with("quota_exceeded: tokens_per_day"),
        "{reason}"
    );
}

// ------------------------------------------------------------------ runs

#[tokio::test]
async fn without_a_run_every_request_is_a_409() {
    let s = Setup::new().await;
    let sock = s.sock();
    assert_eq!(s.container.current_run(), None);
    let a = chat(&sock, ROLE_MODEL).await;
    assert_eq!(a.status, 409);
    assert_eq!(
        a.error(),
        "no run is in progress in this container, so the gateway takes no requests"
    );
    assert_eq!(
        action(&sock, "memory.get", json!({"key": "k"}))
            .await
            .status,
        409
    );
    assert_eq!(
        post_json(&sock, "/v1/fetch", &json!({"url": "http://127.0.0.1/"}))
            .await
            .status,
        409
    );
    let (status, _, _) = connect(&sock, "127.0.0.1:9").await;
    assert!(status.starts_with("HTTP/1.1 409"), "{status}");

    // A run, then its end: back to 409.
    let meter = s.container.begin_run(s.ctx());
    assert_eq!(s.container.current_run(), Some(meter.run_id()));
    assert_eq!(chat(&sock, ROLE_MODEL).await.status, 200);
    drop(meter);
    assert_eq!(s.container.current_run(), None);
    assert_eq!(chat(&sock, ROLE_MODEL).await.status, 409);
    assert!(s.backend.audits_of("memory.get").is_empty());
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_one_sentence() {
    let s = Setup::new().await;
    let a = call(&s.sock(), "GET", "/v2/whatever", &[], "").await;
    assert_eq!(a.status, 404);
    a.error();
    let a = call(&s.sock(), "GET", "/v1/chat/completions", &[], "").await;
    assert_eq!(a.status, 405);
    assert_eq!(a.error(), "/v1/chat/completions takes POST, not GET");
}

// ------------------------------------------------------------------ actions

#[tokio::test]
async fn allowed_actions_run_through_the_backend_and_are_audited() {
    let s = Setup::new().await;
    let meter = s.container.begin_run(s.ctx());
    let ctx = meter.context().clone();
    let employee = ctx.employee_id.unwrap();
    let sock = s.sock();

    let a = action(
        &sock,
        "memory.set",
        json!({"key": "lang", "value": {"name": "rust"}}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), json!({"result": {"ok": true}}));
    assert_eq!(
        lock(&s.backend.memory).get(&(employee, "lang".to_string())),
        Some(&json!({"name": "rust"}))
    );
    let a = action(&sock, "memory.get", json!({"key": "lang"})).await;
    assert_eq!(a.json(), json!({"result": {"name": "rust"}}));
    let a = action(&sock, "memory.get", json!({"key": "missing"})).await;
    assert_eq!(a.json(), json!({"result": null}));
    let a = action(&sock, "memory.list", json!({})).await;
    assert_eq!(a.json(), json!({"result": {"lang": {"name": "rust"}}}));

    let a = action(
        &sock,
        "task.create",
        json!({"role": "shell", "input": {"command": "true"}}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let created = a.json()["result"]["id"].as_str().unwrap().to_string();
    {
        let tasks = lock(&s.backend.tasks);
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].0, ctx.task_id, "the parent is the run's task");
        assert_eq!(tasks[0].1.role, "shell");
        assert_eq!(tasks[0].2.to_string(), created);
    }
    let reviewed = Uuid::new_v4();
    let a = action(
        &sock,
        "review.submit",
        json!({"task_id": reviewed, "score": 8, "approve": true, "summary": "good"}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(lock(&s.backend.reviews)[0].1.score, 8);
    let plan = json!({"summary": "s", "subtasks": [{"key": "a", "title": "A", "description": "d",
        "role": "executor", "acceptance": ["done"]}]});
    let a = action(&sock, "plan.submit", plan).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["result"]["subtasks"], 1);
    // What the backend refuses comes back with its status and sentence.
    let a = action(&sock, "plan.submit", json!({"subtasks": []})).await;
    assert_eq!(a.status, 422);
    assert_eq!(a.error(), "the plan has no sub-tasks");
    let a = action(&sock, "plan.submit", json!({"subtasks": [{"key": "a"}]})).await;
    assert_eq!(a.status, 400);
    assert!(
        a.error()
            .starts_with("the args of plan.submit are not a plan"),
        "{}",
        a.error()
    );
    assert_eq!(lock(&s.backend.plans).len(), 1);

    meter.finish().await;
    let audits = lock(&s.backend.audits).clone();
    assert_eq!(audits.len(), 9);
    assert_eq!(
        audits
            .iter()
            .filter(|r| r.outcome == AuditOutcome::Failed)
            .count(),
        2,
        "the refused plans"
    );
    let audits: Vec<_> = audits
        .into_iter()
        .filter(|r| r.outcome != AuditOutcome::Failed)
        .collect();
    assert!(audits.iter().all(|r| r.outcome == AuditOutcome::Allowed));
    assert!(audits.iter().all(|r| r.run_id == ctx.run_id
        && r.task_id == ctx.task_id
        && r.employee_id == Some(employee)
        && r.role == "coder"
        && r.tenant == "t1"));
    let set = s.backend.audits_of("memory.set");
    assert_eq!(set[0].target.as_deref(), Some("lang"));
    assert_eq!(
        s.backend.audits_of("task.create")[0].target.as_deref(),
        Some(created.as_str())
    );
    assert_eq!(
        s.backend.audits_of("review.submit")[0].target,
        Some(reviewed.to_string())
    );
}

#[tokio::test]
async fn an_action_the_role_does_not_allow_is_a_403_and_audited_as_denied() {
    let s = Setup::new().await;
    let meter = s.container.begin_run(s.ctx());
    let a = action(&s.sock(), "note", json!({"text": "hi"})).await;
    assert_eq!(a.status, 403);
    assert_eq!(
        a.json(),
        json!({"error": "role coder may not use action note"})
    );
    assert!(lock(&s.backend.notes).is_empty());
    meter.finish().await;
    let audits = s.backend.audits_of("note");
    assert_eq!(outcome_of(&audits), vec![AuditOutcome::Denied]);
    assert_eq!(audits[0].detail, "role coder may not use action note");
}

#[tokio::test]
async fn memory_without_an_employee_is_a_409() {
    let s = Setup::new().await;
    let mut ctx = s.ctx();
    ctx.employee_id = None;
    let meter = s.container.begin_run(ctx);
    let a = action(&s.sock(), "memory.set", json!({"key": "k", "value": 1})).await;
    assert_eq!(a.status, 409);
    assert_eq!(
        a.error(),
        "this run of role coder has no employee, so it has no memory for memory.set"
    );
    assert!(lock(&s.backend.memory).is_empty());
    meter.finish().await;
    assert_eq!(
        outcome_of(&s.backend.audits_of("memory.set")),
        vec![AuditOutcome::Failed]
    );
}

#[tokio::test]
async fn an_unknown_action_is_a_404_and_audited() {
    let s = Setup::new().await;
    let meter = s.container.begin_run(s.ctx());
    let a = action(&s.sock(), "launch.missiles", json!({})).await;
    assert_eq!(a.status, 404);
    assert!(a
        .error()
        .starts_with("there is no action named launch.missiles"));
    meter.finish().await;
    assert_eq!(
        outcome_of(&s.backend.audits_of("launch.missiles")),
        vec![AuditOutcome::Denied]
    );
}

#[tokio::test]
async fn bad_arguments_and_backend_refusals_are_one_sentence_and_audited_as_failed() {
    let s = Setup::new().await;
    let meter = s.container.begin_run(s.ctx());
    let sock = s.sock();
    let a = action(&sock, "memory.get", json!({"key": ""})).await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.error(),
        "action memory.get needs args.key, a non-empty string of at most 200 bytes"
    );
    let a = action(
        &sock,
        "task.create",
        json!({"role": "no-such-role", "input": {}}),
    )
    .await;
    assert_eq!(a.status, 422);
    assert_eq!(a.error(), "there is no role no-such-role");
    let a = action(&sock, "task.create", json!({"input": {}})).await;
    assert_eq!(a.status, 400);
    assert!(a
        .error()
        .starts_with("the submission is not a valid task submission"));
    let a = action(
        &sock,
        "review.submit",
        json!({"task_id": Uuid::new_v4(), "score": 11, "approve": true}),
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.error(),
        "the score of review.submit must be from 1 to 10, not 11"
    );
    let a = call(&sock, "POST", "/v1/actions/memory.list", &[], "[1,2").await;
    assert_eq!(a.status, 400);
    a.error();
    meter.finish().await;
    let audits = lock(&s.backend.audits).clone();
    assert_eq!(audits.len(), 5);
    assert!(
        audits.iter().all(|r| r.outcome == AuditOutcome::Failed),
        "{audits:?}"
    );
}

// ------------------------------------------------------------------ fetch

#[tokio::test]
async fn fetch_attaches_the_vault_credential_which_never_comes_back() {
    let s = Setup::new().await;
    let secret = "vault-secret-value-42";
    lock(&s.backend.vault).push((
        "t1".into(),
        format!("http://127.0.0.1:{}/", s.upstream.addr.port()),
        "x-api-key".into(),
        secret.into(),
    ));
    let meter = s.container.begin_run(s.ctx());
    let url = format!("http://127.0.0.1:{}/docs?q=1", s.upstream.addr.port());
    let a = post_json(
        &s.sock(),
        "/v1/fetch",
        &json!({"url": url, "headers": [["x-api-key", "container-guess"], ["accept", "text/plain"]]}),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let f: subjects::gateway::FetchResponse = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(f.status, 200);
    assert_eq!(f.body, "page GET /docs");
    assert!(!f.truncated);
    assert!(f
        .headers
        .iter()
        .any(|(n, v)| n == "x-upstream" && v == "yes"));
    assert!(!a.everything().contains(secret));

    let seen = s.upstream.seen_at("/docs");
    assert_eq!(seen.len(), 1);
    let keys: Vec<_> = seen[0].headers.get_all("x-api-key").iter().collect();
    assert_eq!(keys, vec![secret], "the vault's value, not the container's");
    assert_eq!(seen[0].header("accept").as_deref(), Some("text/plain"));
    assert_eq!(
        seen[0].header("authorization"),
        None,
        "the provider key is not egress"
    );

    // A remote that echoes the credential gets it scrubbed on the way back.
    let a = post_json(
        &s.sock(),
        "/v1/fetch",
        &json!({"url": format!("http://127.0.0.1:{}/echo-secret", s.upstream.addr.port())}),
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(!a.everything().contains(secret));
    let f: subjects::gateway::FetchResponse = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(f.body, "you sent [redacted]");

    meter.finish().await;
    let audits = s.backend.audits_of(EGRESS_ACTION);
    assert_eq!(
        outcome_of(&audits),
        vec![AuditOutcome::Allowed, AuditOutcome::Allowed]
    );
    let target = format!("127.0.0.1:{}", s.upstream.addr.port());
    assert_eq!(audits[0].target.as_deref(), Some(target.as_str()));
    assert!(
        audits[0].detail.starts_with("fetch GET http://127.0.0.1:"),
        "{}",
        audits[0].detail
    );
    assert!(!audits[0].detail.contains("q=1"), "no query in the audit");
}

#[tokio::test]
async fn fetch_bounds_the_body() {
    let s = Setup::new().await;
    let _meter = s.container.begin_run(s.ctx());
    let a = post_json(
        &s.sock(),
        "/v1/fetch",
        &json!({"url": format!("http://127.0.0.1:{}/big", s.upstream.addr.port())}),
    )
    .await;
    let f: subjects::gateway::FetchResponse = serde_json::from_slice(&a.body).unwrap();
    assert!(f.truncated);
    assert_eq!(f.body.len(), 256 * 1024);
}

#[tokio::test]
async fn fetch_outside_the_allowlist_is_a_403_and_audited() {
    let s = Setup::new().await;
    let meter = s.container.begin_run(s.ctx());
    let a = post_json(
        &s.sock(),
        "/v1/fetch",
        &json!({"url": "http://example.com/x"}),
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(
        a.error(),
        "example.com:80 is not in the egress allowlist of role coder (an entry without a port allows 80 and 443)"
    );
    meter.finish().await;
    let audits = s.backend.audits_of(EGRESS_ACTION);
    assert_eq!(outcome_of(&audits), vec![AuditOutcome::Denied]);
    assert_eq!(audits[0].target.as_deref(), Some("example.com:80"));
}

#[tokio::test]
async fn loopback_in_every_spelling_is_refused_even_when_listed() {
    let s = Setup::closed().await;
    let port = s.upstream.addr.port();
    let mut ctx = s.ctx();
    for host in [
        "localhost",
        "127.1",
        "2130706433",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
    ] {
        ctx.egress.push(format!("{host}:{port}"));
    }
    let meter = s.container.begin_run(ctx);
    let urls = [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://127.1:{port}/"),
        format!("http://2130706433:{port}/"),
        format!("http://0x7f000001:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://0.0.0.0:{port}/"),
    ];
    for url in &urls {
        let a = post_json(&s.sock(), "/v1/fetch", &json!({ "url": url })).await;
        assert_eq!(a.status, 403, "{url}: {}", a.text());
        let e = a.error();
        assert!(
            e.contains("loopback address") || e.contains("unspecified"),
            "{url}: {e}"
        );
        let forwarded = call(&s.sock(), "GET", url, &[], "").await;
        assert_eq!(forwarded.status, 403, "{url}: {}", forwarded.text());
    }
    for target in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("127.1:{port}"),
        format!("[::1]:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("0.0.0.0:{port}"),
    ] {
        let (status, body, _) = connect(&s.sock(), &target).await;
        assert!(
            status.starts_with("HTTP/1.1 403"),
            "{target}: {status} {body}"
        );
    }
    assert!(s.upstream.seen().is_empty(), "nothing reached the upstream");
    meter.finish().await;
    let audits = s.backend.audits_of(EGRESS_ACTION);
    assert_eq!(audits.len(), urls.len() * 2 + 6);
    assert!(
        audits.iter().all(|a| a.outcome == AuditOutcome::Denied),
        "{audits:?}"
    );
}

#[tokio::test]
async fn private_ranges_are_refused_until_the_operator_opens_them() {
    let closed = Setup::closed().await;
    let port = closed.upstream.addr.port();
    let meter = closed.container.begin_run(closed.ctx());
    let url = format!("http://127.0.0.1:{port}/docs");
    let a = post_json(&closed.sock(), "/v1/fetch", &json!({ "url": url })).await;
    assert_eq!(a.status, 403);
    assert_eq!(
        a.error(),
        "host 127.0.0.1 is a loopback address, which the gateway refuses unless the operator opens its range with COLONY_EGRESS_ALLOW_PRIVATE"
    );
    for target in [
        "10.1.2.3:443",
        "192.168.1.1:443",
        "172.16.0.1:443",
        "100.64.0.1:443",
    ] {
        let (status, body, _) = connect(&closed.sock(), target).await;
        assert!(status.starts_with("HTTP/1.1 403"), "{target}: {status}");
        assert!(
            body.contains("address, which the gateway refuses"),
            "{body}"
        );
    }
    meter.finish().await;

    let open = Setup::new().await;
    let _meter = open.container.begin_run(open.ctx());
    let url = format!("http://127.0.0.1:{}/docs", open.upstream.addr.port());
    let a = post_json(&open.sock(), "/v1/fetch", &json!({ "url": url })).await;
    assert_eq!(a.status, 200, "{}", a.text());
    // Opened, but still only on the listed port.
    let a = post_json(
        &open.sock(),
        "/v1/fetch",
        &json!({"url": "http://127.0.0.1:9/"}),
    )
    .await;
    assert_eq!(a.status, 403);
    assert!(
        a.error()
            .starts_with("127.0.0.1:9 is not in the egress allowlist"),
        "{}",
        a.text()
    );
}

// ------------------------------------------------------------------ proxy

#[tokio::test]
async fn connect_tunnels_bytes_to_an_allowed_host_until_the_run_ends() {
    let s = Setup::new().await;
    let echo = echo_server().await;
    let mut ctx = s.ctx();
    ctx.egress.push(echo.to_string());
    let meter = s.container.begin_run(ctx);
    let (status, _, mut tunnel) = connect(&s.sock(), &echo.to_string()).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    tunnel.write_all(b"ping through the tunnel").await.unwrap();
    let mut back = [0u8; 23];
    tunnel.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping through the tunnel");

    let totals = meter.finish().await;
    assert_eq!(
        (totals.egress_bytes_out, totals.egress_bytes_in),
        (23, 23),
        "tunnel bytes are metered"
    );
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut rest))
        .await
        .expect("the tunnel closes when the run ends")
        .unwrap();
    assert_eq!(n, 0);
    let audits = s.backend.audits_of(EGRESS_ACTION);
    assert_eq!(outcome_of(&audits), vec![AuditOutcome::Allowed]);
    assert_eq!(audits[0].target, Some(echo.to_string()));
}

#[tokio::test]
async fn connect_to_a_host_outside_the_allowlist_is_a_403_naming_host_and_role() {
    let s = Setup::new().await;
    let meter = s.container.begin_run(s.ctx());
    let (status, body, _) = connect(&s.sock(), "evil.example.com:443").await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    assert_eq!(
        body,
        r#"{"error":"evil.example.com:443 is not in the egress allowlist of role coder (an entry without a port allows 80 and 443)"}"#
    );
    // A wildcard entry covers sub-domains only, not the suffix itself.
    let (status, _, _) = connect(&s.sock(), "example.org:443").await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    meter.finish().await;
    let audits = s.backend.audits_of(EGRESS_ACTION);
    assert_eq!(
        outcome_of(&audits),
        vec![AuditOutcome::Denied, AuditOutcome::Denied]
    );
    assert_eq!(audits[0].target.as_deref(), Some("evil.example.com:443"));
}

#[tokio::test]
async fn the_metadata_address_is_refused_even_when_listed() {
    let s = Setup::new().await;
    let mut ctx = s.ctx();
    ctx.egress = vec!["169.254.169.254".into(), "fe80::1".into()];
    let meter = s.container.begin_run(ctx);
    let (status, body, _) = connect(&s.sock(), "169.254.169.254:80").await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    assert!(
        body.contains("link-local or cloud metadata address, which no role may reach"),
        "{body}"
    );
    let (status, _, _) = connect(&s.sock(), "[fe80::1]:80").await;
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    let a = call(
        &s.sock(),
        "GET",
        "http://169.254.169.254/latest/meta-data/",
        &[],
        "",
    )
    .await;
    assert_eq!(a.status, 403);
    let a = post_json(
        &s.sock(),
        "/v1/fetch",
        &json!({"url": "http://169.254.169.254/"}),
    )
    .await;
    assert_eq!(a.status, 403);
    meter.finish().await;
    assert_eq!(
        outcome_of(&s.backend.audits_of(EGRESS_ACTION)),
        vec![AuditOutcome::Denied; 4]
    );
}

#[tokio::test]
async fn an_absolute_form_request_is_forwarded_with_the_vault_credential() {
    let s = Setup::new().await;
    let secret = "plain-http-secret-7";
    lock(&s.backend.vault).push((
        "t1".into(),
        format!("http://127.0.0.1:{}/", s.upstream.addr.port()),
        "authorization".into(),
        format!("Bearer {secret}"),
    ));
    let meter = s.container.begin_run(s.ctx());
    let url = format!("http://127.0.0.1:{}/simple/pkg/", s.upstream.addr.port());
    let a = call(
        &s.sock(),
        "GET",
        &url,
        &[("proxy-authorization", "Basic abc"), ("x-client", "pip")],
        "",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.text(), "page GET /simple/pkg/");
    assert_eq!(a.headers["x-upstream"], "yes");
    let seen = s.upstream.seen_at("/simple/pkg/");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {secret}"))
    );
    assert_eq!(seen[0].header("x-client").as_deref(), Some("pip"));
    assert_eq!(seen[0].header("proxy-authorization"), None);
    assert!(!a.everything().contains(secret));

    // A body goes through too.
    let a = call(&s.sock(), "POST", &url, &[("content-length", "5")], "hello").await;
    assert_eq!(a.status, 200);
    assert_eq!(s.upstream.seen_at("/simple/pkg/")[1].body, "hello");

    let denied = call(&s.sock(), "GET", "http://pypi.org/simple/", &[], "").await;
    assert_eq!(denied.status, 403);
    assert_eq!(
        denied.error(),
        "pypi.org:80 is not in the egress allowlist of role coder (an entry without a port allows 80 and 443)"
    );
    meter.finish().await;
    assert_eq!(
        outcome_of(&s.backend.audits_of(EGRESS_ACTION)),
        vec![
            AuditOutcome::Allowed,
            AuditOutcome::Allowed,
            AuditOutcome::Denied
        ]
    );
}

#[tokio::test]
async fn egress_after_the_quota_is_crossed_is_refused_too() {
    let s = Setup::new().await;
    let mut ctx = s.ctx();
    ctx.quotas.tokens_per_run = Some(10);
    let meter = s.container.begin_run(ctx);
    assert_eq!(chat(&s.sock(), ROLE_MODEL).await.status, 200);
    let echo = echo_server().await;
    let (status, _, _) = connect(&s.sock(), &echo.to_string()).await;
    assert!(status.starts_with("HTTP/1.1 429"), "{status}");
    let a = action(&s.sock(), "memory.get", json!({"key": "k"})).await;
    assert_eq!(a.status, 429);
    meter.finish().await;
    assert_eq!(
        outcome_of(&s.backend.audits_of("memory.get")),
        vec![AuditOutcome::Denied]
    );
}

// ------------------------------------------------------------------ the socket

#[tokio::test]
async fn the_socket_is_0666_replaces_a_stale_one_and_is_removed_on_drop() {
    let s = Setup::new().await;
    let path = s.sock();
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);

    // A second gateway on the same path replaces the first one's socket;
    // dropping the first must not remove the second's.
    let second = s.gateway.serve(&path).unwrap();
    let Setup { container, .. } = s;
    drop(container);
    assert!(path.exists(), "the newer socket stays");
    let meter = second.begin_run(RunContextExt::simple());
    assert_eq!(
        chat(&path, "m").await.status,
        200,
        "the second gateway answers"
    );
    drop(meter);
    drop(second);
    assert!(!path.exists(), "removed on drop");
}

#[tokio::test]
async fn close_stops_the_server() {
    let s = Setup::new().await;
    let path = s.sock();
    let Setup { container, .. } = s;
    container.close().await;
    assert!(!path.exists());
    assert!(tokio::net::UnixStream::connect(&path).await.is_err());
}

/// A bare context for tests that only need a run in progress.
struct RunContextExt;

impl RunContextExt {
    fn simple() -> gateway::RunContext {
        gateway::RunContext {
            task_id: Uuid::new_v4(),
            run_id: Uuid::new_v4(),
            employee_id: None,
            tenant: "t".into(),
            role: "r".into(),
            model: "m".into(),
            allowed_actions: Default::default(),
            egress: vec![],
            quotas: Quotas::default(),
        }
    }
}

#[tokio::test]
async fn under_a_daily_quota_the_answer_may_be_no_longer_than_the_day_has_left() {
    let s = Setup::new().await;
    let mut ctx = s.ctx();
    ctx.quotas.tokens_per_day = Some(1000);
    s.backend.spent_today(
        &ctx,
        DailyUsage {
            tokens: 400,
            cost_usd: 0.0,
        },
    );
    let _meter = s.container.begin_run(ctx.clone());
    // One choice only.
    let mut body = chat_body(ROLE_MODEL, false);
    body["n"] = json!(3);
    let a = post_json(&s.sock(), "/v1/chat/completions", &body).await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.error(),
        "role coder has a daily quota, so a call may ask for one choice, not n=3"
    );
    assert!(s.upstream.seen().is_empty(), "not sent");
    // "Say hello" is 3 tokens: 597 are left for the answer.
    let mut body = chat_body(ROLE_MODEL, false);
    body["max_tokens"] = json!(100_000);
    let a = post_json(&s.sock(), "/v1/chat/completions", &body).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let sent = s.upstream.seen()[0].json();
    assert_eq!(sent["max_tokens"], 597, "clamped to what is left");
}

#[tokio::test]
async fn without_a_length_one_is_set_to_what_the_day_has_left() {
    let s = Setup::new().await;
    let mut ctx = s.ctx();
    ctx.quotas.tokens_per_day = Some(50);
    let _meter = s.container.begin_run(ctx);
    let a = chat(&s.sock(), ROLE_MODEL).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(s.upstream.seen()[0].json()["max_tokens"], 47);
}

#[tokio::test]
async fn the_provider_gets_exactly_the_request_that_was_checked() {
    let s = Setup::new().await;
    let _meter = s.container.begin_run(s.ctx());
    // Two "model" keys: the last one is the one checked, and the only one
    // sent (mapped to the provider's name).
    let body = format!(
        r#"{{"model":"gpt-expensive","model":"{ROLE_MODEL}","messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("host", "gateway")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = send(&s.sock(), req).await;
    assert_eq!(resp.status(), 200);
    let seen = s.upstream.seen();
    assert_eq!(seen.len(), 1);
    let sent = String::from_utf8_lossy(&seen[0].body).into_owned();
    assert_eq!(sent.matches("\"model\"").count(), 1, "{sent}");
    assert_eq!(seen[0].json()["model"], PROVIDER_MODEL);
    let body = format!(r#"{{"model":"{ROLE_MODEL}","model":"gpt-expensive","messages":[]}}"#);
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("host", "gateway")
        .body(Body::from(body))
        .unwrap();
    assert_eq!(send(&s.sock(), req).await.status(), 403);
    assert_eq!(s.upstream.seen().len(), 1, "the refused one was not sent");
}
