//! The HTTP API described as OpenAPI 3.1, generated from the code: the
//! routes and what each needs come from [`super::auth::ROUTES`] (the table
//! the router is checked against), the bodies' and answers' schemas from
//! the same Rust types the handlers read and write (through `schemars`,
//! which also writes the message schemas under `subjects/schema/`). Served
//! at `GET /openapi.json` and committed as `subjects/schema/openapi.json`;
//! a test fails when the two drift.
//!
//! Why not `utoipa`: every type on the wire already derives
//! `schemars::JsonSchema` for the published message schemas; a second
//! derive per type could disagree with them, and OpenAPI 3.1's schemas
//! are JSON Schema 2020-12, which is what `schemars` writes.

use axum::Json;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};
use store::Scope;
use subjects::goals::{GoalAccepted, GoalDecision, GoalSubmission, GoalSummary, GoalView};
use subjects::ops::{DlqBulk, DlqList, DlqOutcome, Overview, Streams, TaskPage, WhoAmI};
use subjects::schedules::{Backfill, Fires, FiresStarted, ScheduleSpec, ScheduleView};
use subjects::status::WorkerStatus;
use subjects::{ApiError, TaskAccepted, TaskSubmission, TaskView};

use super::auth::{Access, ROUTES};

/// What one response carries.
enum Content {
    Json(Schema),
    /// Server-sent events whose data is one of these.
    Sse(Schema),
    Text(&'static str),
    Files,
    Empty,
}

/// One query parameter: name, schema, description.
type Param = (&'static str, Value, &'static str);

/// The documentation of one operation.
struct Op {
    summary: &'static str,
    tag: &'static str,
    query: Vec<Param>,
    /// (schema, required)
    body: Option<(Schema, bool)>,
    ok: Vec<(u16, Content)>,
}

fn op(summary: &'static str, tag: &'static str) -> Op {
    Op {
        summary,
        tag,
        query: Vec::new(),
        body: None,
        ok: Vec::new(),
    }
}

impl Op {
    fn query(mut self, name: &'static str, schema: Value, what: &'static str) -> Op {
        self.query.push((name, schema, what));
        self
    }
    fn body(mut self, schema: Schema) -> Op {
        self.body = Some((schema, true));
        self
    }
    fn optional_body(mut self, schema: Schema) -> Op {
        self.body = Some((schema, false));
        self
    }
    fn ok(mut self, status: u16, c: Content) -> Op {
        self.ok.push((status, c));
        self
    }
    fn json(self, status: u16, s: Schema) -> Op {
        self.ok(status, Content::Json(s))
    }
}

/// A schema written as JSON (always an object here).
fn sch(v: Value) -> Schema {
    Schema::try_from(v).unwrap_or_default()
}

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// `{"<field>": [T…]}`
fn list_of<T: JsonSchema>(g: &mut SchemaGenerator, field: &str) -> Schema {
    let items = g.subschema_for::<T>();
    sch(
        json!({"type": "object", "required": [field], "properties": {field: {"type": "array", "items": items}}}),
    )
}

fn array_of<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    let items = g.subschema_for::<T>();
    sch(json!({"type": "array", "items": items}))
}

fn any_object() -> Schema {
    sch(json!({"type": "object"}))
}

fn limit(max: u32) -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": max})
}

