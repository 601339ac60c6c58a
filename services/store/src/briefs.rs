//! What the loop's runs are told: the prompts of planning, sub-task,
//! review and delivery runs, composed from what Postgres holds.
//!
//! Pure text: no I/O, so every prompt is unit-tested. A run's input keeps
//! the parts too (`brief`, `dependencies`, `rework`), so that the prompt can
//! be composed again when they change (a dependency done, a verdict given)
//! without growing.

use serde_json::{json, Value};
use subjects::goals::{Budget, PlanSubtask};

/// The most of a dependency's (or sub-task's) result quoted in a prompt.
pub const QUOTE_CHARS: usize = 2000;

/// What every prompt says about the goal.
#[derive(Clone, Debug, Default)]
pub struct GoalBrief<'a> {
    pub title: &'a str,
    pub description: &'a str,
    pub acceptance: &'a str,
    pub budget: Budget,
}

/// A role the planner may plan, with what it is for.
#[derive(Clone, Debug)]
pub struct PlannableRole {
    pub name: String,
    pub description: String,
}

/// A sub-task already done (for a replan, and for the delivery run).
#[derive(Clone, Debug)]
pub struct DoneSubtask {
    pub key: String,
    pub title: String,
    pub result: Option<Value>,
}

/// One earlier review round of a sub-task.
#[derive(Clone, Debug)]
pub struct Round {
    pub score: u8,
    pub issues: Vec<String>,
}

/// What a run reported, in a sentence or a few: an agent's last message,
/// or the JSON of any other result, cut at [`QUOTE_CHARS`].
pub fn result_text(result: Option<&Value>) -> String {
    let text = match result {
        None | Some(Value::Null) => return "(no result)".to_string(),
        Some(v) => match v.get("message").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => v.to_string(),
        },
    };
    cut(&text, QUOTE_CHARS)
}

fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

pub(crate) fn budget_line(b: &Budget) -> String {
    let mut parts = Vec::new();
    if let Some(t) = b.tokens {
        parts.push(format!("{t} tokens"));
    }
    if let Some(c) = b.cost_usd {
        parts.push(format!("${c:.2}"));
    }
    if let Some(w) = b.wall_secs {
        parts.push(format!("{w} s of wall time"));
    }
    if parts.is_empty() {
        "none set".to_string()
    } else {
        parts.join(", ")
    }
}

fn goal_part(g: &GoalBrief<'_>) -> String {
    let mut out = format!("Goal: {}\n", g.title);
    if !g.description.trim().is_empty() {
        out.push_str(g.description.trim());
        out.push('\n');
    }
    out
}

fn bullets(items: &[String]) -> String {
    items.iter().map(|i| format!("- {i}\n")).collect()
}

/// The prompt of a planning run.
pub fn planning_prompt(
    g: &GoalBrief<'_>,
    roles: &[PlannableRole],
    max_subtasks: u32,
    errors: &[String],
    done: &[DoneSubtask],
    note: Option<&str>,
) -> String {
    let mut out = String::from("Plan this goal for a team of AI employees.\n\n");
    out.push_str(&goal_part(g));
    out.push_str(&format!(
        "\nThe goal is done when: {}\nBudget: {}\n\nRoles you may plan (the role of each sub-task):\n",
        g.acceptance.trim(),
        budget_line(&g.budget)
    ));
    for r in roles {
        out.push_str(&format!("- {}: {}\n", r.name, r.description));
    }
    out.push_str(&format!(
        "\nSubmit the plan with the tool action_plan_submit: {{\"summary\": \"…\", \"modules\": [{{\"key\", \"title\"}}] (optional), \"subtasks\": [{{\"key\", \"title\", \"description\", \"role\", \"acceptance\": [\"…\"], \"depends_on\": [\"<key>\"], \"module\", \"size\": 1-5}}]}}. \
Keys are unique (letters, digits, - and _); every sub-task has at least one acceptance criterion; depends_on names keys of this plan and makes no cycle; at most {max_subtasks} sub-tasks. \
The plan is checked before anything runs; a refused plan comes back with every error listed.\n"
    ));
    if !errors.is_empty() {
        out.push_str("\nYour previous plan was refused:\n");
        out.push_str(&bullets(errors));
    }
    if !done.is_empty() {
        out.push_str(
            "\nAlready done (do not plan these keys again; a new sub-task may depend on them by key):\n",
        );
        for d in done {
            out.push_str(&format!(
                "- {} ({}): {}\n",
                d.key,
                d.title,
                cut(&result_text(d.result.as_ref()), 300)
            ));
        }
    }
    if let Some(n) = note.filter(|n| !n.trim().is_empty()) {
        out.push_str(&format!("\nA person's note: {}\n", n.trim()));
    }
    out
}

