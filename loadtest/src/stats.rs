//! Samples and what is reported about them.

use std::fmt;
use std::time::Instant;

/// One item: (start, completion) or why it failed.
pub type Sample = Result<(Instant, Instant), String>;

/// What one phase measured.
#[derive(Clone, Debug)]
pub struct Summary {
    pub name: &'static str,
    pub ok: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    /// First counted start to last counted completion.
    pub secs: f64,
    pub tps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Where the time went, when the phase could tell.
    pub stages: Option<String>,
}

impl Summary {
    pub fn of(name: &'static str, samples: &[Sample]) -> Summary {
        let mut lat = Vec::with_capacity(samples.len());
        let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
        let mut failed = 0;
        let mut first_error = None;
        for s in samples {
            match s {
                Ok((start, end)) => {
                    lat.push(end.saturating_duration_since(*start).as_secs_f64() * 1e3);
                    first = Some(first.map_or(*start, |f| f.min(*start)));
                    last = Some(last.map_or(*end, |l| l.max(*end)));
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| e.clone());
                }
            }
        }
        lat.sort_by(f64::total_cmp);
        let secs = match (first, last) {
            (Some(f), Some(l)) => l.saturating_duration_since(f).as_secs_f64(),
            _ => 0.0,
        };
        let ok = lat.len();
        Summary {
            name,
            ok,
            failed,
            first_error,
            secs,
            tps: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            p50_ms: percentile(&lat, 50.0),
            p99_ms: percentile(&lat, 99.0),
            max_ms: lat.last().copied().unwrap_or(f64::NAN),
            stages: None,
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: tasks {}, failed {}, seconds {:.2}, tasks/s {:.2}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.name,
            self.ok,
            self.failed,
            self.secs,
            self.tps,
            self.p50_ms,
            self.p99_ms,
            self.max_ms
        )
    }
}

/// Nearest-rank percentile of sorted values (NaN when there are none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Per-stage medians: `rows[i][j]` is stage `j` of item `i` in ms.
pub fn stage_line(title: &str, names: &[&str], rows: &[Vec<f64>]) -> Option<String> {
    if rows.is_empty() {
        return None;
    }
    let parts: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(j, name)| {
            let mut col: Vec<f64> = rows.iter().filter_map(|r| r.get(j).copied()).collect();
            col.sort_by(f64::total_cmp);
            format!("{name} {:.2}", percentile(&col, 50.0))
        })
        .collect();
    Some(format!(
        "{title} (p50 ms, {} tasks): {}",
        rows.len(),
        parts.join(", ")
    ))
}

/// Keep `concurrency` calls of `one` in flight until `n` have finished;
/// their results in completion order. `what` names an item in the error
/// of a panicked driver.
pub async fn keep_in_flight<T, F, Fut>(
    n: usize,
    concurrency: usize,
    what: &str,
    one: F,
) -> anyhow::Result<Vec<T>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    use anyhow::Context;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = slots.clone().acquire_owned().await?;
        let item = one();
        set.spawn(async move {
            let r = item.await;
            drop(permit);
            r
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        out.push(r.with_context(|| format!("a {what} driver panicked"))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn summary_counts_wall_time_of_successes() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let s = Summary::of(
            "x",
            &[
                Ok((t, t + ms(10))),
                Ok((t + ms(5), t + ms(1000))),
                Err("boom".into()),
            ],
        );
        assert_eq!((s.ok, s.failed), (2, 1));
        assert!((s.secs - 1.0).abs() < 1e-9);
        assert!((s.tps - 2.0).abs() < 1e-9);
        assert_eq!(s.first_error.as_deref(), Some("boom"));
    }
}
