//! Keys and tenants on every door of the HTTP API: a table over every
//! route (no key → 401, a key without the scope → 403, another tenant's
//! resource → 404, as if it did not exist), the operator's tenant header,
//! revocation, rate limits with Retry-After, JSON-only bodies, a health
//! check that tells nothing, and the `colony keys` commands.

use std::path::PathBuf;
use std::time::Duration;

use colony::Role;
use colony_tests::{client_with_key, World};
use reqwest::Method;
use serde_json::{json, Value};
use store::{NewAudit, Outcome, Scope, Vault};
use time::OffsetDateTime;
use uuid::Uuid;

const VAULT_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn repo_roles() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../roles")
}

async fn start(w: &World, tweak: impl FnOnce(&mut colony::Settings)) -> colony_tests::Running {
    let mut s = w.settings.clone();
    s.roles_dir = Some(repo_roles());
    s.vault_key = Some(colony::Secret(VAULT_KEY.into()));
    tweak(&mut s);
    w.start_with(Role::Ingress, s).await.expect("colony")
}

/// One call with `key` (None: no Authorization header); (status, body).
async fn call(
    w: &World,
    key: Option<&str>,
    method: Method,
    path: &str,
    body: Option<&Value>,
    tenant: Option<&str>,
) -> (u16, Value) {
    let http = match key {
        Some(k) => client_with_key(k),
        None => reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
    };
    let mut req = http.request(method, format!("{}{path}", w.url()));
    if let Some(t) = tenant {
        req = req.header("X-Colony-Tenant", t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

/// What tenant acme owns, made through the API with acme's admin key.
struct Acme {
    task: String,
    goal: String,
    webhook: String,
    employee: String,
    credential: String,
    key: String,
    schedule: String,
}

async fn acme_owns(w: &World, admin: &str) -> Acme {
    let (s, task) = call(
        w,
        Some(admin),
        Method::POST,
        "/v1/tasks",
        Some(&json!({"role": "shell", "input": {"command": "true"}})),
        None,
    )
    .await;
    assert_eq!(s, 202, "{task}");
    let (s, goal) = call(
        w,
        Some(admin),
        Method::POST,
        "/v1/goals",
        Some(&json!({"title": "acme's goal", "acceptance": "acme is happy"})),
        None,
    )
    .await;
    assert_eq!(s, 202, "{goal}");
    let (s, employee) = call(
        w,
        Some(admin),
        Method::POST,
        "/v1/employees",
        Some(&json!({"name": "ada", "role": "executor"})),
        None,
    )
    .await;
    assert_eq!(s, 201, "{employee}");
    let (s, credential) = call(
        w,
        Some(admin),
        Method::POST,
        "/v1/credentials",
        Some(&json!({"name": "gh", "url_prefix": "https://api.github.com/", "header": "authorization", "value": "token acme-secret"})),
        None,
    )
    .await;
    assert_eq!(s, 201, "{credential}");
    let (s, key) = call(
        w,
        Some(admin),
        Method::POST,
        "/v1/keys",
        Some(&json!({"name": "ci", "scope": "read"})),
        None,
    )
    .await;
    assert_eq!(s, 201, "{key}");
    let (s, webhook) = call(
        w,
        Some(admin),
        Method::POST,
        "/v1/webhooks",
        Some(&json!({"url": "http://93.184.216.34/acme-hook"})),
        None,
    )
    .await;
    assert_eq!(s, 201, "{webhook}");
    let (s, schedule) = call(
        w,
        Some(admin),
        Method::POST,
        "/v1/schedules",
        Some(
            &json!({"name": "acme nightly", "cron": "0 3 * * *", "timezone": "Europe/Berlin",
                     "task": {"role": "shell", "input": {"command": "true"}}}),
        ),
        None,
    )
    .await;
    assert_eq!(s, 201, "{schedule}");
    let employee_id = Uuid::parse_str(&id_of(&employee)).expect("uuid");
    let st = w
        .store(1)
        .with_vault(Vault::parse(VAULT_KEY).expect("vault"));
    st.memory_set(employee_id, "plan", &json!("acme's secret plan"))
        .await
        .expect("memory");
    st.insert_audit(&NewAudit {
        at: OffsetDateTime::now_utc(),
        tenant: "acme".into(),
        employee_id: Some(employee_id),
        task_id: None,
        run_id: None,
        action: "memory.set".into(),
        target: Some("plan".into()),
        outcome: Outcome::Allowed,
        detail: Some("acme's audit row".into()),
    })
    .await
    .expect("audit");
    Acme {
        task: id_of(&task),
        goal: id_of(&goal),
        webhook: id_of(&webhook),
        employee: id_of(&employee),
        credential: id_of(&credential),
        key: id_of(&key),
        schedule: id_of(&schedule),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_no_key_the_wrong_scope_and_other_tenants() {
    let w = World::new().await.expect("world");
    let colony = start(&w, |_| {}).await;
    let acme_admin = w.key("acme", Scope::Admin).await.expect("key");
    let globex_admin = w.key("globex", Scope::Admin).await.expect("key");
    let globex_read = w.key("globex", Scope::Read).await.expect("key");
    let globex_submit = w.key("globex", Scope::Submit).await.expect("key");
    let acme = acme_owns(&w, &acme_admin).await;

    let task = json!({"role": "shell", "input": {"command": "true"}});
    let hire = json!({"name": "bob", "role": "executor"});
    let cred = json!({"name": "x", "url_prefix": "https://example.org/", "header": "x-key", "value": "v-123"});
    let newkey = json!({"name": "k", "scope": "read"});
    // (method, path, body, scope it needs, names one of acme's resources)
    let routes: Vec<(Method, String, Option<Value>, Scope, bool)> = vec![
        (
            Method::POST,
            "/v1/tasks".into(),
            Some(task),
            Scope::Submit,
            false,
        ),
        (
            Method::GET,
            format!("/v1/tasks/{}", acme.task),
            None,
            Scope::Read,
            true,
        ),
        (
            Method::GET,
            format!("/v1/tasks/{}/events", acme.task),
            None,
            Scope::Read,
            true,
        ),
        (
            Method::POST,
            format!("/v1/tasks/{}/cancel", acme.task),
            None,
            Scope::Submit,
            true,
        ),
        (
            Method::POST,
            "/v1/employees".into(),
            Some(hire),
            Scope::Submit,
            false,
        ),
        (
            Method::GET,
            "/v1/employees".into(),
            None,
            Scope::Read,
            false,
        ),
        (
            Method::GET,
            format!("/v1/employees/{}", acme.employee),
            None,
            Scope::Read,
            true,
        ),
        (
            Method::GET,
            format!("/v1/employees/{}/memory", acme.employee),
            None,
            Scope::Read,
            true,
        ),
        (
            Method::POST,
            format!("/v1/employees/{}/pause", acme.employee),
            None,
            Scope::Submit,
            true,
        ),
        (
            Method::POST,
            format!("/v1/employees/{}/resume", acme.employee),
            None,
            Scope::Submit,
            true,
        ),
        (
            Method::DELETE,
            format!("/v1/employees/{}", acme.employee),
            None,
            Scope::Admin,
            true,
        ),
        (Method::GET, "/v1/audit".into(), None, Scope::Admin, false),
        (
            Method::POST,
            "/v1/credentials".into(),
            Some(cred),
            Scope::Admin,
            false,
        ),
        (
            Method::GET,
            "/v1/credentials".into(),
            None,
            Scope::Admin,
            false,
        ),
        (
            Method::DELETE,
            format!("/v1/credentials/{}", acme.credential),
            None,
            Scope::Admin,
            true,
        ),
        (
            Method::POST,
            "/v1/keys".into(),
            Some(newkey),
            Scope::Admin,
            false,
        ),
        (Method::GET, "/v1/keys".into(), None, Scope::Admin, false),
        (
            Method::DELETE,
            format!("/v1/keys/{}", acme.key),
            None,
            Scope::Admin,
            true,
        ),
        (
            Method::GET,
            "/v1/workers".into(),
            None,
            Scope::Operator,
            false,
        ),
        (Method::GET, "/metrics".into(), None, Scope::Operator, false),
        (
            Method::GET,
            "/v1/streams".into(),
            None,
            Scope::Operator,
            false,
        ),
        (Method::GET, "/v1/whoami".into(), None, Scope::Read, false),
        (Method::GET, "/v1/overview".into(), None, Scope::Read, false),
        (
            Method::GET,
            "/v1/tasks?q=a&limit=200".into(),
            None,
            Scope::Read,
            false,
        ),
        (
            Method::POST,
            "/v1/goals".into(),
            Some(json!({"title": "t", "acceptance": "a"})),
            Scope::Submit,
            false,
        ),
        (Method::GET, "/v1/goals".into(), None, Scope::Read, false),
        (
            Method::GET,
            format!("/v1/goals/{}", acme.goal),
            None,
            Scope::Read,
            true,
        ),
        (
            Method::GET,
            format!("/v1/goals/{}/events", acme.goal),
            None,
            Scope::Read,
            true,
        ),
        (
            Method::GET,
            "/v1/leaderboard".into(),
            None,
            Scope::Read,
            false,
        ),
        (
            Method::POST,
            format!("/v1/employees/{}/score", acme.employee),
            Some(json!({"delta": 5, "reason": "good work"})),
            Scope::Admin,
            true,
        ),
    ];
    let mut routes = routes;
    for act in ["pause", "resume", "approve", "cancel", "replan"] {
        routes.push((
            Method::POST,
            format!("/v1/goals/{}/{act}", acme.goal),
            None,
            Scope::Submit,
            true,
        ));
    }
    routes.extend([
        (
            Method::POST,
            "/v1/webhooks".to_string(),
            Some(json!({"url": "http://93.184.216.34/globex"})),
            Scope::Admin,
            false,
        ),
        (
            Method::GET,
            "/v1/webhooks".to_string(),
            None,
            Scope::Admin,
            false,
        ),
        (
            Method::DELETE,
            format!("/v1/webhooks/{}", acme.webhook),
            None,
            Scope::Admin,
            true,
        ),
        (
            Method::GET,
            format!("/v1/webhooks/{}/deliveries", acme.webhook),
            None,
            Scope::Admin,
            true,
        ),
    ]);
    let schedule = json!({"name": "globex hourly", "cron": "@hourly",
                          "task": {"role": "shell", "input": {"command": "true"}}});
    routes.extend([
        (
            Method::POST,
            "/v1/schedules".to_string(),
            Some(schedule),
            Scope::Submit,
            false,
        ),
        (
            Method::GET,
            "/v1/schedules".to_string(),
            None,
            Scope::Read,
            false,
        ),
        (
            Method::GET,
            format!("/v1/schedules/{}", acme.schedule),
            None,
            Scope::Read,
            true,
        ),
        (
            Method::PATCH,
            format!("/v1/schedules/{}", acme.schedule),
            Some(json!({"cron": "0 4 * * *"})),
            Scope::Submit,
            true,
        ),
        (
            Method::GET,
            format!("/v1/schedules/{}/fires", acme.schedule),
            None,
            Scope::Read,
            true,
        ),
        (
            Method::POST,
            format!("/v1/schedules/{}/backfill", acme.schedule),
            Some(json!({"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"})),
            Scope::Submit,
            true,
        ),
    ]);
    for act in ["pause", "resume", "trigger"] {
        routes.push((
            Method::POST,
            format!("/v1/schedules/{}/{act}", acme.schedule),
            None,
            Scope::Submit,
            true,
        ));
    }
    // Dead letters: acme's are hidden from globex's list (above, for every
    // GET list), and an id names none of acme's here.
    routes.extend([
        (
            Method::GET,
            "/v1/dlq".to_string(),
            None,
            Scope::Admin,
            false,
        ),
        (
            Method::POST,
            "/v1/dlq/replay".to_string(),
            Some(json!({"source": "intake"})),
            Scope::Admin,
            false,
        ),
        (
            Method::POST,
            "/v1/dlq/discard".to_string(),
            Some(json!({"source": "intake"})),
            Scope::Admin,
            false,
        ),
        (
            Method::POST,
            "/v1/dlq/999999/replay".to_string(),
            None,
            Scope::Admin,
            false,
        ),
        (
            Method::POST,
            "/v1/dlq/999999/discard".to_string(),
            None,
            Scope::Admin,
            false,
        ),
    ]);
    routes.push((
        Method::DELETE,
        format!("/v1/schedules/{}", acme.schedule),
        None,
        Scope::Submit,
        true,
    ));
    routes.push((
        Method::POST,
        format!("/v1/goals/{}/decide", acme.goal),
        Some(json!({"action": "retry"})),
        Scope::Submit,
        true,
    ));
    let acme_ids = [
        &acme.task,
        &acme.goal,
        &acme.webhook,
        &acme.employee,
        &acme.credential,
        &acme.key,
        &acme.schedule,
    ];
    let (mut unauthenticated, mut forbidden, mut hidden, mut cross_tenant_successes) = (0, 0, 0, 0);
    for (method, path, body, needs, names_acme) in &routes {
        // No key: 401, and nothing about the resource.
        let (s, v) = call(&w, None, method.clone(), path, body.as_ref(), None).await;
        assert_eq!(s, 401, "{method} {path} without a key: {v}");
        unauthenticated += 1;
        // A key below the scope: 403.
        let below = match needs {
            Scope::Read => None,
            Scope::Submit => Some(&globex_read),
            Scope::Admin => Some(&globex_submit),
            Scope::Operator => Some(&globex_admin),
        };
        if let Some(k) = below {
            let (s, v) = call(&w, Some(k), method.clone(), path, body.as_ref(), None).await;
            assert_eq!(s, 403, "{method} {path} with a lower scope: {v}");
            assert!(
                v["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("needs a key with scope"),
                "{v}"
            );
            forbidden += 1;
        }
        // Another tenant asking for acme's resource: 404 as if missing.
        if *names_acme {
            let (s, v) = call(
                &w,
                Some(&globex_admin),
                method.clone(),
                path,
                body.as_ref(),
                None,
            )
            .await;
            if (200..300).contains(&s) {
                cross_tenant_successes += 1;
            }
            assert_eq!(s, 404, "{method} {path} from globex: {v}");
            let missing = path.replace(
                acme_ids
                    .iter()
                    .find(|i| path.contains(i.as_str()))
                    .expect("an id")
                    .as_str(),
                &Uuid::now_v7().to_string(),
            );
            let (s2, v2) = call(
                &w,
                Some(&globex_admin),
                method.clone(),
                &missing,
                body.as_ref(),
                None,
            )
            .await;
            assert_eq!(
                (s, v["error"].as_str().map(|e| !e.is_empty())),
                (s2, v2["error"].as_str().map(|e| !e.is_empty())),
                "the same as a missing one: {v} / {v2}"
            );
            hidden += 1;
        } else if *method == Method::GET && *needs != Scope::Operator {
            // Lists: none of acme's rows.
            let (s, v) = call(&w, Some(&globex_admin), method.clone(), path, None, None).await;
            assert_eq!(s, 200, "{path}: {v}");
            let text = v.to_string();
            for id in acme_ids {
                if text.contains(id.as_str()) || text.contains("acme") {
                    cross_tenant_successes += 1;
                }
            }
            assert!(
                !text.contains("acme"),
                "{path} shows acme's rows to globex: {text}"
            );
            hidden += 1;
        }
        // A tenant key may not name another tenant.
        let (s, v) = call(
            &w,
            Some(&globex_admin),
            method.clone(),
            path,
            body.as_ref(),
            Some("acme"),
        )
        .await;
        if (200..300).contains(&s) {
            cross_tenant_successes += 1;
        }
        assert_eq!(s, 403, "{method} {path} naming acme with globex's key: {v}");
    }
    // The live feed streams once it is let in, so it has the refusals
    // here (401, a tenant key naming another tenant 403); which tenant's
    // events it streams, tests/it/dashboard.rs checks.
    let (s, v) = call(&w, None, Method::GET, "/v1/feed", None, None).await;
    assert_eq!(s, 401, "/v1/feed without a key: {v}");
    let (s, v) = call(
        &w,
        Some(&globex_admin),
        Method::GET,
        "/v1/feed",
        None,
        Some("acme"),
    )
    .await;
    assert_eq!(s, 403, "/v1/feed naming acme with globex's key: {v}");

    // The table covers every authenticated route of the API.
    let pattern = |path: &str| -> String {
        path.split('?')
            .next()
            .unwrap_or("")
            .split('/')
            .map(|seg| {
                if Uuid::parse_str(seg).is_ok() || (!seg.is_empty() && seg.parse::<u64>().is_ok()) {
                    "{id}"
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    };
    let tested: std::collections::BTreeSet<(String, String)> = routes
        .iter()
        .map(|(m, p, _, _, _)| (m.to_string(), pattern(p)))
        .collect();
    let untested: Vec<String> = ingress::http::auth::ROUTES
        .iter()
        .filter(|(m, p, a)| {
            *a != ingress::http::auth::Access::Open
                && (*m, *p) != ("GET", "/v1/feed")
                && !tested.contains(&(m.to_string(), p.to_string()))
        })
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect();
    assert!(
        untested.is_empty(),
        "routes the tenancy table misses: {untested:?}"
    );
    println!(
        "tenancy: {} routes; {unauthenticated} answered 401 without a key, {forbidden} answered 403 below their scope, {hidden} hid acme's resources from globex; cross-tenant successes: {cross_tenant_successes}",
        routes.len()
    );
    assert_eq!(cross_tenant_successes, 0);

    // And acme's things are all still there for acme.
    let (s, v) = call(
        &w,
        Some(&acme_admin),
        Method::GET,
        &format!("/v1/employees/{}/memory", acme.employee),
        None,
        None,
    )
    .await;
    assert_eq!((s, v["plan"].as_str()), (200, Some("acme's secret plan")));
    let (s, v) = call(&w, Some(&acme_admin), Method::GET, "/v1/audit", None, None).await;
    assert_eq!(s, 200);
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(1), "{v}");
    let (s, v) = call(
        &w,
        Some(&acme_admin),
        Method::GET,
        &format!("/v1/tasks/{}", acme.task),
        None,
        None,
    )
    .await;
    assert_eq!((s, v["state"].as_str()), (200, Some("queued")));
    // The operator reaches acme by naming it, and only then.
    let (s, _) = call(
        &w,
        Some(&w.operator_key),
        Method::GET,
        &format!("/v1/tasks/{}", acme.task),
        None,
        None,
    )
    .await;
    assert_eq!(s, 404, "the operator's default tenant is default");
    let (s, _) = call(
        &w,
        Some(&w.operator_key),
        Method::GET,
        &format!("/v1/tasks/{}", acme.task),
        None,
        Some("acme"),
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = call(
        &w,
        Some(&w.operator_key),
        Method::GET,
        "/v1/workers",
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_shown_once_stored_hashed_revocable_and_used_at() {
    let w = World::new().await.expect("world");
    let colony = start(&w, |_| {}).await;
    let admin = w.key("acme", Scope::Admin).await.expect("key");
    let (s, made) = call(
        &w,
        Some(&admin),
        Method::POST,
        "/v1/keys",
        Some(&json!({"name": "deploy bot", "scope": "submit"})),
        None,
    )
    .await;
    assert_eq!(s, 201, "{made}");
    let secret = made["secret"].as_str().expect("secret").to_string();
    assert!(
        secret.starts_with("colony_") && secret.len() == 71,
        "{secret}"
    );
    assert_eq!(
        (made["tenant"].as_str(), made["scope"].as_str()),
        (Some("acme"), Some("submit"))
    );
    let id = id_of(&made);
    // Stored as a hash only.
    let db = w.db().await.expect("db");
    let row = db
        .query_one(
            "SELECT to_jsonb(k)::text FROM api_keys k WHERE id = $1",
            &[&Uuid::parse_str(&id).expect("uuid")],
        )
        .await
        .expect("row");
    let whole: String = row.get(0);
    assert!(
        !whole.contains(&secret) && !whole.contains(&secret[7..]),
        "{whole}"
    );
    // It works, and its use is noted.
    let (s, _) = call(&w, Some(&secret), Method::GET, "/v1/employees", None, None).await;
    assert_eq!(s, 200);
    let (s, list) = call(&w, Some(&admin), Method::GET, "/v1/keys", None, None).await;
    assert_eq!(s, 200);
    assert!(
        !list.to_string().contains(&secret),
        "a list never shows a secret"
    );
    let mut used = None;
    for _ in 0..100 {
        let (_, list) = call(&w, Some(&admin), Method::GET, "/v1/keys", None, None).await;
        let k = list["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| k["id"] == id.as_str())
            .cloned();
        if let Some(at) = k.and_then(|k| k["last_used_at"].as_str().map(str::to_string)) {
            used = Some(at);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(used.is_some(), "last_used_at is set after a use");
    // Revoked: 401 at once through this process.
    let (s, v) = call(
        &w,
        Some(&admin),
        Method::DELETE,
        &format!("/v1/keys/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["revoked_at"].is_string());
    let (s, v) = call(&w, Some(&secret), Method::GET, "/v1/employees", None, None).await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"].as_str(), Some("the API key is not valid (unknown or revoked); send Authorization: Bearer <key> with a key from colony keys create"));
    // No operator keys over HTTP, even from an admin; bad scopes say so.
    let (s, v) = call(
        &w,
        Some(&admin),
        Method::POST,
        "/v1/keys",
        Some(&json!({"name": "x", "scope": "operator"})),
        None,
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = call(
        &w,
        Some(&admin),
        Method::POST,
        "/v1/keys",
        Some(&json!({"name": "x", "scope": "root"})),
        None,
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (
            400,
            Some("scope must be read, submit or admin, not \"root\"")
        )
    );
    // A garbled header is a 401 too.
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("{}/v1/employees", w.url()))
        .header("Authorization", "Basic YWxhZGRpbjpvcGVu")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_must_be_json_and_health_says_only_ok() {
    let mut w = World::new().await.expect("world");
    let colony = start(&w, |_| {}).await;
    let resp = w
        .http()
        .post(format!("{}/v1/tasks", w.url()))
        .header("content-type", "text/plain")
        .body(r#"{"role":"shell","input":{"command":"true"}}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 415);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(
        v["error"],
        "send the body as JSON with Content-Type: application/json"
    );
    let resp = w
        .http()
        .post(format!("{}/v1/tasks", w.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("role=shell")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 415);
    // A body-less POST needs no content type.
    let (s, _) = call(
        &w,
        Some(&w.operator_key),
        Method::POST,
        &format!("/v1/tasks/{}/cancel", Uuid::now_v7()),
        None,
        None,
    )
    .await;
    assert_eq!(s, 404);

    let health = reqwest::get(format!("{}/healthz", w.url()))
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.expect("text"), r#"{"status":"ok"}"#);
    // NATS gone: 503, and not a word about why.
    w.nats.stop();
    let mut last = (0, String::new());
    for _ in 0..200 {
        let r = reqwest::get(format!("{}/healthz", w.url()))
            .await
            .expect("health");
        last = (r.status().as_u16(), r.text().await.expect("text"));
        if last.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, (503, r#"{"status":"unavailable"}"#.to_string()));
    // (Shutdown without NATS is another test's business.)
    colony.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after_per_key_and_per_peer() {
    let w = World::new().await.expect("world");
    let colony = start(&w, |s| {
        s.rate_per_key = 5;
        s.rate_per_peer = 1000;
    })
    .await;
    let key = w.key("acme", Scope::Read).await.expect("key");
    let other = w.key("acme", Scope::Read).await.expect("key");
    let mut limited = None;
    for _ in 0..40 {
        let r = client_with_key(&key)
            .get(format!("{}/v1/employees", w.url()))
            .send()
            .await
            .expect("send");
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("a 429 within 40 requests at 5/s");
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(wait >= 1);
    let v: Value = r.json().await.expect("json");
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .starts_with("too many requests with key colony_"),
        "{v}"
    );
    // Another key is not held back by the first one's limit.
    let r = client_with_key(&other)
        .get(format!("{}/v1/employees", w.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    colony.stop().await.expect("stop");

    // Per peer, before any key is looked up.
    let colony = start(&w, |s| {
        s.rate_per_peer = 3;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(format!("{}/v1/employees", w.url()))
            .send()
            .await
            .expect("send");
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_an_operator_key_then_tenant_keys_with_it() {
    let w = World::new().await.expect("world");
    let colony = start(&w, |_| {}).await;
    let dir = std::env::temp_dir().join(format!("colony-test-{}", w.id));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("operator.key");
    let bin = World::colony_bin().expect("colony binary");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(&bin)
            .args(args)
            .env("COLONY_DATABASE_URL", &w.settings.database_url)
            .env("COLONY_URL", w.url())
            .env_remove("COLONY_API_KEY")
            .envs(env.iter().copied())
            .current_dir(&dir)
            .output()
            .expect("colony");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = run(
        &["keys", "operator", "--out", file.to_str().expect("path")],
        &[],
    );
    assert!(ok, "{err}");
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&file).expect("key file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let operator = std::fs::read_to_string(&file)
        .expect("read")
        .trim()
        .to_string();
    // A second run keeps the file.
    let (ok, _, err) = run(
        &["keys", "operator", "--out", file.to_str().expect("path")],
        &[],
    );
    assert!(ok && err.contains("kept"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&file).expect("read").trim(),
        operator
    );
    // With the operator key (from the file), a key for acme.
    let (ok, out, err) = run(
        &[
            "keys", "create", "--tenant", "acme", "--scope", "submit", "--name", "ci",
        ],
        &[("COLONY_API_KEY_FILE", file.to_str().expect("path"))],
    );
    assert!(ok, "{err}");
    let made: Value = serde_json::from_str(&out).expect("json");
    let secret = made["secret"].as_str().expect("secret").to_string();
    assert_eq!(made["tenant"], "acme");
    // That key submits for acme, and only for acme.
    let (ok, out, err) = run(
        &[
            "submit",
            "--role",
            "shell",
            "--input",
            r#"{"command":"true"}"#,
        ],
        &[("COLONY_API_KEY", &secret)],
    );
    assert!(ok, "{err}");
    let task: Value = serde_json::from_str(&out).expect("json");
    let id = task["id"].as_str().expect("id");
    let db = w.db().await.expect("db");
    let tenant: String = db
        .query_one(
            "SELECT tenant FROM tasks WHERE id = $1",
            &[&Uuid::parse_str(id).expect("uuid")],
        )
        .await
        .expect("row")
        .get(0);
    assert_eq!(tenant, "acme");
    // Without any key the CLI says what to do.
    let (ok, _, err) = run(&["get", id], &[]);
    assert!(!ok && err.contains("no API key"), "{err}");
    colony.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_employee_quota_above_its_roles_needs_an_admin_key() {
    let w = World::new().await.expect("world");
    let colony = start(&w, |_| {}).await;
    let submit = w.key("acme", Scope::Submit).await.expect("key");
    let admin = w.key("acme", Scope::Admin).await.expect("key");
    // roles/executor.yaml: tokens_per_run 200000, cost_usd_per_day 10.
    let above = json!({"name": "big", "role": "executor", "quotas": {"tokens_per_run": 500000}});
    let (s, v) = call(
        &w,
        Some(&submit),
        Method::POST,
        "/v1/employees",
        Some(&above),
        None,
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(
        v["error"].as_str(),
        Some("quotas.tokens_per_run 500000 is above role executor's 200000; an employee's quota may only lower its role's (raising one needs an admin key)")
    );
    let below = json!({"name": "small", "role": "executor", "quotas": {"tokens_per_run": 1000, "cost_usd_per_day": 0.5}});
    let (s, v) = call(
        &w,
        Some(&submit),
        Method::POST,
        "/v1/employees",
        Some(&below),
        None,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &w,
        Some(&admin),
        Method::POST,
        "/v1/employees",
        Some(&above),
        None,
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["quotas"]["tokens_per_run"], 500000);
    colony.stop().await.expect("stop");
}