fn text() -> Value {
    json!({"type": "string"})
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn uuid() -> Value {
    json!({"type": "string", "format": "uuid"})
}

fn one_of(values: &[&str]) -> Value {
    json!({"type": "string", "enum": values})
}

const TASK_STATES: &[&str] = &[
    "pending",
    "queued",
    "running",
    "review",
    "rework",
    "blocked",
    "done",
    "failed",
    "cancelled",
];

/// A person's action on a goal: an optional note, the goal after it.
fn goal_act(summary: &'static str, g: &mut SchemaGenerator) -> Op {
    op(summary, "goals")
        .optional_body(schema::<super::goals::Note>(g))
        .json(200, schema::<GoalView>(g))
}

/// The documentation of `method path`; `None` for a route not documented
/// (the drift test fails then).
fn doc(method: &str, path: &str, g: &mut SchemaGenerator) -> Option<Op> {
    use Content::{Empty, Files, Sse, Text};
    // One server-sent event: its name and its data, JSON of one of these
    // (a task's event, a goal's, the final view that ends the stream); a
    // `lagged` event's data is a sentence instead.
    let sse = |data: Vec<Schema>| {
        sch(json!({
            "type": "object",
            "required": ["data"],
            "properties": {
                "event": {"type": "string"},
                "data": {"type": "string", "contentMediaType": "application/json",
                         "contentSchema": {"anyOf": data},
                         "description": "JSON of one of these, except for a `lagged` event: how many events were skipped, in a sentence"}
            }
        }))
    };
    let task_events = sse(vec![schema::<subjects::Event>(g), schema::<TaskView>(g)]);
    let goal_events = sse(vec![
        schema::<subjects::goals::GoalEvent>(g),
        schema::<subjects::Event>(g),
        schema::<GoalView>(g),
    ]);
    let feed = sse(vec![
        schema::<subjects::Event>(g),
        schema::<subjects::goals::GoalEvent>(g),
    ]);
    Some(match (method, path) {
        ("GET", "/healthz") => op("Whether Postgres and NATS answer", "health")
            .json(200, sch(json!({"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}})))
            .json(503, sch(json!({"type": "object", "required": ["status"], "properties": {"status": {"const": "unavailable"}}}))),
        ("GET", "/") => op("The built-in dashboard", "dashboard").ok(200, Text("text/html")),
        ("GET", "/ui/{file}") => op("A file of the dashboard (app.js, app.css)", "dashboard").ok(200, Files),
        ("GET", "/openapi.json") => op("This description", "health").json(200, any_object()),
        ("GET", "/v1/whoami") => op("The key's tenant and scope", "ops").json(200, schema::<WhoAmI>(g)),
        ("GET", "/v1/overview") => op("The tenant's tasks, goals, throughput and spend today", "ops").json(200, schema::<Overview>(g)),
        ("GET", "/v1/feed") => op("The tenant's task and goal events, live, as server-sent events", "ops").ok(200, Sse(feed)),
        ("GET", "/v1/streams") => op("Streams, consumers, pools' backlogs and dead letters", "ops").json(200, schema::<Streams>(g)),
        ("GET", "/v1/tasks") => op("Search the tenant's tasks, newest first", "tasks")
            .query("state", one_of(TASK_STATES), "only tasks in this state")
            .query("role", text(), "only tasks of this role")
            .query("goal_id", uuid(), "only sub-tasks of this goal")
            .query("employee_id", uuid(), "only tasks of this employee")
            .query("q", json!({"type": "string", "maxLength": 200}), "text the id, input or error contains")
            .query("before", uuid(), "the next of the previous page")
            .query("limit", limit(200), "tasks per page (50)")
            .json(200, schema::<TaskPage>(g)),
        ("POST", "/v1/tasks") => op("Submit a task (Idempotency-Key makes a retry return the same task)", "tasks")
            .body(schema::<TaskSubmission>(g))
            .json(202, schema::<TaskAccepted>(g))
            .json(200, schema::<TaskAccepted>(g)),
        ("GET", "/v1/tasks/{id}") => op("A task; wait= holds the answer until it is final", "tasks")
            .query("wait", json!({"type": "number", "minimum": 0}), "seconds to wait for a final state")
            .json(200, schema::<TaskView>(g)),
        ("GET", "/v1/tasks/{id}/events") => op("A task's events as server-sent events, until it is final", "tasks").ok(200, Sse(task_events)),
        ("POST", "/v1/tasks/{id}/cancel") => op("Cancel a task that is not final", "tasks").json(200, schema::<TaskView>(g)),
        ("POST", "/v1/employees") => op("Hire an employee for a role", "employees")
            .body(schema::<super::employees::HireRequest>(g))
            .json(201, schema::<store::employees::Employee>(g)),
        ("GET", "/v1/employees") => op("The tenant's employees", "employees")
            .query("role", text(), "only this role")
            .query("state", one_of(&["active", "paused", "offboarded"]), "only this state")
            .json(200, list_of::<store::employees::Employee>(g, "employees")),
        ("GET", "/v1/employees/{id}") => op("An employee, its effective quotas and usage", "employees")
            .json(200, schema::<super::employees::EmployeeView<'_>>(g)),
        ("DELETE", "/v1/employees/{id}") => op("Offboard an employee", "employees").json(200, schema::<store::employees::Employee>(g)),
        ("GET", "/v1/employees/{id}/memory") => op("An employee's memory, key by key", "employees")
            .json(200, sch(json!({"type": "object"}))),
        ("POST", "/v1/employees/{id}/pause") => op("Pause an employee", "employees").json(200, schema::<store::employees::Employee>(g)),
        ("POST", "/v1/employees/{id}/resume") => op("Resume an employee", "employees").json(200, schema::<store::employees::Employee>(g)),
        ("POST", "/v1/employees/{id}/score") => op("Adjust an employee's score", "employees")
            .body(schema::<super::goals::Adjustment>(g))
            .json(201, schema::<store::scores::ScoreEvent>(g)),
        ("GET", "/v1/audit") => op("The tenant's audit trail", "audit")
            .query("employee", uuid(), "only this employee's actions")
            .query("action", text(), "only this action")
            .query("outcome", one_of(&["allowed", "denied", "failed"]), "only this outcome")
            .query("since", time(), "from (inclusive)")
            .query("until", time(), "to (inclusive)")
            .query("limit", limit(store::audit::MAX_LIMIT), "rows at most")
            .json(200, list_of::<store::audit::AuditEntry>(g, "entries")),
        ("POST", "/v1/credentials") => op("Store a credential for the egress proxy to inject", "credentials")
            .body(schema::<super::credentials::CredentialRequest>(g))
            .json(201, schema::<store::vault::Credential>(g)),
        ("GET", "/v1/credentials") => op("The tenant's credentials (never their values)", "credentials")
            .json(200, list_of::<store::vault::Credential>(g, "credentials")),
        ("DELETE", "/v1/credentials/{id}") => op("Delete a credential", "credentials").ok(204, Empty),
        ("POST", "/v1/keys") => op("Make an API key (its secret is in this answer only)", "keys")
            .body(schema::<super::keys::KeyRequest>(g))
            .json(201, schema::<super::keys::CreatedView<'_>>(g)),
        ("GET", "/v1/keys") => op("The tenant's keys (never their secrets)", "keys").json(200, list_of::<store::ApiKey>(g, "keys")),
        ("DELETE", "/v1/keys/{id}") => op("Revoke a key", "keys").json(200, schema::<store::ApiKey>(g)),
        ("GET", "/v1/workers") => op("Every live worker's status", "ops").json(200, array_of::<WorkerStatus>(g)),
        ("GET", "/metrics") => op("Metrics in the OpenMetrics text format", "ops").ok(200, Text("application/openmetrics-text")),
        ("POST", "/v1/goals") => op("Submit a goal", "goals")
            .body(schema::<GoalSubmission>(g))
            .json(202, schema::<GoalAccepted>(g))
            .json(200, schema::<GoalAccepted>(g)),
        ("GET", "/v1/goals") => op("The tenant's goals, newest first", "goals")
            .query("state", text(), "only goals in this state")
            .query("limit", limit(500), "goals at most")
            .json(200, array_of::<GoalSummary>(g)),
        ("GET", "/v1/goals/{id}") => op("A goal with its plan, sub-tasks, progress and spend", "goals").json(200, schema::<GoalView>(g)),
        ("GET", "/v1/goals/{id}/events") => op("A goal's history and live events as server-sent events", "goals").ok(200, Sse(goal_events)),
        ("POST", "/v1/goals/{id}/pause") => goal_act("Pause a goal", g),
        ("POST", "/v1/goals/{id}/resume") => goal_act("Resume a goal", g),
        ("POST", "/v1/goals/{id}/approve") => goal_act("Approve a goal's plan", g),
        ("POST", "/v1/goals/{id}/cancel") => goal_act("Cancel a goal", g),
        ("POST", "/v1/goals/{id}/replan") => goal_act("Plan a goal again", g),
        ("POST", "/v1/goals/{id}/decide") => op("Decide what a blocked goal does", "goals")
            .body(schema::<GoalDecision>(g))
            .json(200, schema::<GoalView>(g)),
        ("GET", "/v1/leaderboard") => op("Employees by score", "employees")
            .query("role", text(), "only this role")
            .json(200, array_of::<store::scores::Standing>(g)),
        ("POST", "/v1/webhooks") => op("Register a webhook (its secret is in this answer only)", "webhooks")
            .body(schema::<super::webhooks::WebhookRequest>(g))
            .json(201, schema::<store::webhooks::CreatedWebhook>(g)),
        ("GET", "/v1/webhooks") => op("The tenant's webhooks", "webhooks").json(200, list_of::<store::webhooks::Webhook>(g, "webhooks")),
        ("DELETE", "/v1/webhooks/{id}") => op("Delete a webhook", "webhooks").ok(204, Empty),
        ("GET", "/v1/webhooks/{id}/deliveries") => op("A webhook's delivery attempts", "webhooks")
            .json(200, list_of::<store::webhooks::Delivery>(g, "deliveries")),
        ("POST", "/v1/schedules") => op("Make a schedule", "schedules").body(schema::<ScheduleSpec>(g)).json(201, schema::<ScheduleView>(g)),
        ("GET", "/v1/schedules") => op("The tenant's schedules", "schedules")
            .query("limit", limit(500), "schedules at most")
            .json(200, array_of::<ScheduleView>(g)),
        ("GET", "/v1/schedules/{id}") => op("A schedule with its next fires", "schedules").json(200, schema::<ScheduleView>(g)),
        ("PATCH", "/v1/schedules/{id}") => op("Change some of a schedule's fields (null removes one)", "schedules")
            .body(any_object())
            .json(200, schema::<ScheduleView>(g)),
        ("DELETE", "/v1/schedules/{id}") => op("Delete a schedule", "schedules").ok(204, Empty),
        ("POST", "/v1/schedules/{id}/pause") => op("Pause a schedule", "schedules").json(200, schema::<ScheduleView>(g)),
        ("POST", "/v1/schedules/{id}/resume") => op("Resume a schedule", "schedules").json(200, schema::<ScheduleView>(g)),
        ("POST", "/v1/schedules/{id}/trigger") => op("Fire a schedule now", "schedules").json(202, schema::<FiresStarted>(g)),
        ("POST", "/v1/schedules/{id}/backfill") => op("Fire a schedule's missed times in a span", "schedules")
            .body(schema::<Backfill>(g))
            .json(202, schema::<FiresStarted>(g)),
        ("GET", "/v1/schedules/{id}/fires") => op("A schedule's fires, newest first", "schedules")
            .query("outcome", text(), "only this outcome")
            .query("limit", limit(1000), "fires at most")
            .json(200, schema::<Fires>(g)),
        ("GET", "/v1/dlq") => op("The tenant's dead letters, newest first", "dlq")
            .query("source", one_of(&subjects::subject::DLQ_SOURCES), "only this source")
            .query("since", time(), "from (inclusive)")
            .query("until", time(), "to (exclusive)")
            .query("status", one_of(&["open", "replayed", "discarded"]), "only this status")
            .query("limit", limit(500), "entries at most")
            .json(200, schema::<DlqList>(g)),
        ("POST", "/v1/dlq/replay") => op("Replay every open dead letter that matches", "dlq")
            .body(dlq_filter())
            .json(200, schema::<DlqBulk>(g)),
        ("POST", "/v1/dlq/discard") => op("Discard every open dead letter that matches", "dlq")
            .body(dlq_filter())
            .json(200, schema::<DlqBulk>(g)),
        ("POST", "/v1/dlq/{id}/replay") => op("Resubmit a dead letter under a fresh idempotency key", "dlq").json(200, schema::<DlqOutcome>(g)),
        ("POST", "/v1/dlq/{id}/discard") => op("Mark a dead letter dealt with", "dlq").json(200, schema::<DlqOutcome>(g)),
        _ => return None,
    })
}

/// The refusals an operation can answer, each `{"error": "<one
/// sentence>"}`: what every authenticated route can say, and what its
/// parameters and body add.
fn refusals(method: &str, path: &str, access: Access, o: &Op) -> Vec<(u16, &'static str)> {
    let mut out = Vec::new();
    if access == Access::Open {
        return out;
    }
    out.extend([
        (401, "no key, or a key that is unknown or revoked"),
        (
            403,
            "a key without the route's scope, or naming another tenant",
        ),
        (429, "over a rate limit (Retry-After says when to retry)"),
        (503, "Postgres or NATS does not answer; retry"),
    ]);
    let has_id = path.contains('{');
    if has_id || !o.query.is_empty() || o.body.is_some() || method == "POST" {
        out.push((400, "a malformed id, query, body or field"));
    }
    if has_id {
        out.push((404, "no such resource (or one of another tenant)"));
    }
    if method != "GET" {
        out.push((
            409,
            "the resource's state does not allow it, or a conflicting key or name",
        ));
        out.push((413, "a body over the size limit"));
        out.push((415, "a body that is not application/json"));
        out.push((
            422,
            "a body the platform cannot take as it is (an unknown role, a quota above its role's)",
        ));
    }
    out
}

fn dlq_filter() -> Schema {
    sch(json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "source": {"type": "string", "enum": subjects::subject::DLQ_SOURCES},
            "since": {"type": "string", "format": "date-time"},
            "until": {"type": "string", "format": "date-time"}
        }
    }))
}

/// OpenAPI links from what creates a resource (`POST /v1/x` answering
/// 201 or 202 with its `id`) to every operation on `/v1/x/{id}…`, so a
/// client (or a fuzzer's stateful phase) can follow them.
fn link_creates(paths: &mut Map<String, Value>) {
    let targets: Vec<(String, String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object().into_iter().flatten().map(move |(_, op)| {
                (
                    path.clone(),
                    op["operationId"].as_str().unwrap_or("").to_string(),
                )
            })
        })
        .filter(|(path, _)| path.contains("/{id}"))
        .map(|(path, id)| {
            let base = path.split("/{id}").next().unwrap_or("").to_string();
            (base, path, id)
        })
        .collect();
    for (path, item) in paths.iter_mut() {
        let Some(post) = item.get_mut("post") else {
            continue;
        };
        let Some(responses) = post["responses"].as_object_mut() else {
            continue;
        };
        for status in ["201", "202"] {
            let Some(r) = responses.get_mut(status) else {
                continue;
            };
            let links: Map<String, Value> = targets
                .iter()
                .filter(|(base, _, _)| base == path)
                .map(|(_, _, id)| {
                    (
                        id.clone(),
                        json!({"operationId": id, "parameters": {"id": "$response.body#/id"}}),
                    )
                })
                .collect();
            if !links.is_empty() {
                r["links"] = Value::Object(links);
            }
        }
    }
}

fn path_param(path: &str, name: &str) -> Value {
    let schema = if path.starts_with("/v1/dlq/") {
        json!({"type": "integer", "minimum": 1})
    } else if path.starts_with("/ui/") {
        json!({"type": "string", "enum": ["app.js", "app.css"]})
    } else {
        uuid()
    };
    json!({"name": name, "in": "path", "required": true, "schema": schema})
}

fn content(c: &Content) -> Option<Value> {
    Some(match c {
        Content::Json(s) => json!({"application/json": {"schema": s}}),
        Content::Sse(s) => json!({"text/event-stream": {"schema": s}}),
        Content::Text(kind) => json!({*kind: {"schema": {"type": "string"}}}),
        Content::Files => json!({
            "text/javascript": {"schema": {"type": "string"}},
            "text/css": {"schema": {"type": "string"}}
        }),
        Content::Empty => return None,
    })
}

/// The OpenAPI document, or the routes without documentation.
pub fn build() -> Result<Value, Vec<String>> {
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "#/components/schemas/".into())
        .into_generator();
    let error = g.subschema_for::<ApiError>();
    let mut paths = Map::new();
    let mut undocumented = Vec::new();
    for (method, path, access) in ROUTES {
        let Some(o) = doc(method, path, &mut g) else {
            undocumented.push(format!("{method} {path}"));
            continue;
        };
        let mut responses = Map::new();
        for (status, c) in &o.ok {
            let mut r = json!({"description": o.summary});
            if let Some(content) = content(c) {
                r["content"] = content;
            }
            responses.insert(status.to_string(), r);
        }
        for (status, why) in refusals(method, path, *access, &o) {
            responses.entry(status.to_string()).or_insert_with(
                || json!({"description": why, "content": {"application/json": {"schema": error}}}),
            );
        }
        let mut params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| path_param(path, name))
            .collect();
        for (name, schema, what) in &o.query {
            params.push(json!({"name": name, "in": "query", "required": false, "schema": schema, "description": what}));
        }
        if matches!((*method, *path), ("POST", "/v1/tasks" | "/v1/goals")) {
            params.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
                               "schema": {"type": "string", "maxLength": 200},
                               "description": "a retry with the same key answers the same task or goal"}));
        }
        let operation_id = format!(
            "{}{}",
            method.to_lowercase(),
            path.replace(['/', '{', '}', '.'], "_")
        );
        let mut operation = json!({
            "operationId": operation_id,
            "summary": o.summary,
            "tags": [o.tag],
            "parameters": params,
            "responses": responses,
        });
        match access {
            Access::Open => operation["security"] = json!([]),
            Access::Needs(scope) => {
                operation["x-colony-scope"] = json!(scope.as_str());
                operation["security"] = json!([{"bearer": []}]);
                if *scope == Scope::Operator {
                    operation["description"] = json!("Operator keys only.");
                }
            }
        }
        if let Some((schema, required)) = o.body {
            operation["requestBody"] = json!({
                "required": required,
                "content": {"application/json": {"schema": schema}}
            });
        }
        let item = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        item[method.to_lowercase()] = operation;
    }
    if !undocumented.is_empty() {
        return Err(undocumented);
    }
    link_creates(&mut paths);
    Ok(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Colony",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Colony's HTTP API. Every route but /healthz, /openapi.json and the dashboard's files needs `Authorization: Bearer <key>`; x-colony-scope names the scope it needs (read < submit < admin < operator). Every refusal is {\"error\": \"<one sentence>\"}."
        },
        "paths": paths,
        "components": {
            "schemas": g.take_definitions(true),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    }))
}

/// `GET /openapi.json`.
pub(super) async fn serve() -> Json<Value> {
    static SPEC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    Json(
        SPEC.get_or_init(|| {
            build().unwrap_or_else(|missing| {
                tracing::error!(?missing, "routes without OpenAPI documentation");
                json!({})
            })
        })
        .clone(),
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn every_route_is_documented_and_the_committed_spec_matches() {
        let spec =
            super::build().unwrap_or_else(|missing| panic!("undocumented routes: {missing:?}"));
        let text = serde_json::to_string_pretty(&spec).expect("json") + "\n";
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../subjects/schema/openapi.json");
        if std::env::var_os("COLONY_BLESS_SCHEMAS").is_some() {
            std::fs::write(&path, &text).expect("write");
        } else {
            assert!(
                std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()),
                "subjects/schema/openapi.json is out of date; run COLONY_BLESS_SCHEMAS=1 cargo test -p ingress openapi and commit it"
            );
        }
        let ops: usize = spec["paths"]
            .as_object()
            .expect("paths")
            .values()
            .map(|p| p.as_object().map_or(0, |m| m.len()))
            .sum();
        assert_eq!(ops, super::ROUTES.len());
    }
}