/// The parts of a sub-task's input that do not change between its runs.
pub fn subtask_brief(g: &GoalBrief<'_>, s: &PlanSubtask) -> String {
    let mut out = String::from("You are working on one sub-task of a goal.\n\n");
    out.push_str(&goal_part(g));
    out.push_str(&format!(
        "\nYour sub-task ({}): {}\n{}\n\nIt is done when:\n{}",
        s.key,
        s.title,
        s.description.trim(),
        bullets(&s.acceptance)
    ));
    out
}

/// A sub-task's input: its brief, with what its dependencies delivered and
/// what the last review asked for, and the prompt composed from them.
pub fn subtask_input(
    brief: &str,
    subtask: &Value,
    dependencies: &[DoneSubtask],
    rework: Option<(u32, &Round)>,
    note: Option<&str>,
) -> Value {
    let mut prompt = brief.to_string();
    if !dependencies.is_empty() {
        prompt.push_str("\nWhat the sub-tasks before yours delivered:\n");
        for d in dependencies {
            prompt.push_str(&format!(
                "- {} ({}): {}\n",
                d.key,
                d.title,
                result_text(d.result.as_ref())
            ));
        }
    }
    if let Some((n, r)) = rework {
        prompt.push_str(&format!(
            "\nThis is rework round {n}. The reviewer (score {}/10) asked for these changes:\n{}",
            r.score,
            bullets(&r.issues)
        ));
    }
    if let Some(n) = note.filter(|n| !n.trim().is_empty()) {
        prompt.push_str(&format!("\nA person's note: {}\n", n.trim()));
    }
    prompt.push_str(
        "\nThe goal's workspace is /workspace: earlier sub-tasks' files are there; leave yours there too. \
Finish with a short report of what you did and how you checked it.",
    );
    let mut input = json!({
        "prompt": prompt,
        "brief": brief,
        "subtask": subtask,
    });
    if !dependencies.is_empty() {
        input["dependencies"] = Value::from(
            dependencies
                .iter()
                .map(|d| json!({"key": d.key, "title": d.title, "result": d.result}))
                .collect::<Vec<_>>(),
        );
    }
    if let Some((n, r)) = rework {
        input["rework"] = json!({"round": n, "score": r.score, "issues": r.issues});
    }
    input
}

/// The prompt of a review run.
#[allow(clippy::too_many_arguments)]
pub fn review_prompt(
    g: &GoalBrief<'_>,
    task_id: uuid::Uuid,
    key: &str,
    title: &str,
    subtask: &Value,
    result: Option<&Value>,
    min_score: u8,
    earlier: &[Round],
) -> String {
    let description = subtask
        .get("description")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let acceptance: Vec<String> = subtask
        .get("acceptance")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut out = String::from("Review one sub-task's work against its acceptance criteria.\n\n");
    out.push_str(&goal_part(g));
    out.push_str(&format!(
        "\nSub-task ({key}): {title}\n{}\n\nIt is done when:\n{}\nThe employee reported:\n{}\n\n\
The goal's workspace is mounted read-only at /workspace: check the files there.\n",
        description.trim(),
        bullets(&acceptance),
        result_text(result)
    ));
    if !earlier.is_empty() {
        out.push_str("\nEarlier review rounds:\n");
        for (i, r) in earlier.iter().enumerate() {
            out.push_str(&format!(
                "- round {} (score {}): {}\n",
                i + 1,
                r.score,
                r.issues.join("; ")
            ));
        }
    }
    out.push_str(&format!(
        "\nSubmit your verdict with the tool action_review_submit: {{\"task_id\": \"{task_id}\", \"score\": 1-10, \"approve\": true or false, \"issues\": [\"…\"], \"summary\": \"…\"}}. \
Approve only when every criterion is met and the score is at least {min_score}; to reject, list every issue that must change."
    ));
    out
}

