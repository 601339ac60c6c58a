//! Cron schedules in IANA time zones, with an explicit policy for the days
//! a zone's clock jumps.
//!
//! An expression is standard cron: 5 fields (`min hour dom month dow`), or
//! 6 with seconds first; month and day names (`JAN`, `MON-FRI`); day of
//! week 0–7 with both 0 and 7 Sunday; and `@yearly`, `@annually`,
//! `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`. Parsing is the
//! `cron` crate's; this module turns our dialect into its (it wants
//! seconds and counts Sunday as 1) and places each fire in the zone.
//!
//! **The DST policy.** An expression that names its hours (the hour field
//! is not `*`) follows the wall clock:
//! - a local time the clock skips (02:30 on a spring-forward day) fires
//!   once, when the gap ends (03:00);
//! - a local time the clock repeats (01:30 on a fall-back day) fires once,
//!   at its first occurrence.
//!
//! An expression that fires every hour or more often (`*` hours, or
//! `*/1`, `0-23`) follows
//! real time instead: every instant whose local time matches fires, so an
//! every-15-minutes schedule keeps its pace through the repeated hour (both
//! passes) and has nothing to fire in the skipped one.

pub mod run;
pub mod spec;

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use sha2::{Digest, Sha256};

/// Why a schedule was refused: one sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("cron expression {expr:?} is not valid: {why}")]
    Expression { expr: String, why: String },
    #[error(
        "time zone {0:?} is not an IANA zone name such as Europe/Berlin, America/New_York or UTC"
    )]
    Zone(String),
}

/// A parsed schedule: when it fires, in which zone.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    expr: String,
    schedule: cron::Schedule,
    zone: Tz,
    /// The hour field is `*`: real-time semantics (see the module docs).
    every_hour: bool,
}

const DAYS: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];

/// A day-of-week field with numbers 0–7 (0 and 7 Sunday) as names, which
/// the `cron` crate reads unambiguously.
fn days_by_name(field: &str) -> Result<String, String> {
    let day = |s: &str| -> Result<String, String> {
        match s.parse::<usize>() {
            Ok(n) if n <= 7 => Ok(DAYS[n].to_string()),
            Ok(n) => Err(format!("day of week {n} is out of range 0-7")),
            Err(_) => Ok(s.to_string()),
        }
    };
    let mut out = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        let mapped = match range.split_once('-') {
            // `FRI-7` would wrap past Saturday: end it there, add Sunday.
            Some((a, "7")) if step.is_none() => format!("{}-SAT,SUN", day(a)?),
            Some((a, b)) => format!("{}-{}", day(a)?, day(b)?),
            None if range == "*" => "*".to_string(),
            None => day(range)?,
        };
        out.push(match step {
            Some(s) => format!("{mapped}/{s}"),
            None => mapped,
        });
    }
    Ok(out.join(","))
}

/// The `cron` crate's message (the expression, a caret, then why) as the
/// end of one sentence.
fn one_line(msg: &str) -> String {
    let why = msg
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && *l != "^")
        .unwrap_or("it does not parse");
    why.replace(". (", " (")
        .replace(".)", ")")
        .trim_end_matches('.')
        .to_string()
}

