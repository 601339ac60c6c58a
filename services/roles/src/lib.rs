//! Role templates: what an AI employee of a role is and may do.
//!
//! A role is a YAML file under `roles/` (see `roles/executor.yaml`): its
//! model and system prompt, the tools the model is offered, the platform
//! actions it may call (deny by default), the hosts it may reach, container
//! limits, spend quotas, whether its work needs review, and its warm pool.
//! [`Roles::load_dir`] reads every template of a directory and refuses the
//! lot when any is wrong, listing every problem as one sentence naming the
//! file and the field (`roles/x.yaml: quotas.tokens_per_run: must be greater
//! than 0`), so a bad template stops Colony at start-up instead of at the
//! first task.
//!
//! The built-in [`SHELL`] role needs no template: it runs a shell command
//! and has no model. Everything else about a role — how the worker sizes its
//! containers, how the gateway enforces it — lives with those services; this
//! crate only parses, checks and answers questions about a template.

mod check;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The built-in role that runs `/bin/sh -c`; it has no template.
pub const SHELL: &str = "shell";

/// One role template (`roles/<name>.yaml`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// Equal to the file's stem; `[a-z0-9-]`, 1–64 characters.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The container image; the configured agent image when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Model name the gateway maps to a provider.
    pub model: String,
    pub system_prompt: String,
    /// Tools offered to the model.
    #[serde(default)]
    pub tools: Vec<Tool>,
    /// Platform actions (`subjects::gateway::action`) the role may call;
    /// every other action is denied.
    #[serde(default)]
    pub allowed_actions: Vec<String>,
    /// Hosts the role may reach: a host name, an IP address, or `*.suffix`
    /// (any host under `suffix`, not `suffix` itself).
    #[serde(default)]
    pub egress: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub quotas: Quotas,
    #[serde(default)]
    pub review: Review,
    /// Model calls per run at most.
    #[serde(default = "default_max_turns")]
    pub max_turns: u32,
    #[serde(default)]
    pub pool: Pool,
    /// Roles whose tasks this role's runs may create with `task.create`
    /// (none by default; `shell` must be listed to be allowed).
    #[serde(default)]
    pub may_create: Vec<String>,
}

fn default_max_turns() -> u32 {
    30
}

/// The field names of a template, in the order the error messages list them.
pub const FIELDS: &[&str] = &[
    "name",
    "description",
    "image",
    "model",
    "system_prompt",
    "tools",
    "allowed_actions",
    "egress",
    "limits",
    "quotas",
    "review",
    "max_turns",
    "pool",
    "may_create",
];

/// A tool the model may be offered.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Tool {
    Shell,
    ReadFile,
    WriteFile,
    HttpFetch,
}

impl Tool {
    pub const ALL: [Tool; 4] = [
        Tool::Shell,
        Tool::ReadFile,
        Tool::WriteFile,
        Tool::HttpFetch,
    ];

    /// The name agentd knows the tool by.
    pub fn as_str(self) -> &'static str {
        match self {
            Tool::Shell => "shell",
            Tool::ReadFile => "read_file",
            Tool::WriteFile => "write_file",
            Tool::HttpFetch => "http_fetch",
        }
    }
}

/// Container limits of the role's runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub memory_mb: u64,
    /// Cores (fractions allowed).
    pub cpus: f64,
    pub pids: u32,
    /// Wall time of one run.
    pub timeout_secs: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mb: 256,
            cpus: 1.0,
            pids: 128,
            timeout_secs: 300,
        }
    }
}

/// Spend limits; an absent field is unlimited. A role's quotas can be
/// overridden per employee (at hire), field by field.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_run: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd_per_run: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_secs_per_run: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd_per_day: Option<f64>,
}

impl Quotas {
    /// These quotas with every field `over` sets taken from `over`.
    pub fn overridden_by(&self, over: &Quotas) -> Quotas {
        Quotas {
            tokens_per_run: over.tokens_per_run.or(self.tokens_per_run),
            cost_usd_per_run: over.cost_usd_per_run.or(self.cost_usd_per_run),
            wall_secs_per_run: over.wall_secs_per_run.or(self.wall_secs_per_run),
            tokens_per_day: over.tokens_per_day.or(self.tokens_per_day),
            cost_usd_per_day: over.cost_usd_per_day.or(self.cost_usd_per_day),
        }
    }

    /// One sentence per field that is set but not positive (and finite),
    /// as `(field, reason)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        check::quota_problems(self)
    }

    /// The fields where these overrides would raise `role`'s limit, as
    /// `(field, asked, role's limit)`. An override of a limit the role does
    /// not set lowers "unlimited" and raises nothing.
    pub fn raises(&self, role: &Quotas) -> Vec<(&'static str, String, String)> {
        fn above<T: PartialOrd + std::fmt::Display + Copy>(
            out: &mut Vec<(&'static str, String, String)>,
            field: &'static str,
            asked: Option<T>,
            limit: Option<T>,
        ) {
            if let (Some(a), Some(l)) = (asked, limit) {
                if a > l {
                    out.push((field, a.to_string(), l.to_string()));
                }
            }
        }
        let mut out = Vec::new();
        above(
            &mut out,
            "tokens_per_run",
            self.tokens_per_run,
            role.tokens_per_run,
        );
        above(
            &mut out,
            "cost_usd_per_run",
            self.cost_usd_per_run,
            role.cost_usd_per_run,
        );
        above(
            &mut out,
            "wall_secs_per_run",
            self.wall_secs_per_run,
            role.wall_secs_per_run,
        );
        above(
            &mut out,
            "tokens_per_day",
            self.tokens_per_day,
            role.tokens_per_day,
        );
        above(
            &mut out,
            "cost_usd_per_day",
            self.cost_usd_per_day,
            role.cost_usd_per_day,
        );
        out
    }
}