/// The prompt of the delivery run.
pub fn delivery_prompt(g: &GoalBrief<'_>, subtasks: &[DoneSubtask]) -> String {
    let mut out = String::from(
        "Every sub-task of this goal is done. Write the deliverable: what was built, where it is in /workspace, and how it meets the goal's acceptance.\n\n",
    );
    out.push_str(&goal_part(g));
    out.push_str(&format!(
        "\nThe goal is done when: {}\n\nSub-tasks:\n",
        g.acceptance.trim()
    ));
    for s in subtasks {
        out.push_str(&format!(
            "- {} ({}): {}\n",
            s.key,
            s.title,
            cut(&result_text(s.result.as_ref()), 600)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn goal() -> GoalBrief<'static> {
        GoalBrief {
            title: "Landing page",
            description: "For the bakery.",
            acceptance: "It opens in a browser.",
            budget: Budget {
                tokens: Some(1000),
                ..Budget::default()
            },
        }
    }

    fn subtask() -> PlanSubtask {
        PlanSubtask {
            key: "page".into(),
            title: "Write the page".into(),
            description: "index.html".into(),
            role: "executor".into(),
            acceptance: vec!["has a title".into(), "has a footer".into()],
            depends_on: vec![],
            module: None,
            size: None,
            budget: Budget::default(),
        }
    }

    #[test]
    fn a_planning_prompt_lists_roles_errors_done_work_and_the_note() {
        let p = planning_prompt(
            &goal(),
            &[PlannableRole {
                name: "executor".into(),
                description: "does things".into(),
            }],
            20,
            &["sub-task b depends on c, which the plan does not have".into()],
            &[DoneSubtask {
                key: "a".into(),
                title: "A".into(),
                result: Some(json!({"message": "built a"})),
            }],
            Some("smaller steps"),
        );
        for part in [
            "Goal: Landing page",
            "Budget: 1000 tokens",
            "- executor: does things",
            "at most 20 sub-tasks",
            "Your previous plan was refused:\n- sub-task b depends on c",
            "- a (A): built a",
            "A person's note: smaller steps",
        ] {
            assert!(p.contains(part), "{part:?} missing from:\n{p}");
        }
    }

    #[test]
    fn a_subtask_input_carries_its_dependencies_and_the_rework_asked() {
        let brief = subtask_brief(&goal(), &subtask());
        assert!(brief.contains("Your sub-task (page): Write the page"));
        assert!(brief.contains("- has a footer"));
        let deps = [DoneSubtask {
            key: "copy".into(),
            title: "Copy".into(),
            result: Some(json!({"message": "wrote copy.txt"})),
        }];
        let round = Round {
            score: 4,
            issues: vec!["no footer".into()],
        };
        let input = subtask_input(
            &brief,
            &json!({"key": "page"}),
            &deps,
            Some((1, &round)),
            None,
        );
        let prompt = input["prompt"].as_str().expect("prompt");
        assert!(prompt.starts_with(&brief));
        assert!(prompt.contains("- copy (Copy): wrote copy.txt"));
        assert!(prompt.contains("rework round 1. The reviewer (score 4/10)"));
        assert!(prompt.contains("- no footer"));
        assert_eq!(input["rework"]["issues"], json!(["no footer"]));
        assert_eq!(input["dependencies"][0]["key"], "copy");
        // Composed again from the same brief, it does not grow.
        let again = subtask_input(&brief, &json!({}), &deps, None, None);
        assert!(!again["prompt"].as_str().unwrap().contains("rework"));
    }

    #[test]
    fn a_review_prompt_names_the_task_criteria_and_earlier_rounds() {
        let id = uuid::Uuid::from_u128(7);
        let s = serde_json::to_value(subtask()).unwrap();
        let p = review_prompt(
            &goal(),
            id,
            "page",
            "Write the page",
            &s,
            Some(&json!({"message": "done: index.html"})),
            7,
            &[Round {
                score: 3,
                issues: vec!["no footer".into()],
            }],
        );
        for part in [
            "Sub-task (page): Write the page",
            "- has a title",
            "The employee reported:\ndone: index.html",
            "round 1 (score 3): no footer",
            &format!("\"task_id\": \"{id}\""),
            "at least 7",
        ] {
            assert!(p.contains(part), "{part:?} missing from:\n{p}");
        }
    }

    #[test]
    fn results_are_quoted_short() {
        let long = "x".repeat(QUOTE_CHARS + 10);
        let t = result_text(Some(&json!({"message": long})));
        assert_eq!(t.chars().count(), QUOTE_CHARS + 1);
        assert_eq!(result_text(None), "(no result)");
        assert_eq!(
            result_text(Some(&json!({"exit_code": 0}))),
            "{\"exit_code\":0}"
        );
    }
}