impl CronSchedule {
    /// `expr` in `zone` (an IANA name).
    pub fn parse(expr: &str, zone: &str) -> Result<CronSchedule, Error> {
        let bad = |why: String| Error::Expression {
            expr: expr.to_string(),
            why,
        };
        let zone: Tz = zone.parse().map_err(|_| Error::Zone(zone.to_string()))?;
        let trimmed = expr.trim();
        let six = match trimmed.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 0 1 1 *".to_string(),
            "@monthly" => "0 0 0 1 * *".to_string(),
            "@weekly" => "0 0 0 * * SUN".to_string(),
            "@daily" | "@midnight" => "0 0 0 * * *".to_string(),
            "@hourly" => "0 0 * * * *".to_string(),
            m if m.starts_with('@') => {
                return Err(bad(
                    "use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
                        .into(),
                ))
            }
            _ => {
                let mut fields: Vec<String> =
                    trimmed.split_whitespace().map(str::to_string).collect();
                match fields.len() {
                    5 => fields.insert(0, "0".into()),
                    6 => {}
                    n => {
                        return Err(bad(format!(
                            "it has {n} fields; give 5 (minute hour day month weekday) or 6 (with seconds first)"
                        )))
                    }
                }
                fields[5] = days_by_name(&fields[5]).map_err(bad)?;
                fields.join(" ")
            }
        };
        let schedule: cron::Schedule = six
            .parse()
            .map_err(|e: cron::error::Error| bad(one_line(&e.to_string())))?;
        let every_hour = matches!(
            six.split_whitespace().nth(2),
            Some("*" | "*/1" | "0-23" | "0-23/1")
        );
        Ok(CronSchedule {
            expr: trimmed.to_string(),
            schedule,
            zone,
            every_hour,
        })
    }

    pub fn expression(&self) -> &str {
        &self.expr
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The instants a local wall-clock time stands for under the policy.
    fn place(&self, local: NaiveDateTime) -> Vec<DateTime<Utc>> {
        use chrono::LocalResult;
        match self.zone.from_local_datetime(&local) {
            LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
            LocalResult::Ambiguous(first, second) => {
                if self.every_hour {
                    vec![first.with_timezone(&Utc), second.with_timezone(&Utc)]
                } else {
                    vec![first.with_timezone(&Utc)]
                }
            }
            LocalResult::None if self.every_hour => Vec::new(),
            // Skipped: fire when the gap ends (its first valid minute).
            LocalResult::None => {
                use chrono::Timelike;
                let mut t = local
                    .with_second(0)
                    .unwrap_or(local)
                    .with_nanosecond(0)
                    .unwrap_or(local);
                for _ in 0..(26 * 60) {
                    t += chrono::Duration::minutes(1);
                    match self.zone.from_local_datetime(&t) {
                        LocalResult::Single(x) | LocalResult::Ambiguous(x, _) => {
                            return vec![x.with_timezone(&Utc)]
                        }
                        LocalResult::None => {}
                    }
                }
                Vec::new()
            }
        }
    }

    /// The first fire strictly after `after` (none: the expression never
    /// fires again).
    ///
    /// Within one UTC offset, later wall-clock times are later instants
    /// (a skipped time moved to the gap's end keeps that order), so the
    /// first cron time after `after`'s wall-clock time that places after
    /// `after` is the answer. Near a change of offset (a repeated hour),
    /// the same walk starts from `after`'s wall-clock time in each offset
    /// in effect around it, and the earliest answer wins: a few cron times
    /// each, not every one of the hours around the change.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        use chrono::Offset;
        let offset = |t: DateTime<Utc>| t.with_timezone(&self.zone).offset().fix();
        let window = chrono::Duration::hours(3);
        let mut offsets = vec![offset(after)];
        for o in [offset(after - window), offset(after + window)] {
            if !offsets.contains(&o) {
                offsets.push(o);
            }
        }
        let mut best: Option<DateTime<Utc>> = None;
        for o in offsets {
            let start =
                after.naive_utc() + chrono::Duration::seconds(i64::from(o.local_minus_utc()));
            // Bounded: an hour-named, every-second expression walks at most
            // the hour it repeats.
            for candidate in self
                .schedule
                .after(&Utc.from_utc_datetime(&start))
                .take(20_000)
            {
                let first = self
                    .place(candidate.naive_utc())
                    .into_iter()
                    .filter(|t| *t > after)
                    .min();
                if let Some(t) = first {
                    if best.is_none_or(|b| t < b) {
                        best = Some(t);
                    }
                    break;
                }
            }
        }
        best
    }

    /// The next `n` fires after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }
}

