//! A schedule request checked ([`check`]) and what a fire starts
//! ([`Rules`]): the template filled in with the fire time, then admitted by
//! the same rules as `POST /v1/tasks` and `POST /v1/goals`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use store::schedules::{FireRules, NewTarget, ScheduleDef, ScheduleRow, TargetKind};
use store::Store;
use subjects::schedules::{ScheduleSpec, Span};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{jitter, CronSchedule};

/// The catch-up window when a schedule names none.
pub const DEFAULT_CATCHUP_WINDOW: Duration = Duration::from_secs(300);
/// The longest catch-up window a schedule may ask for.
pub const MAX_CATCHUP_WINDOW: Duration = Duration::from_secs(7 * 86_400);
/// The largest jitter bound.
pub const MAX_JITTER: Duration = Duration::from_secs(3600);
/// Most fire times one backfill may cover.
pub const MAX_BACKFILL: usize = 1000;

pub fn to_chrono(t: OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

pub fn to_time(t: DateTime<Utc>) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.timestamp())
        .ok()
        .and_then(|s| s.replace_nanosecond(t.timestamp_subsec_nanos()).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// A span from a number of seconds or `<n><unit>` (`ms`, `s`, `m`, `h`,
/// `d`); `what` names it in the refusal.
pub fn parse_span(span: &Span, what: &str) -> Result<Duration, String> {
    let text = match span {
        Span::Seconds(s) => return Ok(Duration::from_secs(*s)),
        Span::Text(t) => t.trim(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{what} {text:?} is not a length of time; use seconds (300) or a number with ms, s, m, h or d (\"5m\")")
    })?;
    let unit_ms: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "{what} {text:?} has unit {other:?}; use ms, s, m, h or d"
            ))
        }
    };
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{what} {text:?} is too long"))
}

/// What a checked request stores: everything but the cursor.
#[derive(Clone, Debug)]
pub struct Checked {
    pub schedule: CronSchedule,
    pub new: ScheduleDef,
}

/// Fill the fire into every string of `template`.
pub fn render(
    template: &Value,
    fire_at: OffsetDateTime,
    zone: chrono_tz::Tz,
    id: Uuid,
    name: &str,
) -> Value {
    let utc = to_chrono(fire_at);
    let local = utc.with_timezone(&zone);
    let subs = [
        (
            "{{fire_at}}",
            utc.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        ),
        (
            "{{fire_at_local}}",
            local.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        ),
        ("{{fire_date}}", local.format("%Y-%m-%d").to_string()),
        ("{{schedule_id}}", id.to_string()),
        ("{{schedule_name}}", name.to_string()),
    ];
    fn walk(v: &Value, subs: &[(&str, String)]) -> Value {
        match v {
            Value::String(s) if s.contains("{{") => {
                let mut s = s.clone();
                for (k, v) in subs {
                    s = s.replace(k, v);
                }
                Value::String(s)
            }
            Value::Array(a) => Value::Array(a.iter().map(|x| walk(x, subs)).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, x)| (k.clone(), walk(x, subs))).collect())
            }
            other => other.clone(),
        }
    }
    walk(template, &subs)
}

/// Admit a rendered template as what `target` takes.
fn admit_value(
    rules: &admission::Rules,
    target: TargetKind,
    value: &Value,
    tenant: &str,
) -> Result<NewTarget, String> {
    let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    match target {
        TargetKind::Task => rules
            .check(&bytes, tenant, None)
            .map(NewTarget::Task)
            .map_err(|r| r.reason),
        TargetKind::Goal => rules
            .check_goal(&bytes, tenant, None)
            .map(NewTarget::Goal)
            .map_err(|r| r.reason),
    }
}

