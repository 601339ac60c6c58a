//! Parsing and checking templates, with every problem as one sentence.
//!
//! A template is first read as a YAML mapping; each known field is then
//! deserialised on its own, so that a wrong type in one field does not hide
//! the problems of the others, and each field's value is checked against its
//! rules. Only a template with no problem at all becomes a [`Role`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};
use subjects::gateway::action;

use crate::{Limits, Pool, Quotas, Review, Role, RoleError, Tool, FIELDS, SHELL};

/// The problems found in one file.
struct Problems<'a> {
    file: &'a Path,
    list: Vec<RoleError>,
}

impl<'a> Problems<'a> {
    fn new(file: &'a Path) -> Self {
        Self {
            file,
            list: Vec::new(),
        }
    }

    fn at(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.list.push(RoleError {
            file: self.file.to_path_buf(),
            field: field.into(),
            reason: one_line(&reason.into()),
        });
    }

    fn whole(&mut self, reason: impl Into<String>) {
        self.at("", reason)
    }

    /// Deserialise the field `key` of `map` on its own. `None` when it is
    /// absent or wrong (the problem is recorded).
    fn take<T: DeserializeOwned>(&mut self, map: &Mapping, key: &str) -> Option<T> {
        let value = map.get(key)?.clone();
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let path = if inner == "." || inner.is_empty() {
                    key.to_string()
                } else if inner.starts_with('[') {
                    format!("{key}{inner}")
                } else {
                    format!("{key}.{inner}")
                };
                let (path, reason) = serde_reason(path, &e.into_inner().to_string());
                self.at(path, reason);
                None
            }
        }
    }

    fn required<T: DeserializeOwned>(&mut self, map: &Mapping, key: &str, hint: &str) -> Option<T> {
        if !map.contains_key(key) {
            self.at(key, format!("missing; {hint}"));
            return None;
        }
        self.take(map, key)
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn list(items: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    items
        .into_iter()
        .map(|s| s.as_ref().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Serde's message in this crate's words: an unknown field is named in the
/// path, and backquotes become plain text.
fn serde_reason(path: String, msg: &str) -> (String, String) {
    let msg = msg.split(" at line ").next().unwrap_or(msg);
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once("`, ") {
            // serde_path_to_error already ends the path with the field.
            let path = if path == field || path.ends_with(&format!(".{field}")) {
                path
            } else {
                format!("{path}.{field}")
            };
            return (
                path,
                format!("unknown field, {}", expected.replace('`', "")),
            );
        }
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        if let Some((value, expected)) = rest.split_once("`, ") {
            return (
                path,
                format!("unknown value {value:?}, {}", expected.replace('`', "")),
            );
        }
    }
    (path, msg.replace('`', ""))
}

pub(crate) fn parse(file: &Path, text: &str) -> Result<Role, Vec<RoleError>> {
    let mut p = Problems::new(file);
    let value: Value = match serde_yaml_ng::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            p.whole(format!("is not valid YAML: {e}"));
            return Err(p.list);
        }
    };
    let map = match value {
        Value::Mapping(m) => m,
        Value::Null => {
            p.whole("is empty; a template needs at least name, model and system_prompt");
            return Err(p.list);
        }
        _ => {
            p.whole("is not a mapping of fields; write name: …, model: …, system_prompt: … at the top level");
            return Err(p.list);
        }
    };
    for key in map.keys() {
        match key.as_str() {
            Some(k) if FIELDS.contains(&k) => {}
            Some(k) => p.at(
                k,
                format!("unknown field, expected one of {}", list(FIELDS)),
            ),
            None => p.whole(format!(
                "has a key that is not a field name ({key:?}); expected one of {}",
                list(FIELDS)
            )),
        }
    }

    let name: Option<String> = p.required(
        &map,
        "name",
        "give the role's name, the same as the file name without .yaml",
    );
    let description: Option<String> = p.take(&map, "description");
    let image: Option<String> = p.take(&map, "image");
    let model: Option<String> = p.required(
        &map,
        "model",
        "give the model name the gateway maps to a provider, e.g. scripted",
    );
    let system_prompt: Option<String> = p.required(
        &map,
        "system_prompt",
        "give the instructions the model starts from",
    );
    let tools: Option<Vec<Tool>> = p.take(&map, "tools");
    let allowed_actions: Option<Vec<String>> = p.take(&map, "allowed_actions");
    let egress: Option<Vec<String>> = p.take(&map, "egress");
    let limits: Option<Limits> = p.take(&map, "limits");
    let quotas: Option<Quotas> = p.take(&map, "quotas");
    let review: Option<Review> = p.take(&map, "review");
    let max_turns: Option<u32> = p.take(&map, "max_turns");
    let pool: Option<Pool> = p.take(&map, "pool");
    let may_create: Option<Vec<String>> = p.take(&map, "may_create");

    if let Some(n) = &name {
        check_name(&mut p, n, true);
    }
    if let Some(i) = &image {
        check_image(&mut p, i);
    }
    if let Some(m) = &model {
        check_model(&mut p, m);
    }
    if let Some(s) = &system_prompt {
        check_prompt(&mut p, s);
    }
    if let Some(t) = &tools {
        check_tools(&mut p, t);
    }
    if let Some(a) = &allowed_actions {
        check_actions(&mut p, a);
    }
    if let Some(e) = &egress {
        check_egress(&mut p, e);
    }
    if let Some(l) = &limits {
        check_limits(&mut p, l);
    }
    if let Some(q) = &quotas {
        for (field, reason) in quota_problems(q) {
            p.at(format!("quotas.{field}"), reason);
        }
    }
    if let Some(r) = &review {
        check_review(&mut p, r, name.as_deref());
    }
    if let Some(t) = max_turns {
        check_max_turns(&mut p, t);
    }
    if let Some(pl) = &pool {
        check_pool(&mut p, pl);
    }
    if let Some(m) = &may_create {
        check_may_create(&mut p, m);
    }

    let (Some(name), Some(model), Some(system_prompt), true) =
        (name, model, system_prompt, p.list.is_empty())
    else {
        return Err(p.list);
    };
    Ok(Role {
        name,
        description: description.unwrap_or_default(),
        image,
        model,
        system_prompt,
        tools: tools.unwrap_or_default(),
        allowed_actions: allowed_actions.unwrap_or_default(),
        egress: egress.unwrap_or_default(),
        limits: limits.unwrap_or_default(),
        quotas: quotas.unwrap_or_default(),
        review: review.unwrap_or_default(),
        max_turns: max_turns.unwrap_or_else(crate::default_max_turns),
        pool: pool.unwrap_or_default(),
        may_create: may_create.unwrap_or_default(),
    })
}