/// A schedule's own offset in `[0, bound)`, the same every time for the
/// same `key`: many schedules on one expression do not fire in the same
/// instant, and a restart does not move any of them.
pub fn jitter(key: &[u8], bound: Duration) -> Duration {
    if bound.is_zero() {
        return Duration::ZERO;
    }
    let h = Sha256::digest(key);
    let n = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
    let ms = bound.as_millis().max(1) as u64;
    Duration::from_millis(n % ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("a time")
            .with_timezone(&Utc)
    }

    fn next(expr: &str, zone: &str, after: &str, n: usize) -> Vec<String> {
        CronSchedule::parse(expr, zone)
            .expect("valid")
            .upcoming(utc(after), n)
            .iter()
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .collect()
    }

    #[test]
    fn a_skipped_local_time_fires_once_when_the_gap_ends() {
        // New York springs forward on 2026-03-08 at 02:00 EST → 03:00 EDT:
        // 02:30 does not exist that day, so it fires at 03:00 EDT (07:00Z).
        assert_eq!(
            next("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 3),
            [
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z",
                "2026-03-10T06:30:00Z"
            ]
        );
        // An every-30-minutes-past-1-and-2 schedule does not fire twice at
        // 03:00 (02:30 moved there, and nothing else is due then).
        assert_eq!(
            next(
                "0,30 1-2 * * *",
                "America/New_York",
                "2026-03-08T06:15:00Z",
                3
            ),
            [
                "2026-03-08T06:30:00Z", // 01:30 EST
                "2026-03-08T07:00:00Z", // 02:00 and 02:30 → 03:00 EDT, once
                "2026-03-09T05:00:00Z", // 01:00 EDT
            ]
        );
    }

    #[test]
    fn every_second_keeps_real_time_through_the_repeated_hour() {
        // 01:59:59 EDT → 01:00:00 EST is the next second, not 02:00.
        assert_eq!(
            next("* * * * * *", "America/New_York", "2026-11-01T05:59:59Z", 2),
            ["2026-11-01T06:00:00Z", "2026-11-01T06:00:01Z"]
        );
        // An hour-named every-second expression in the second pass of its
        // hour: that hour's fires were its first pass; next is tomorrow.
        assert_eq!(
            next("* * 1 * * *", "America/New_York", "2026-11-01T06:10:00Z", 1),
            ["2026-11-02T06:00:00Z"]
        );
        // `*/1` hours is every hour too: both passes of 01:30.
        assert_eq!(
            next(
                "30 */1 * * *",
                "America/New_York",
                "2026-11-01T05:00:00Z",
                2
            ),
            ["2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z"]
        );
    }

    #[test]
    fn a_repeated_local_time_fires_once_at_its_first_occurrence() {
        // New York falls back on 2026-11-01 at 02:00 EDT → 01:00 EST.
        assert_eq!(
            next("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
        // From between the two 01:30s, the second is not a fire.
        assert_eq!(
            next("30 1 * * *", "America/New_York", "2026-11-01T05:45:00Z", 1),
            ["2026-11-02T06:30:00Z"]
        );
    }

    #[test]
    fn sub_hourly_schedules_keep_real_time_through_both_transitions() {
        // Both passes of the repeated hour.
        assert_eq!(
            next(
                "*/30 * * * *",
                "America/New_York",
                "2026-11-01T04:45:00Z",
                5
            ),
            [
                "2026-11-01T05:00:00Z", // 01:00 EDT
                "2026-11-01T05:30:00Z", // 01:30 EDT
                "2026-11-01T06:00:00Z", // 01:00 EST
                "2026-11-01T06:30:00Z", // 01:30 EST
                "2026-11-01T07:00:00Z", // 02:00 EST
            ]
        );
        // Nothing in the skipped hour; the pace goes on.
        assert_eq!(
            next(
                "*/30 * * * *",
                "America/New_York",
                "2026-03-08T06:15:00Z",
                3
            ),
            [
                "2026-03-08T06:30:00Z", // 01:30 EST
                "2026-03-08T07:00:00Z", // 03:00 EDT
                "2026-03-08T07:30:00Z", // 03:30 EDT
            ]
        );
    }

    #[test]
    fn names_macros_seconds_and_sunday_as_0_or_7() {
        // 2026-12-04 is a Friday.
        assert_eq!(
            next("0 9 * * 1-5", "UTC", "2026-12-04T10:00:00Z", 2),
            ["2026-12-07T09:00:00Z", "2026-12-08T09:00:00Z"]
        );
        assert_eq!(
            next("0 9 * * MON-FRI", "UTC", "2026-12-04T10:00:00Z", 1),
            ["2026-12-07T09:00:00Z"]
        );
        for sunday in ["0 0 * * 0", "0 0 * * 7", "0 0 * * SUN", "@weekly"] {
            assert_eq!(
                next(sunday, "UTC", "2026-12-01T00:00:00Z", 1),
                ["2026-12-06T00:00:00Z"],
                "{sunday}"
            );
        }
        assert_eq!(
            next("0 0 * * 5-7", "UTC", "2026-12-04T01:00:00Z", 3),
            [
                "2026-12-05T00:00:00Z",
                "2026-12-06T00:00:00Z",
                "2026-12-11T00:00:00Z"
            ]
        );
        assert_eq!(
            next("@daily", "Europe/Berlin", "2026-12-01T12:00:00Z", 1),
            ["2026-12-01T23:00:00Z"]
        );
        assert_eq!(
            next("@hourly", "UTC", "2026-12-01T12:00:00Z", 1),
            ["2026-12-01T13:00:00Z"]
        );
        assert_eq!(
            next("*/20 * * * * *", "UTC", "2026-12-01T12:00:05Z", 2),
            ["2026-12-01T12:00:20Z", "2026-12-01T12:00:40Z"]
        );
        assert_eq!(
            next("0 0 1 JAN *", "Asia/Kolkata", "2026-06-01T00:00:00Z", 1),
            ["2026-12-31T18:30:00Z"]
        );
    }

    #[test]
    fn bad_input_is_one_sentence() {
        let e = CronSchedule::parse("61 * * * *", "UTC").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cron expression \"61 * * * *\" is not valid"),
            "{e}"
        );
        let e = CronSchedule::parse("* * *", "UTC").unwrap_err();
        assert!(e.to_string().contains("it has 3 fields"), "{e}");
        let e = CronSchedule::parse("0 0 * * 8", "UTC").unwrap_err();
        assert!(e.to_string().contains("day of week 8"), "{e}");
        let e = CronSchedule::parse("@sometimes", "UTC").unwrap_err();
        assert!(e.to_string().contains("use @yearly"), "{e}");
        let e = CronSchedule::parse("@daily", "Mars/Olympus").unwrap_err();
        assert_eq!(
            e.to_string(),
            "time zone \"Mars/Olympus\" is not an IANA zone name such as Europe/Berlin, America/New_York or UTC"
        );
    }

    #[test]
    fn jitter_is_stable_bounded_and_spread() {
        let b = Duration::from_secs(30);
        assert_eq!(jitter(b"a", b), jitter(b"a", b));
        assert!(jitter(b"a", b) < b);
        assert_eq!(jitter(b"a", Duration::ZERO), Duration::ZERO);
        let distinct: std::collections::HashSet<_> =
            (0..100u32).map(|i| jitter(&i.to_le_bytes(), b)).collect();
        assert!(distinct.len() > 90, "{}", distinct.len());
    }
}
