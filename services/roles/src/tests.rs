use std::path::{Path, PathBuf};

use super::*;

/// A valid template with every field, as `(field, YAML value)` lines.
const BASE: &[(&str, &str)] = &[
    ("name", "executor"),
    ("description", "does things"),
    ("image", "colony/agentd:dev"),
    ("model", "scripted"),
    ("system_prompt", "\"Do the task.\""),
    ("tools", "[shell, read_file, write_file, http_fetch]"),
    ("allowed_actions", "[memory.get, memory.set, memory.list, note]"),
    ("egress", "[\"10.0.0.7:8443\", \"api.github.com\", \"*.pypi.org:8080\", \"::1\", \"[::1]:9000\"]"),
    (
        "limits",
        "{ memory_mb: 512, cpus: 1.0, pids: 256, timeout_secs: 600 }",
    ),
    (
        "quotas",
        "{ tokens_per_run: 200000, cost_usd_per_run: 1.0, wall_secs_per_run: 900, tokens_per_day: 2000000, cost_usd_per_day: 10.0 }",
    ),
    ("review", "{ required: false }"),
    ("max_turns", "30"),
    ("pool", "{ warm: 1, max_active: 8 }"),
    ("may_create", "[shell, executor]"),
];

/// BASE with `changes` applied: `Some(v)` sets (or adds) a field, `None`
/// removes it.
fn template(changes: &[(&str, Option<&str>)]) -> String {
    let mut fields: Vec<(String, String)> = BASE
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (key, value) in changes {
        match (fields.iter().position(|(k, _)| k == key), value) {
            (Some(i), Some(v)) => fields[i].1 = v.to_string(),
            (Some(i), None) => {
                fields.remove(i);
            }
            (None, Some(v)) => fields.push((key.to_string(), v.to_string())),
            (None, None) => {}
        }
    }
    fields.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

fn file() -> PathBuf {
    PathBuf::from("roles/executor.yaml")
}

fn errors_of(text: &str) -> Vec<String> {
    match Role::parse(&file(), text) {
        Ok(r) => panic!("accepted {r:?} from\n{text}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_base_template_parses_with_every_field() {
    let role = Role::parse(&file(), &template(&[])).expect("valid");
    assert_eq!(role.name, "executor");
    assert_eq!(role.tools, Tool::ALL.to_vec());
    assert_eq!(role.limits.memory_mb, 512);
    assert_eq!(role.quotas.tokens_per_run, Some(200000));
    assert_eq!(
        role.pool,
        Pool {
            warm: 1,
            max_active: 8
        }
    );
    // The per-field parse and serde's derive agree on every field.
    let derived: Role = serde_yaml_ng::from_str(&template(&[])).expect("derive");
    assert_eq!(derived, role);
}

#[test]
fn absent_optional_fields_take_their_defaults() {
    let text = "name: executor\nmodel: scripted\nsystem_prompt: go\n";
    let role = Role::parse(&file(), text).expect("valid");
    assert_eq!(role.image, None);
    assert_eq!(role.image_or("colony/agentd:dev"), "colony/agentd:dev");
    assert!(role.tools.is_empty() && role.allowed_actions.is_empty() && role.egress.is_empty());
    assert_eq!(role.limits, Limits::default());
    assert_eq!(role.quotas, Quotas::default(), "every quota unlimited");
    assert_eq!(role.review, Review::default());
    assert_eq!(role.max_turns, 30);
    assert_eq!(role.pool, Pool::default());
}

#[test]
fn every_invalid_field_is_refused_with_file_field_and_reason() {
    let f = "roles/executor.yaml";
    type Changes = Vec<(&'static str, Option<&'static str>)>;
    let cases: Vec<(Changes, String)> = vec![
        (vec![("tols", Some("[shell]"))], format!("{f}: tols: unknown field, expected one of name, description, image, model, system_prompt, tools, allowed_actions, egress, limits, quotas, review, max_turns, pool, may_create")),
        (vec![("name", None)], format!("{f}: name: missing; give the role's name, the same as the file name without .yaml")),
        (vec![("name", Some("Exec"))], format!("{f}: name: \"Exec\" is not a valid role name; use 1-64 characters of a-z, 0-9 and -")),
        (vec![("name", Some("planner"))], format!("{f}: name: \"planner\" differs from the file name; rename the file to planner.yaml or set name: executor")),
        (vec![("name", Some("[1, 2]"))], format!("{f}: name: invalid type: sequence, expected a string")),
        (vec![("image", Some("\"colony/agentd dev\""))], format!("{f}: image: must be an image reference without spaces, e.g. colony/agentd:dev, or be left out for the default")),
        (vec![("model", None)], format!("{f}: model: missing; give the model name the gateway maps to a provider, e.g. scripted")),
        (vec![("model", Some("\"\""))], format!("{f}: model: must be a model name without spaces, e.g. scripted")),
        (vec![("system_prompt", None)], format!("{f}: system_prompt: missing; give the instructions the model starts from")),
        (vec![("system_prompt", Some("\"  \""))], format!("{f}: system_prompt: is empty; give the instructions the model starts from")),
        (vec![("tools", Some("[shell, browser]"))], format!("{f}: tools[1]: unknown value \"browser\", expected one of shell, read_file, write_file, http_fetch")),
        (vec![("tools", Some("[shell, shell]"))], format!("{f}: tools[1]: shell is listed twice")),
        (vec![("tools", Some("shell"))], format!("{f}: tools: invalid type: string \"shell\", expected a sequence")),
        (vec![("allowed_actions", Some("[memory.get, deploy]"))], format!("{f}: allowed_actions[1]: unknown action \"deploy\", expected one of memory.get, memory.set, memory.list, note, task.create, review.submit, plan.submit")),
        (vec![("allowed_actions", Some("[note, note]"))], format!("{f}: allowed_actions[1]: note is listed twice")),
        (vec![("egress", Some("[\"https://api.github.com\"]"))], format!("{f}: egress[0]: \"https://api.github.com\" is not a host name, an IP address or *.suffix, with an optional :port (leave out any scheme or path)")),
        (vec![("egress", Some("[\"api.github.com/x:443\"]"))], format!("{f}: egress[0]: \"api.github.com/x:443\" is not a host name, an IP address or *.suffix, with an optional :port (leave out any scheme or path)")),
        (vec![("egress", Some("[\"api.github.com:0\"]"))], format!("{f}: egress[0]: \"api.github.com:0\" has a port that is not 1-65535 (write host:port, or [v6]:port)")),
        (vec![("egress", Some("[\"*\"]"))], format!("{f}: egress[0]: \"*\" would allow every host; list the hosts, or use *.suffix")),
        (vec![("egress", Some("[\"*.com\"]"))], format!("{f}: egress[0]: \"*.com\" is too broad; a wildcard needs two labels after *., e.g. *.pypi.org")),
        (vec![("egress", Some("[\"*.10.0.0.1\"]"))], format!("{f}: egress[0]: \"*.10.0.0.1\" puts a wildcard on an IP address; list the address itself")),
        (vec![("egress", Some("[\"API.github.com\"]"))], format!("{f}: egress[0]: \"API.github.com\" must be lower case")),
        (vec![("egress", Some("[\"a.org\", \"a.org\"]"))], format!("{f}: egress[1]: a.org is listed twice")),
        (vec![("limits", Some("{ memory_mb: 8 }"))], format!("{f}: limits.memory_mb: must be between 16 and 65536")),
        (vec![("limits", Some("{ cpus: 0 }"))], format!("{f}: limits.cpus: must be greater than 0 and at most 64")),
        (vec![("limits", Some("{ pids: 4 }"))], format!("{f}: limits.pids: must be between 32 and 32768")),
        (vec![("limits", Some("{ timeout_secs: 0 }"))], format!("{f}: limits.timeout_secs: must be between 1 and 3600")),
        (vec![("limits", Some("{ memory_mb: lots }"))], format!("{f}: limits.memory_mb: invalid type: string \"lots\", expected u64")),
        (vec![("limits", Some("{ memory: 512 }"))], format!("{f}: limits.memory: unknown field, expected one of memory_mb, cpus, pids, timeout_secs")),
        (vec![("quotas", Some("{ tokens_per_run: 0 }"))], format!("{f}: quotas.tokens_per_run: must be greater than 0")),
        (vec![("quotas", Some("{ cost_usd_per_run: -1.0 }"))], format!("{f}: quotas.cost_usd_per_run: must be greater than 0")),
        (vec![("quotas", Some("{ wall_secs_per_run: 0 }"))], format!("{f}: quotas.wall_secs_per_run: must be greater than 0")),
        (vec![("quotas", Some("{ tokens_per_day: 0 }"))], format!("{f}: quotas.tokens_per_day: must be greater than 0")),
        (vec![("quotas", Some("{ cost_usd_per_day: 0.0 }"))], format!("{f}: quotas.cost_usd_per_day: must be greater than 0")),
        (vec![("quotas", Some("{ tokens_per_run: -5 }"))], format!("{f}: quotas.tokens_per_run: invalid value: integer -5, expected u64")),
        (vec![("quotas", Some("{ tokens: 5 }"))], format!("{f}: quotas.tokens: unknown field, expected one of tokens_per_run, cost_usd_per_run, wall_secs_per_run, tokens_per_day, cost_usd_per_day")),
        (vec![("review", Some("{ required: true }"))], format!("{f}: review.reviewer_role: missing; a role whose work must be reviewed names the role that reviews it")),
        (vec![("review", Some("{ required: true, reviewer_role: executor }"))], format!("{f}: review.reviewer_role: a role cannot review its own work; name another role")),
        (vec![("review", Some("{ required: true, reviewer_role: shell }"))], format!("{f}: review.reviewer_role: the built-in shell role cannot review; name a role with a model")),
        (vec![("review", Some("{ required: true, reviewer_role: Boss }"))], format!("{f}: review.reviewer_role: \"Boss\" is not a valid role name; use 1-64 characters of a-z, 0-9 and -")),
        (vec![("review", Some("{ required: true, reviewer_role: reviewer, min_score: 11 }"))], format!("{f}: review.min_score: must be between 1 and 10")),
        (vec![("review", Some("{ required: yes please }"))], format!("{f}: review.required: invalid type: string \"yes please\", expected a boolean")),
        (vec![("max_turns", Some("0"))], format!("{f}: max_turns: must be between 1 and 1000")),
        (vec![("pool", Some("{ max_active: 0 }"))], format!("{f}: pool.max_active: must be between 1 and 256")),
        (vec![("pool", Some("{ warm: 9, max_active: 8 }"))], format!("{f}: pool.warm: 9 is more than pool.max_active (8); keep at most max_active containers warm")),
    ];
    for (changes, want) in &cases {
        let text = template(changes);
        let got = errors_of(&text);
        assert_eq!(got, vec![want.clone()], "{changes:?}");
        assert!(!want.contains('\n'));
    }
}

#[test]
fn all_problems_of_a_template_are_reported_at_once() {
    let text = template(&[
        ("tols", Some("[shell]")),
        ("model", None),
        ("limits", Some("{ memory_mb: lots, cpus: 0 }")),
        ("quotas", Some("{ tokens_per_run: 0, cost_usd_per_day: 0 }")),
        ("max_turns", Some("0")),
    ]);
    let got = errors_of(&text);
    let fields: Vec<&str> = got
        .iter()
        .map(|e| e.split(": ").nth(1).unwrap_or_default())
        .collect();
    assert_eq!(
        fields,
        [
            "tols",
            "model",
            "limits.memory_mb",
            "quotas.tokens_per_run",
            "quotas.cost_usd_per_day",
            "max_turns"
        ],
        "{got:#?}"
    );
}

#[test]
fn broken_files_are_refused_as_a_whole() {
    let f = "roles/executor.yaml";
    let cases = [
        ("", format!("{f}: is empty; a template needs at least name, model and system_prompt")),
        ("- a\n- b\n", format!("{f}: is not a mapping of fields; write name: …, model: …, system_prompt: … at the top level")),
    ];
    for (text, want) in &cases {
        assert_eq!(errors_of(text), vec![want.clone()]);
    }
    let bad = errors_of("name: [unclosed\n");
    assert_eq!(bad.len(), 1);
    assert!(
        bad[0].starts_with(&format!("{f}: is not valid YAML: ")) && bad[0].contains("line"),
        "{bad:?}"
    );
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("colony-roles-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).expect("write");
}

#[test]
fn the_repository_roles_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../roles");
    let roles = Roles::load_dir(&dir).unwrap_or_else(|e| panic!("{}", report(&e)));
    let names: Vec<&str> = roles.names().collect();
    for want in ["code-reviewer", "executor", "planner", "reviewer"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(
        roles.is_known(SHELL) && roles.get(SHELL).is_none(),
        "shell is built in"
    );
    assert_eq!(roles.known()[0], SHELL);
    let exec = roles.get("executor").expect("executor");
    assert!(exec.allows_action("memory.set"));
    assert!(!exec.allows_action("task.create"), "deny by default");
    let reviewer = roles.get("code-reviewer").expect("code-reviewer");
    assert!(reviewer.allows_action("review.submit"));
}

#[test]
fn a_directory_reports_every_problem_of_every_file() {
    let dir = scratch_dir("bad");
    write(&dir, "good.yaml", "name: good\nmodel: m\nsystem_prompt: p\nreview: { required: true, reviewer_role: judge }\n");
    write(
        &dir,
        "x.yaml",
        "name: x\nmodel: m\nsystem_prompt: p\ntols: [shell]\n",
    );
    write(
        &dir,
        "y.yaml",
        "name: y\nmodel: m\nsystem_prompt: p\nquotas: { tokens_per_run: 0 }\n",
    );
    write(&dir, "notes.txt", "not a template");
    let errors = Roles::load_dir(&dir).expect_err("refused");
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let d = dir.display();
    assert_eq!(
        text,
        vec![
            format!("{d}/x.yaml: tols: unknown field, expected one of name, description, image, model, system_prompt, tools, allowed_actions, egress, limits, quotas, review, max_turns, pool, may_create"),
            format!("{d}/y.yaml: quotas.tokens_per_run: must be greater than 0"),
            format!("{d}/good.yaml: review.reviewer_role: no role \"judge\" is defined; add roles/judge.yaml or name a defined role"),
        ]
    );
    assert_eq!(report(&errors).lines().count(), 3);

    write(
        &dir,
        "judge.yaml",
        "name: judge\nmodel: m\nsystem_prompt: p\n",
    );
    write(
        &dir,
        "judge.yml",
        "name: judge\nmodel: m\nsystem_prompt: p\n",
    );
    std::fs::remove_file(dir.join("x.yaml")).expect("rm");
    std::fs::remove_file(dir.join("y.yaml")).expect("rm");
    let errors = Roles::load_dir(&dir).expect_err("duplicate");
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec![format!("{d}/judge.yml: name: role \"judge\" is also defined by {d}/judge.yaml; keep one of the two files")]
    );
    std::fs::remove_file(dir.join("judge.yml")).expect("rm");
    let roles = Roles::load_dir(&dir).expect("valid now");
    assert_eq!(roles.names().collect::<Vec<_>>(), ["good", "judge"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_directory_is_one_clear_error() {
    let errors = Roles::load_dir(Path::new("/nonexistent/roles")).expect_err("missing");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .to_string()
            .starts_with("/nonexistent/roles: cannot be read as a directory of role templates ("),
        "{}",
        errors[0]
    );
}

#[test]
fn roles_built_in_code_obey_the_same_rules() {
    let mut r = Role::parse(&file(), &template(&[])).expect("valid");
    r.quotas.tokens_per_day = Some(0);
    r.review = Review {
        required: true,
        reviewer_role: Some("nobody".into()),
        min_score: None,
        max_reworks: Some(21),
    };
    r.may_create = vec!["ghost".into(), "Bad".into()];
    let errors = Roles::from_roles(vec![r]).expect_err("refused");
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec![
            "executor.yaml: quotas.tokens_per_day: must be greater than 0".to_string(),
            "executor.yaml: review.max_reworks: must be between 0 and 20".to_string(),
            "executor.yaml: may_create[1]: \"Bad\" is not a role name (lower-case letters, digits and '-')".to_string(),
            "executor.yaml: review.reviewer_role: no role \"nobody\" is defined; add roles/nobody.yaml or name a defined role".to_string(),
            "executor.yaml: may_create[0]: no role \"ghost\" is defined; add roles/ghost.yaml or name a defined role".to_string(),
        ]
    );
}

#[test]
fn quotas_override_field_by_field_and_agent_tools_list_actions() {
    let role = Quotas {
        tokens_per_run: Some(10),
        cost_usd_per_day: Some(1.0),
        ..Quotas::default()
    };
    let over = Quotas {
        tokens_per_run: Some(5),
        wall_secs_per_run: Some(60),
        ..Quotas::default()
    };
    assert_eq!(
        role.overridden_by(&over),
        Quotas {
            tokens_per_run: Some(5),
            wall_secs_per_run: Some(60),
            cost_usd_per_day: Some(1.0),
            ..Quotas::default()
        }
    );
    assert_eq!(
        Quotas {
            tokens_per_day: Some(0),
            ..Quotas::default()
        }
        .problems(),
        vec![("tokens_per_day", "must be greater than 0".to_string())]
    );
    let r = Role::parse(
        &file(),
        &template(&[
            ("tools", Some("[shell]")),
            ("allowed_actions", Some("[note]")),
        ]),
    )
    .expect("valid");
    assert_eq!(r.agent_tools(), ["shell", "action.note"]);
}

#[test]
fn overrides_that_raise_a_role_limit_are_named() {
    let role = Quotas {
        tokens_per_run: Some(1000),
        cost_usd_per_day: Some(2.0),
        ..Quotas::default()
    };
    let lower = Quotas {
        tokens_per_run: Some(10),
        wall_secs_per_run: Some(60),
        ..Quotas::default()
    };
    assert!(
        lower.raises(&role).is_empty(),
        "lowering, or limiting the unlimited"
    );
    let higher = Quotas {
        tokens_per_run: Some(1001),
        cost_usd_per_day: Some(2.5),
        ..Quotas::default()
    };
    assert_eq!(
        higher.raises(&role),
        vec![
            ("tokens_per_run", "1001".to_string(), "1000".to_string()),
            ("cost_usd_per_day", "2.5".to_string(), "2".to_string()),
        ]
    );
}