/// Check `spec` for `tenant`: one sentence for the first problem.
pub fn check(
    spec: &ScheduleSpec,
    tenant: &str,
    rules: &admission::Rules,
    now: OffsetDateTime,
) -> Result<Checked, String> {
    let name = spec.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err("name must be 1-100 characters, none of them control characters".into());
    }
    let schedule = CronSchedule::parse(&spec.cron, &spec.timezone).map_err(|e| e.to_string())?;
    let (target, template) = match (&spec.task, &spec.goal) {
        (Some(t), None) => (TargetKind::Task, t.clone()),
        (None, Some(g)) => (TargetKind::Goal, g.clone()),
        _ => {
            return Err(
                "give exactly one of task (what POST /v1/tasks takes) and goal (what POST /v1/goals takes)"
                    .into(),
            )
        }
    };
    let catchup_window = match &spec.catchup_window {
        None => DEFAULT_CATCHUP_WINDOW,
        Some(s) => parse_span(s, "catchup_window")?,
    };
    if catchup_window < Duration::from_secs(1) || catchup_window > MAX_CATCHUP_WINDOW {
        return Err(format!(
            "catchup_window is {} ms; use 1 s to {} days",
            catchup_window.as_millis(),
            MAX_CATCHUP_WINDOW.as_secs() / 86_400
        ));
    }
    let jitter_bound = match &spec.jitter {
        None => Duration::ZERO,
        Some(s) => parse_span(s, "jitter")?,
    };
    if jitter_bound > MAX_JITTER {
        return Err(format!(
            "jitter is {} s; use at most {} s",
            jitter_bound.as_secs(),
            MAX_JITTER.as_secs()
        ));
    }
    if let (Some(a), Some(b)) = (spec.start_at, spec.end_at) {
        if b <= a {
            return Err("end_at must be after start_at".into());
        }
    }
    // The template must be admissible for a fire: try it with the next one
    // (or now, when none is left).
    let sample = schedule
        .next_after(to_chrono(now))
        .map(to_time)
        .unwrap_or(now);
    let rendered = render(&template, sample, schedule.zone(), Uuid::nil(), name);
    admit_value(rules, target, &rendered, tenant)
        .map_err(|why| format!("the {} template is not admissible: {why}", target.as_str()))?;
    // The offset: stable for the tenant and name, so recreating a schedule
    // keeps its pace.
    let offset = jitter(format!("{tenant}/{name}").as_bytes(), jitter_bound);
    Ok(Checked {
        new: ScheduleDef {
            tenant: tenant.to_string(),
            name: name.to_string(),
            cron: schedule.expression().to_string(),
            timezone: spec.timezone.clone(),
            target,
            template,
            overlap: spec.overlap,
            catchup_window,
            catchup: spec.catchup,
            jitter: jitter_bound,
            offset,
            start_at: spec.start_at,
            end_at: spec.end_at,
            paused: spec.paused,
            next_fire_at: None,
        },
        schedule,
    })
}

/// The first cron time of `schedule` strictly after `after`, inside
/// `[start_at, end_at]`.
pub fn first_after(
    schedule: &CronSchedule,
    after: OffsetDateTime,
    start_at: Option<OffsetDateTime>,
    end_at: Option<OffsetDateTime>,
) -> Option<OffsetDateTime> {
    let from = match start_at {
        // A fire exactly at start_at counts.
        Some(s) if s - time::Duration::microseconds(1) > after => {
            s - time::Duration::microseconds(1)
        }
        _ => after,
    };
    let next = to_time(schedule.next_after(to_chrono(from))?);
    match end_at {
        Some(end) if next > end => None,
        _ => Some(next),
    }
}

/// The next `n` fire times of `row` in its zone and in UTC, from its
/// cursor.
pub fn next_fires(row: &ScheduleRow, n: usize) -> Vec<subjects::schedules::NextFire> {
    let mut out = Vec::new();
    let (Some(first), Some(cron)) = (row.next_fire_at, Rules::cron_of(row)) else {
        return out;
    };
    let mut at = Some(first);
    while let Some(t) = at.filter(|_| out.len() < n) {
        out.push(subjects::schedules::NextFire {
            local: to_chrono(t)
                .with_timezone(&cron.zone())
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            utc: t,
        });
        at = first_after(&cron, t, row.start_at, row.end_at);
    }
    out
}

/// The scheduler's [`FireRules`]: cron times from the expression, fires
/// admitted like any submission.
/// An expression and zone as stored, and what they parse to.
type Parsed = (String, String, Arc<CronSchedule>);

#[derive(Clone)]
pub struct Rules {
    pub admission: admission::Rules,
    pub store: Store,
    /// Parsed expressions by schedule, with the text they came from.
    cache: Arc<Mutex<HashMap<Uuid, Parsed>>>,
}

impl Rules {
    pub fn new(admission: admission::Rules, store: Store) -> Rules {
        Rules {
            admission,
            store,
            cache: Arc::default(),
        }
    }