fn check_may_create(p: &mut Problems<'_>, roles: &[String]) {
    for (i, r) in roles.iter().enumerate() {
        if !is_role_name(r) {
            p.at(
                format!("may_create[{i}]"),
                format!("{r:?} is not a role name (lower-case letters, digits and '-')"),
            );
        } else if roles[..i].contains(r) {
            p.at(format!("may_create[{i}]"), format!("{r} is listed twice"));
        }
    }
}

/// Every rule of [`parse`], for a [`Role`] built in code.
fn check_role(file: &Path, r: &Role) -> Vec<RoleError> {
    let mut p = Problems::new(file);
    check_name(&mut p, &r.name, false);
    if let Some(i) = &r.image {
        check_image(&mut p, i);
    }
    check_model(&mut p, &r.model);
    check_prompt(&mut p, &r.system_prompt);
    check_tools(&mut p, &r.tools);
    check_actions(&mut p, &r.allowed_actions);
    check_egress(&mut p, &r.egress);
    check_limits(&mut p, &r.limits);
    for (field, reason) in quota_problems(&r.quotas) {
        p.at(format!("quotas.{field}"), reason);
    }
    check_review(&mut p, &r.review, Some(&r.name));
    check_max_turns(&mut p, r.max_turns);
    check_pool(&mut p, &r.pool);
    check_may_create(&mut p, &r.may_create);
    p.list
}

pub(crate) fn is_role_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_name(p: &mut Problems<'_>, name: &str, against_file: bool) {
    if !is_role_name(name) {
        p.at(
            "name",
            format!("{name:?} is not a valid role name; use 1-64 characters of a-z, 0-9 and -"),
        );
    } else if name == SHELL {
        p.at(
            "name",
            "\"shell\" is the built-in shell role, which needs no template; choose another name",
        );
    } else if against_file {
        let stem = p.file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem != name {
            p.at(
                "name",
                format!(
                    "{name:?} differs from the file name; rename the file to {name}.yaml or set name: {stem}"
                ),
            );
        }
    }
}

fn check_image(p: &mut Problems<'_>, image: &str) {
    if image.is_empty() || image.chars().any(char::is_whitespace) {
        p.at(
            "image",
            "must be an image reference without spaces, e.g. colony/agentd:dev, or be left out for the default",
        );
    }
}

fn check_model(p: &mut Problems<'_>, model: &str) {
    if model.is_empty() || model.chars().any(char::is_whitespace) {
        p.at(
            "model",
            "must be a model name without spaces, e.g. scripted",
        );
    }
}

