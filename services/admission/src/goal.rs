//! Goal submissions: the same rules for `POST /v1/goals` and for a message
//! on `colony.intake.<tenant>.goal`, refused with the same sentences.

use store::goals::NewGoal;
use subjects::goals::{Budget, GoalSubmission};
use subjects::is_token;

use crate::{bad, Rejection, Rules};

/// Longest goal title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest description or acceptance text, in characters.
pub const MAX_TEXT_CHARS: usize = 20_000;
/// Largest token budget (far beyond any goal; it fits Postgres' bigint).
pub const MAX_TOKENS: u64 = 1 << 50;
/// Longest wall-clock budget a goal may ask for (30 days).
pub const MAX_WALL_SECS: u64 = 30 * 24 * 3600;

impl Rules {
    /// A goal submission's bytes, parsed and checked for `tenant`; `key`
    /// (the `Idempotency-Key` header) wins over the body's.
    pub fn check_goal(
        &self,
        body: &[u8],
        tenant: &str,
        key: Option<String>,
    ) -> Result<NewGoal, Rejection> {
        if let Some(r) = self.too_large(body.len()) {
            return Err(r);
        }
        let sub: GoalSubmission = serde_json::from_slice(body).map_err(|e| {
            let what = if e.is_syntax() || e.is_eof() {
                "is not valid JSON"
            } else {
                "is not a valid goal submission"
            };
            bad(format!("the goal {what}: {e}"))
        })?;
        check_goal_submission(sub, tenant, key)
    }
}

/// Check a parsed goal submission for `tenant`.
pub fn check_goal_submission(
    sub: GoalSubmission,
    tenant: &str,
    key: Option<String>,
) -> Result<NewGoal, Rejection> {
    if sub.v != subjects::VERSION {
        return Err(bad(format!(
            "goal version {} is not supported; send \"v\": {}",
            sub.v,
            subjects::VERSION
        )));
    }
    if !is_token(tenant) {
        return Err(bad(format!(
            "tenant {tenant:?} is not valid; use 1-64 letters, digits, '-' or '_'"
        )));
    }
    let title = sub.title.trim();
    if title.is_empty() || title.chars().count() > MAX_TITLE_CHARS {
        return Err(bad(format!(
            "the title must be 1 to {MAX_TITLE_CHARS} characters"
        )));
    }
    if sub.acceptance.trim().is_empty() {
        return Err(bad(
            "acceptance is empty; say how a person will judge the result".to_string(),
        ));
    }
    for (name, text) in [
        ("description", &sub.description),
        ("acceptance", &sub.acceptance),
    ] {
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(bad(format!(
                "the {name} is over {MAX_TEXT_CHARS} characters; put long material in the workspace instead"
            )));
        }
        if text.contains('\0') || title.contains('\0') {
            return Err(bad(format!(
                "the {name} contains a NUL character (\\u0000), which Colony cannot store"
            )));
        }
    }
    check_budget(&sub.budget)?;
    let priority = sub.priority.unwrap_or(0);
    if priority > 9 {
        return Err(bad(format!(
            "priority is {priority}; use a number from 0 to 9"
        )));
    }
    let idempotency_key = key.or(sub.idempotency_key);
    if let Some(k) = &idempotency_key {
        if k.is_empty() || k.len() > 200 || k.chars().any(char::is_control) {
            return Err(bad(
                "the idempotency key must be 1-200 printable characters".to_string(),
            ));
        }
    }
    Ok(NewGoal {
        tenant: tenant.to_string(),
        title: title.to_string(),
        description: sub.description,
        acceptance: sub.acceptance,
        budget: sub.budget,
        priority,
        planner_id: sub.planner,
        require_plan_approval: sub.require_plan_approval,
        idempotency_key,
    })
}