/// Whether the role's work is reviewed before it is done.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Review {
    #[serde(default)]
    pub required: bool,
    /// The role whose employees review; required when `required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewer_role: Option<String>,
    /// Lowest passing score, 1–10 (default 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<u8>,
    /// Times a reviewer may send the work back before a person decides,
    /// 0–20 (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_reworks: Option<u32>,
}

impl Review {
    pub const DEFAULT_MIN_SCORE: u8 = 7;
    pub const DEFAULT_MAX_REWORKS: u32 = 3;

    pub fn min_score(&self) -> u8 {
        self.min_score.unwrap_or(Self::DEFAULT_MIN_SCORE)
    }

    pub fn max_reworks(&self) -> u32 {
        self.max_reworks.unwrap_or(Self::DEFAULT_MAX_REWORKS)
    }
}

/// Containers kept for the role.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Pool {
    /// Idle containers kept ready.
    pub warm: u32,
    /// Runs of the role at once, per worker.
    pub max_active: u32,
}

impl Default for Pool {
    fn default() -> Self {
        Self {
            warm: 0,
            max_active: 4,
        }
    }
}

impl Role {
    /// Parse and check one template; `file` names it in the errors and its
    /// stem must be the role's name.
    pub fn parse(file: &Path, text: &str) -> Result<Role, Vec<RoleError>> {
        check::parse(file, text)
    }

    /// The image to run, given the configured default.
    pub fn image_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.image.as_deref().unwrap_or(default)
    }

    /// True when this role's runs may create tasks of `role`.
    pub fn may_create(&self, role: &str) -> bool {
        self.may_create.iter().any(|r| r == role)
    }

    /// Deny by default: true only for an action the template lists.
    pub fn allows_action(&self, action: &str) -> bool {
        self.allowed_actions.iter().any(|a| a == action)
    }

    /// The tool names agentd offers the model: the role's tools, then
    /// `action.<name>` for each allowed action.
    pub fn agent_tools(&self) -> Vec<String> {
        self.tools
            .iter()
            .map(|t| t.as_str().to_string())
            .chain(self.allowed_actions.iter().map(|a| format!("action.{a}")))
            .collect()
    }
}

/// One problem with a template: `file: field: reason`, one sentence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleError {
    pub file: PathBuf,
    /// The field's path (`quotas.tokens_per_run`, `tools[2]`); empty when
    /// the problem is the file as a whole.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for RoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.reason
            )
        }
    }
}

impl std::error::Error for RoleError {}

/// The loaded templates by name; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Roles {
    by_name: Arc<BTreeMap<String, Role>>,
}

impl Roles {
    /// No templates: only the built-in [`SHELL`] role is known.
    pub fn empty() -> Roles {
        Roles::default()
    }

    /// Every `*.yaml` / `*.yml` file of `dir`, each checked on its own and
    /// then against the others (a reviewer role must exist). Any problem
    /// refuses the whole directory, with every problem listed.
    pub fn load_dir(dir: &Path) -> Result<Roles, Vec<RoleError>> {
        check::load_dir(dir).map(Roles::from_checked)
    }

    /// Templates checked elsewhere (tests, embedding); refused as
    /// [`Roles::load_dir`] would refuse them when they do not fit together.
    pub fn from_roles(roles: Vec<Role>) -> Result<Roles, Vec<RoleError>> {
        let pairs = roles
            .into_iter()
            .map(|r| (PathBuf::from(format!("{}.yaml", r.name)), r))
            .collect();
        check::together(pairs).map(Roles::from_checked)
    }

    fn from_checked(roles: Vec<Role>) -> Roles {
        Roles {
            by_name: Arc::new(roles.into_iter().map(|r| (r.name.clone(), r)).collect()),
        }
    }

    /// The template of `name` (`None` for [`SHELL`], which has none).
    pub fn get(&self, name: &str) -> Option<&Role> {
        self.by_name.get(name)
    }

    /// True for [`SHELL`] and every loaded role.
    pub fn is_known(&self, name: &str) -> bool {
        name == SHELL || self.by_name.contains_key(name)
    }

    /// Loaded role names, sorted (without [`SHELL`]).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Every role a task may name: [`SHELL`] first, then the loaded ones.
    pub fn known(&self) -> Vec<String> {
        std::iter::once(SHELL)
            .chain(self.names())
            .map(str::to_string)
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Role> {
        self.by_name.values()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Every error on its own line, for a start-up failure.
pub fn report(errors: &[RoleError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests;