    /// `s`'s expression, parsed once while it stays the same.
    fn cached(&self, s: &ScheduleRow) -> Option<Arc<CronSchedule>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cron, zone, parsed)) = cache.get(&s.id) {
            if *cron == s.cron && *zone == s.timezone {
                return Some(parsed.clone());
            }
        }
        let parsed = Arc::new(Self::cron_of(s)?);
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(s.id, (s.cron.clone(), s.timezone.clone(), parsed.clone()));
        Some(parsed)
    }

    /// Parse `s`'s expression (checked when it was stored).
    pub fn cron_of(s: &ScheduleRow) -> Option<CronSchedule> {
        match CronSchedule::parse(&s.cron, &s.timezone) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(schedule = %s.id, error = %e, "a stored schedule does not parse");
                None
            }
        }
    }
}

impl FireRules for Rules {
    fn next_after(&self, s: &ScheduleRow, after: OffsetDateTime) -> Option<OffsetDateTime> {
        first_after(&*self.cached(s)?, after, s.start_at, s.end_at)
    }

    async fn admit(
        &self,
        s: &ScheduleRow,
        fire_at: OffsetDateTime,
    ) -> store::Result<Result<NewTarget, String>> {
        let zone = s.timezone.parse().unwrap_or(chrono_tz::UTC);
        let rendered = render(&s.template, fire_at, zone, s.id, &s.name);
        let target = match admit_value(&self.admission, s.target, &rendered, &s.tenant) {
            Ok(t) => t,
            Err(why) => return Ok(Err(why)),
        };
        if let NewTarget::Task(t) = &target {
            match admission::check_task_employee(&self.store, t).await {
                Ok(()) => {}
                Err(admission::Refused::Rejected(r)) => return Ok(Err(r.reason)),
                // The transaction rolls back and the fire is tried again.
                Err(admission::Refused::Store(e)) => return Err(e),
            }
        }
        Ok(Ok(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_take_seconds_or_a_unit() {
        assert_eq!(
            parse_span(&Span::Seconds(90), "w"),
            Ok(Duration::from_secs(90))
        );
        assert_eq!(
            parse_span(&Span::Text("500ms".into()), "w"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            parse_span(&Span::Text("10m".into()), "w"),
            Ok(Duration::from_secs(600))
        );
        assert_eq!(
            parse_span(&Span::Text("2h".into()), "w"),
            Ok(Duration::from_secs(7200))
        );
        assert_eq!(
            parse_span(&Span::Text("1d".into()), "w"),
            Ok(Duration::from_secs(86_400))
        );
        assert!(parse_span(&Span::Text("5 weeks".into()), "w")
            .expect_err("refused")
            .contains("unit"));
        assert!(parse_span(&Span::Text("soon".into()), "w")
            .expect_err("refused")
            .contains("not a length of time"));
    }

    #[test]
    fn the_fire_fills_every_string_of_the_template() {
        let t = serde_json::json!({"role": "shell", "input": {"command": "echo {{fire_date}} {{fire_at}}", "n": 1},
                                   "tags": ["{{schedule_name}}", "{{fire_at_local}}"]});
        let at = OffsetDateTime::from_unix_timestamp(1_772_953_200).expect("a time"); // 2026-03-08T07:00:00Z
        let v = render(&t, at, chrono_tz::America::New_York, Uuid::nil(), "news");
        assert_eq!(
            v["input"]["command"],
            "echo 2026-03-08 2026-03-08T07:00:00Z"
        );
        assert_eq!(v["input"]["n"], 1);
        assert_eq!(v["tags"][0], "news");
        assert_eq!(v["tags"][1], "2026-03-08T03:00:00-04:00");
    }

    #[test]
    fn start_and_end_bound_the_fires() {
        let c = CronSchedule::parse("0 * * * *", "UTC").expect("valid");
        let t = |s: &str| {
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .expect("a time")
        };
        // A fire exactly at start_at counts.
        assert_eq!(
            first_after(
                &c,
                t("2026-01-01T00:00:00Z"),
                Some(t("2026-01-01T05:00:00Z")),
                None
            ),
            Some(t("2026-01-01T05:00:00Z"))
        );
        assert_eq!(
            first_after(
                &c,
                t("2026-01-01T05:00:00Z"),
                None,
                Some(t("2026-01-01T05:59:59Z"))
            ),
            None
        );
        assert_eq!(
            first_after(
                &c,
                t("2026-01-01T05:00:00Z"),
                None,
                Some(t("2026-01-01T06:00:00Z"))
            ),
            Some(t("2026-01-01T06:00:00Z"))
        );
    }
}