/// A budget whose every limit is positive and finite.
pub fn check_budget(b: &Budget) -> Result<(), Rejection> {
    if let Some(t) = b.tokens {
        if t == 0 || t > MAX_TOKENS {
            return Err(bad(format!(
                "budget.tokens is {t}; leave it out for no limit, or give 1 to {MAX_TOKENS}"
            )));
        }
    }
    if let Some(c) = b.cost_usd {
        if !c.is_finite() || c <= 0.0 || c > 1_000_000.0 {
            return Err(bad(format!(
                "budget.cost_usd is {c}; use a positive number of dollars up to 1000000"
            )));
        }
    }
    if let Some(w) = b.wall_secs {
        if w == 0 || w > MAX_WALL_SECS {
            return Err(bad(format!(
                "budget.wall_secs is {w}; use 1 to {MAX_WALL_SECS} seconds"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: serde_json::Value) -> Result<NewGoal, Rejection> {
        Rules::default().check_goal(body.to_string().as_bytes(), "acme", None)
    }

    #[test]
    fn a_goal_needs_a_title_and_acceptance() {
        let ok =
            check(serde_json::json!({"title": " Bakery site ", "acceptance": "it loads"})).unwrap();
        assert_eq!(ok.title, "Bakery site");
        assert_eq!(ok.priority, 0);
        let e = check(serde_json::json!({"title": "", "acceptance": "x"})).unwrap_err();
        assert!(e.reason.contains("title must be 1 to 200"), "{}", e.reason);
        let e = check(serde_json::json!({"title": "t", "acceptance": "  "})).unwrap_err();
        assert!(e.reason.starts_with("acceptance is empty"), "{}", e.reason);
        let e = check(serde_json::json!({"title": "t"})).unwrap_err();
        assert!(
            e.reason.contains("missing field `acceptance`"),
            "{}",
            e.reason
        );
        let e =
            check(serde_json::json!({"title": "t", "acceptance": "a", "colour": 1})).unwrap_err();
        assert!(e.reason.contains("unknown field `colour`"), "{}", e.reason);
    }

    #[test]
    fn budgets_and_priorities_are_bounded() {
        for (budget, says) in [
            (serde_json::json!({"tokens": 0}), "budget.tokens is 0"),
            (
                serde_json::json!({"cost_usd": -1.0}),
                "budget.cost_usd is -1",
            ),
            (serde_json::json!({"wall_secs": 0}), "budget.wall_secs is 0"),
            (serde_json::json!({"dollars": 2}), "unknown field `dollars`"),
        ] {
            let e = check(serde_json::json!({"title": "t", "acceptance": "a", "budget": budget}))
                .unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.reason.contains(says), "{says}: {}", e.reason);
        }
        let e = check(serde_json::json!({"title": "t", "acceptance": "a", "priority": 10}))
            .unwrap_err();
        assert!(e.reason.contains("priority is 10"), "{}", e.reason);
        let e = check(serde_json::json!({"title": "t", "acceptance": "a\u{0}"})).unwrap_err();
        assert!(e.reason.contains("NUL"), "{}", e.reason);
        let ok = check(serde_json::json!({"title": "t", "acceptance": "a",
            "budget": {"tokens": 5000, "cost_usd": 2.0, "wall_secs": 600}, "priority": 9}))
        .unwrap();
        assert_eq!(ok.budget.tokens, Some(5000));
        assert_eq!(ok.priority, 9);
    }

    #[test]
    fn the_header_key_wins_and_keys_are_printable() {
        let body = serde_json::json!({"title": "t", "acceptance": "a", "idempotency_key": "body"});
        let g = Rules::default()
            .check_goal(body.to_string().as_bytes(), "acme", Some("header".into()))
            .unwrap();
        assert_eq!(g.idempotency_key.as_deref(), Some("header"));
        let e = Rules::default()
            .check_goal(body.to_string().as_bytes(), "acme", Some("a\nb".into()))
            .unwrap_err();
        assert!(e.reason.contains("idempotency key"), "{}", e.reason);
    }
}