fn check_prompt(p: &mut Problems<'_>, prompt: &str) {
    if prompt.trim().is_empty() {
        p.at(
            "system_prompt",
            "is empty; give the instructions the model starts from",
        );
    }
}

fn check_tools(p: &mut Problems<'_>, tools: &[Tool]) {
    for (i, t) in tools.iter().enumerate() {
        if tools[..i].contains(t) {
            p.at(
                format!("tools[{i}]"),
                format!("{} is listed twice", t.as_str()),
            );
        }
    }
}

fn check_actions(p: &mut Problems<'_>, actions: &[String]) {
    for (i, a) in actions.iter().enumerate() {
        if !action::ALL.contains(&a.as_str()) {
            p.at(
                format!("allowed_actions[{i}]"),
                format!(
                    "unknown action {a:?}, expected one of {}",
                    list(action::ALL)
                ),
            );
        } else if actions[..i].contains(a) {
            p.at(
                format!("allowed_actions[{i}]"),
                format!("{a} is listed twice"),
            );
        }
    }
}

/// Why `host` is not a lower-case DNS host name, if it is not.
fn host_problem(host: &str) -> Option<&'static str> {
    if host.len() > 253 {
        return Some("is longer than 253 characters");
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some("must be lower case");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if host.split('.').all(label_ok) {
        None
    } else {
        Some("is not a host name, an IP address or *.suffix, with an optional :port (leave out any scheme or path)")
    }
}

fn check_egress(p: &mut Problems<'_>, egress: &[String]) {
    for (i, rule) in egress.iter().enumerate() {
        let field = format!("egress[{i}]");
        if rule.contains("://") || rule.contains('/') {
            p.at(
                field,
                format!("{rule:?} is not a host name, an IP address or *.suffix, with an optional :port (leave out any scheme or path)"),
            );
            continue;
        }
        let Some((host, _port)) = subjects::gateway::split_egress_entry(rule) else {
            p.at(
                field,
                format!("{rule:?} has a port that is not 1-65535 (write host:port, or [v6]:port)"),
            );
            continue;
        };
        if host == "*" || host == "*." {
            p.at(
                field,
                format!("{rule:?} would allow every host; list the hosts, or use *.suffix"),
            );
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if let Some(why) = host_problem(suffix) {
                p.at(field, format!("{rule:?} {why}"));
            } else if suffix.parse::<IpAddr>().is_ok() {
                p.at(
                    field,
                    format!("{rule:?} puts a wildcard on an IP address; list the address itself"),
                );
            } else if !suffix.contains('.') {
                p.at(
                    field,
                    format!("{rule:?} is too broad; a wildcard needs two labels after *., e.g. *.pypi.org"),
                );
            }
        } else if host.parse::<IpAddr>().is_err() {
            if let Some(why) = host_problem(host) {
                p.at(field, format!("{rule:?} {why}"));
            }
        }
        if egress[..i].contains(rule) {
            p.at(format!("egress[{i}]"), format!("{rule} is listed twice"));
        }
    }
}

fn check_limits(p: &mut Problems<'_>, l: &Limits) {
    if !(16..=65536).contains(&l.memory_mb) {
        p.at("limits.memory_mb", "must be between 16 and 65536");
    }
    if !(l.cpus.is_finite() && l.cpus > 0.0 && l.cpus <= 64.0) {
        p.at("limits.cpus", "must be greater than 0 and at most 64");
    }
    if !(32..=32768).contains(&l.pids) {
        p.at("limits.pids", "must be between 32 and 32768");
    }
    if !(1..=3600).contains(&l.timeout_secs) {
        p.at("limits.timeout_secs", "must be between 1 and 3600");
    }
}

pub(crate) fn quota_problems(q: &Quotas) -> Vec<(&'static str, String)> {
    let whole = |v: Option<u64>| v == Some(0);
    let money = |v: Option<f64>| v.is_some_and(|x| !(x.is_finite() && x > 0.0));
    [
        ("tokens_per_run", whole(q.tokens_per_run)),
        ("cost_usd_per_run", money(q.cost_usd_per_run)),
        ("wall_secs_per_run", whole(q.wall_secs_per_run)),
        ("tokens_per_day", whole(q.tokens_per_day)),
        ("cost_usd_per_day", money(q.cost_usd_per_day)),
    ]
    .into_iter()
    .filter(|(_, bad)| *bad)
    .map(|(field, _)| (field, "must be greater than 0".to_string()))
    .collect()
}

