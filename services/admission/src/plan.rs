//! A plan, checked like compiler input before anything runs.
//!
//! [`check`] lists every error at once (a planner fixes them in one go):
//! keys that are not tokens or not unique, dependencies that do not exist
//! or that make a cycle (the error names the cycle), roles that may not be
//! planned, sub-tasks without acceptance criteria, sizes out of range, too
//! many sub-tasks, budgets that do not fit the goal's. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};

use subjects::goals::{Budget, Plan};
use subjects::is_token;

/// What a plan is checked against.
#[derive(Clone, Debug, Default)]
pub struct PlanRules {
    /// Roles a sub-task may be given to.
    pub plannable: Vec<String>,
    pub max_subtasks: u32,
    /// The goal's budget.
    pub budget: Budget,
    /// Keys of sub-tasks already done (a replan): not to be reused, may be
    /// depended on.
    pub done_keys: Vec<String>,
}

const MAX_TITLE: usize = 200;
const MAX_TEXT: usize = 16 * 1024;
const MAX_CRITERION: usize = 1000;
const MAX_CRITERIA: usize = 20;

/// Every error of `plan`, one sentence each; empty when it is valid.
pub fn check(plan: &Plan, rules: &PlanRules) -> Vec<String> {
    let mut errors = Vec::new();
    let n = plan.subtasks.len();
    if n == 0 {
        errors.push("the plan has no sub-tasks; a plan needs at least one".to_string());
    }
    if n > rules.max_subtasks as usize {
        errors.push(format!(
            "the plan has {n} sub-tasks, more than the {} a plan may have; merge some",
            rules.max_subtasks
        ));
    }
    if plan.summary.chars().count() > MAX_TEXT {
        errors.push(format!("the summary is longer than {MAX_TEXT} characters"));
    }
    let mut modules = BTreeSet::new();
    for m in &plan.modules {
        if !is_token(&m.key) {
            errors.push(format!(
                "module key {:?} is not valid: use 1-64 letters, digits, '-' or '_'",
                m.key
            ));
        } else if !modules.insert(m.key.as_str()) {
            errors.push(format!("module key {} is used twice", m.key));
        }
        text(
            &mut errors,
            &format!("module {}", m.key),
            "title",
            &m.title,
            MAX_TITLE,
            true,
        );
    }
    let mut keys: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in plan.subtasks.iter().enumerate() {
        let name = if s.key.is_empty() {
            format!("sub-task #{}", i + 1)
        } else {
            format!("sub-task {}", s.key)
        };
        if !is_token(&s.key) {
            errors.push(format!(
                "{name}: its key {:?} is not valid: use 1-64 letters, digits, '-' or '_'",
                s.key
            ));
        } else if keys.insert(s.key.as_str(), i).is_some() {
            errors.push(format!(
                "sub-task key {} is used twice; keys must be unique",
                s.key
            ));
        } else if rules.done_keys.contains(&s.key) {
            errors.push(format!(
                "sub-task key {} belongs to a sub-task already done; choose another key (you may depend on it)",
                s.key
            ));
        }
        text(&mut errors, &name, "title", &s.title, MAX_TITLE, true);
        text(
            &mut errors,
            &name,
            "description",
            &s.description,
            MAX_TEXT,
            true,
        );
        if !rules.plannable.contains(&s.role) {
            errors.push(format!(
                "{name}: role {:?} may not be planned; plan one of: {}",
                s.role,
                rules.plannable.join(", ")
            ));
        }
        if s.acceptance.iter().all(|c| c.trim().is_empty()) {
            errors.push(format!(
                "{name} has no acceptance criteria; give at least one way to tell it is done"
            ));
        }
        if s.acceptance.len() > MAX_CRITERIA {
            errors.push(format!(
                "{name} has {} acceptance criteria, more than {MAX_CRITERIA}",
                s.acceptance.len()
            ));
        }
        for c in &s.acceptance {
            text(
                &mut errors,
                &name,
                "acceptance criterion",
                c,
                MAX_CRITERION,
                false,
            );
        }
        if let Some(size) = s.size {
            if !(1..=5).contains(&size) {
                errors.push(format!("{name}: size is 1 to 5, not {size}"));
            }
        }
        if let Some(m) = &s.module {
            if !plan.modules.iter().any(|x| &x.key == m) {
                errors.push(format!(
                    "{name} is in module {m}, which the plan does not have"
                ));
            }
        }
        budget_fits(&mut errors, &name, &s.budget, &rules.budget);
    }
    for s in &plan.subtasks {
        let mut seen = BTreeSet::new();
        for d in &s.depends_on {
            if d == &s.key {
                errors.push(format!("sub-task {} depends on itself", s.key));
            } else if !seen.insert(d) {
                errors.push(format!("sub-task {} names dependency {d} twice", s.key));
            } else if !keys.contains_key(d.as_str()) && !rules.done_keys.contains(d) {
                errors.push(format!(
                    "sub-task {} depends on {d}, which the plan does not have",
                    s.key
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(plan) {
        errors.push(format!(
            "the dependencies make a cycle: {}; a sub-task cannot wait for itself",
            cycle.join(" → ")
        ));
    }
    let total = |f: fn(&Budget) -> Option<f64>| -> f64 {
        plan.subtasks.iter().filter_map(|s| f(&s.budget)).sum()
    };
    if let Some(max) = rules.budget.tokens {
        let sum = total(|b| b.tokens.map(|t| t as f64));
        if sum > max as f64 {
            errors.push(format!(
                "the sub-tasks' token budgets add up to {sum}, more than the goal's {max}"
            ));
        }
    }
    if let Some(max) = rules.budget.cost_usd {
        let sum = total(|b| b.cost_usd);
        if sum > max + 1e-9 {
            errors.push(format!(
                "the sub-tasks' cost budgets add up to ${sum:.2}, more than the goal's ${max:.2}"
            ));
        }
    }
    errors
}

fn text(
    errors: &mut Vec<String>,
    name: &str,
    field: &str,
    value: &str,
    max: usize,
    required: bool,
) {
    if required && value.trim().is_empty() {
        errors.push(format!("{name} has no {field}"));
    }
    if value.chars().count() > max {
        errors.push(format!(
            "{name}: its {field} is longer than {max} characters"
        ));
    }
    if value.contains('\0') {
        errors.push(format!("{name}: its {field} holds a NUL character"));
    }
}

fn budget_fits(errors: &mut Vec<String>, name: &str, b: &Budget, goal: &Budget) {
    if let (Some(t), Some(max)) = (b.tokens, goal.tokens) {
        if t > max {
            errors.push(format!(
                "{name}: its budget of {t} tokens is over the goal's {max}"
            ));
        }
    }
    if let (Some(c), Some(max)) = (b.cost_usd, goal.cost_usd) {
        if c > max {
            errors.push(format!(
                "{name}: its budget of ${c:.2} is over the goal's ${max:.2}"
            ));
        }
    }
    if b.cost_usd.is_some_and(|c| !(c >= 0.0 && c.is_finite())) {
        errors.push(format!("{name}: its cost budget must be a positive number"));
    }
    if let (Some(w), Some(max)) = (b.wall_secs, goal.wall_secs) {
        if w > max {
            errors.push(format!(
                "{name}: its wall-time budget of {w} s is over the goal's {max} s"
            ));
        }
    }
}

/// A cycle among the plan's dependencies, as keys from a sub-task back to
/// itself; the first in key order.
fn find_cycle(plan: &Plan) -> Option<Vec<String>> {
    let edges: BTreeMap<&str, Vec<&str>> = plan
        .subtasks
        .iter()
        .map(|s| {
            let mut deps: Vec<&str> = s.depends_on.iter().map(String::as_str).collect();
            deps.sort();
            (s.key.as_str(), deps)
        })
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Closed,
    }
    let mut mark: BTreeMap<&str, Mark> = edges.keys().map(|k| (*k, Mark::New)).collect();
    for &start in edges.keys() {
        if mark[start] != Mark::New {
            continue;
        }
        // Iterative depth-first search keeping the path.
        let mut path: Vec<(&str, usize)> = vec![(start, 0)];
        mark.insert(start, Mark::Open);
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            let deps = &edges[node];
            if *next < deps.len() {
                let d = deps[*next];
                *next += 1;
                match mark.get(d).copied() {
                    Some(Mark::New) => {
                        mark.insert(d, Mark::Open);
                        path.push((d, 0));
                    }
                    Some(Mark::Open) => {
                        let from = path.iter().position(|(k, _)| *k == d).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            path[from..].iter().map(|(k, _)| k.to_string()).collect();
                        cycle.push(d.to_string());
                        return Some(cycle);
                    }
                    // Done, or not in the plan (reported elsewhere).
                    _ => {}
                }
            } else {
                mark.insert(node, Mark::Closed);
                path.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use subjects::goals::{PlanModule, PlanSubtask};

    fn sub(key: &str, deps: &[&str]) -> PlanSubtask {
        PlanSubtask {
            key: key.into(),
            title: format!("do {key}"),
            description: "details".into(),
            role: "executor".into(),
            acceptance: vec!["it works".into()],
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            module: None,
            size: None,
            budget: Budget::default(),
        }
    }

    fn rules() -> PlanRules {
        PlanRules {
            plannable: vec!["executor".into()],
            max_subtasks: 10,
            budget: Budget {
                tokens: Some(1000),
                ..Budget::default()
            },
            done_keys: vec![],
        }
    }

    fn plan(subtasks: Vec<PlanSubtask>) -> Plan {
        Plan {
            summary: "s".into(),
            modules: vec![],
            subtasks,
        }
    }

    #[test]
    fn a_valid_dag_passes() {
        let p = plan(vec![sub("a", &[]), sub("b", &["a"]), sub("c", &["a", "b"])]);
        assert_eq!(check(&p, &rules()), Vec::<String>::new());
    }

    #[test]
    fn a_cycle_is_named() {
        let p = plan(vec![
            sub("a", &["c"]),
            sub("b", &["a"]),
            sub("c", &["b"]),
            sub("d", &[]),
        ]);
        let errors = check(&p, &rules());
        assert_eq!(
            errors,
            vec!["the dependencies make a cycle: a → c → b → a; a sub-task cannot wait for itself"]
        );
    }

    #[test]
    fn every_error_is_listed_at_once() {
        let mut bad_role = sub("x", &["missing"]);
        bad_role.role = "shell".into();
        bad_role.acceptance = vec![" ".into()];
        bad_role.size = Some(9);
        let mut dup = sub("a", &[]);
        dup.budget.tokens = Some(5000);
        let mut bad_module = sub("bad key", &["a", "a"]);
        bad_module.module = Some("m".into());
        let p = Plan {
            summary: String::new(),
            modules: vec![PlanModule {
                key: "other".into(),
                title: "Other".into(),
                description: String::new(),
            }],
            subtasks: vec![sub("a", &["a"]), dup, bad_role, bad_module],
        };
        let errors = check(&p, &rules());
        for want in [
            "sub-task key a is used twice; keys must be unique",
            "sub-task x: role \"shell\" may not be planned; plan one of: executor",
            "sub-task x has no acceptance criteria",
            "sub-task x: size is 1 to 5, not 9",
            "sub-task a: its budget of 5000 tokens is over the goal's 1000",
            "sub-task bad key: its key \"bad key\" is not valid",
            "sub-task bad key is in module m, which the plan does not have",
            "sub-task a depends on itself",
            "sub-task x depends on missing, which the plan does not have",
            "sub-task bad key names dependency a twice",
            "the sub-tasks' token budgets add up to 5000, more than the goal's 1000",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "{want:?} not in {errors:#?}"
            );
        }
    }

    #[test]
    fn a_replan_may_depend_on_done_work_but_not_reuse_its_keys() {
        let mut r = rules();
        r.done_keys = vec!["old".into()];
        let ok = plan(vec![sub("new", &["old"])]);
        assert!(check(&ok, &r).is_empty());
        let reuse = plan(vec![sub("old", &[])]);
        assert_eq!(
            check(&reuse, &r),
            vec!["sub-task key old belongs to a sub-task already done; choose another key (you may depend on it)"]
        );
    }

    #[test]
    fn empty_and_oversized_plans_are_refused() {
        assert_eq!(
            check(&plan(vec![]), &rules()),
            vec!["the plan has no sub-tasks; a plan needs at least one"]
        );
        let many = plan((0..11).map(|i| sub(&format!("s{i}"), &[])).collect());
        assert_eq!(
            check(&many, &rules()),
            vec!["the plan has 11 sub-tasks, more than the 10 a plan may have; merge some"]
        );
    }
}