fn check_review(p: &mut Problems<'_>, r: &Review, own: Option<&str>) {
    match r.reviewer_role.as_deref() {
        None if r.required => p.at(
            "review.reviewer_role",
            "missing; a role whose work must be reviewed names the role that reviews it",
        ),
        None => {}
        Some(SHELL) => p.at(
            "review.reviewer_role",
            "the built-in shell role cannot review; name a role with a model",
        ),
        Some(other) if !is_role_name(other) => p.at(
            "review.reviewer_role",
            format!("{other:?} is not a valid role name; use 1-64 characters of a-z, 0-9 and -"),
        ),
        Some(other) if Some(other) == own => p.at(
            "review.reviewer_role",
            "a role cannot review its own work; name another role",
        ),
        Some(_) => {}
    }
    if let Some(s) = r.min_score {
        if !(1..=10).contains(&s) {
            p.at("review.min_score", "must be between 1 and 10");
        }
    }
    if let Some(n) = r.max_reworks {
        if n > 20 {
            p.at("review.max_reworks", "must be between 0 and 20");
        }
    }
}

fn check_max_turns(p: &mut Problems<'_>, t: u32) {
    if !(1..=1000).contains(&t) {
        p.at("max_turns", "must be between 1 and 1000");
    }
}

fn check_pool(p: &mut Problems<'_>, pool: &Pool) {
    if !(1..=256).contains(&pool.max_active) {
        p.at("pool.max_active", "must be between 1 and 256");
    } else if pool.warm > pool.max_active {
        p.at(
            "pool.warm",
            format!(
                "{} is more than pool.max_active ({}); keep at most max_active containers warm",
                pool.warm, pool.max_active
            ),
        );
    }
}

pub(crate) fn load_dir(dir: &Path) -> Result<Vec<Role>, Vec<RoleError>> {
    let whole = |reason: String| {
        vec![RoleError {
            file: dir.to_path_buf(),
            field: String::new(),
            reason,
        }]
    };
    let entries = std::fs::read_dir(dir).map_err(|e| {
        whole(format!(
            "cannot be read as a directory of role templates ({e}); set COLONY_ROLES_DIR to the roles directory"
        ))
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| whole(format!("cannot be listed ({e})")))?
            .path();
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(RoleError {
                    file,
                    field: String::new(),
                    reason: format!("cannot be read ({e})"),
                });
                continue;
            }
        };
        match parse(&file, &text) {
            Ok(role) => parsed.push((file, role)),
            Err(mut e) => errors.append(&mut e),
        }
    }
    match together(parsed) {
        Ok(roles) if errors.is_empty() => Ok(roles),
        Ok(_) => Err(errors),
        Err(mut e) => {
            errors.append(&mut e);
            Err(errors)
        }
    }
}

/// Templates that are each valid, checked against each other: one file per
/// name, and every reviewer role defined.
pub(crate) fn together(roles: Vec<(PathBuf, Role)>) -> Result<Vec<Role>, Vec<RoleError>> {
    let mut errors = Vec::new();
    let mut first: BTreeMap<&str, &Path> = BTreeMap::new();
    for (file, role) in &roles {
        errors.extend(check_role(file, role));
        if let Some(other) = first.get(role.name.as_str()) {
            errors.push(RoleError {
                file: file.clone(),
                field: "name".into(),
                reason: format!(
                    "role {:?} is also defined by {}; keep one of the two files",
                    role.name,
                    other.display()
                ),
            });
        } else {
            first.insert(&role.name, file);
        }
    }
    for (file, role) in &roles {
        if let Some(reviewer) = &role.review.reviewer_role {
            if is_role_name(reviewer) && reviewer != SHELL && !first.contains_key(reviewer.as_str())
            {
                errors.push(RoleError {
                    file: file.clone(),
                    field: "review.reviewer_role".into(),
                    reason: format!(
                        "no role {reviewer:?} is defined; add roles/{reviewer}.yaml or name a defined role"
                    ),
                });
            }
        }
    }
    for (file, role) in &roles {
        for (i, made) in role.may_create.iter().enumerate() {
            if is_role_name(made) && made != SHELL && !first.contains_key(made.as_str()) {
                errors.push(RoleError {
                    file: file.clone(),
                    field: format!("may_create[{i}]"),
                    reason: format!(
                        "no role {made:?} is defined; add roles/{made}.yaml or name a defined role"
                    ),
                });
            }
        }
    }
    if errors.is_empty() {
        Ok(roles.into_iter().map(|(_, r)| r).collect())
    } else {
        Err(errors)
    }
}
