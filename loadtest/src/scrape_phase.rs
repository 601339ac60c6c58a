//! The cost of observability: a Prometheus-style scrape of `/metrics`
//! every second while the rounds run (the bench's Colony reads the streams
//! and Postgres on every scrape: no cache), and the time one scrape takes
//! with `--scrape-consumers` extra durable consumers on a stream.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::consumer::pull;
use tokio_util::sync::CancellationToken;

use crate::colony_phase::ColonyBench;
use crate::stats::percentile;

/// Scrapes in the background until dropped.
pub struct Scraper {
    stop: CancellationToken,
    times: Arc<Mutex<Vec<f64>>>,
    errors: Arc<Mutex<usize>>,
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn scrape(http: &reqwest::Client, base: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let resp = http.get(format!("{base}/metrics")).send().await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "scrape answered {}",
        resp.status()
    );
    let text = resp.text().await?;
    anyhow::ensure!(text.ends_with("# EOF\n"), "a scrape without its end");
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

impl Scraper {
    pub fn start(colony: &ColonyBench, every: Duration) -> Scraper {
        let (http, base) = colony.http();
        let (http, base) = (http.clone(), base.to_string());
        let stop = CancellationToken::new();
        let times = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(0));
        let (t, e, s) = (times.clone(), errors.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = s.cancelled() => return,
                }
                match scrape(&http, &base).await {
                    Ok(ms) => t.lock().expect("times").push(ms),
                    Err(err) => {
                        tracing::warn!(error = %err, "scrape failed");
                        *e.lock().expect("errors") += 1;
                    }
                }
            }
        });
        Scraper {
            stop,
            times,
            errors,
        }
    }

    /// What the background scrapes measured.
    pub fn report(&self) -> String {
        let mut t = self.times.lock().expect("times").clone();
        t.sort_by(f64::total_cmp);
        format!(
            "scrapes during the rounds (every 1 s, no cache): {} scrapes, {} failed, p50 {:.1} ms, p99 {:.1} ms",
            t.len(),
            self.errors.lock().expect("errors"),
            percentile(&t, 50.0),
            percentile(&t, 99.0)
        )
    }
}

/// The time a scrape takes with `n` more durable consumers on a stream.
pub async fn with_consumers(colony: &ColonyBench, n: usize) -> anyhow::Result<String> {
    let nats = colony::connect_nats(&colony.settings, subjects::auth::Kind::Admin).await?;
    let js = async_nats::jetstream::new(nats);
    let stream = js
        .get_stream(subjects::stream::EVENTS)
        .await
        .context("the EVENTS stream")?;
    let names: Vec<String> = (0..n).map(|i| format!("scrape-bench-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        stream
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subjects::subject::events_of_tenant(&format!("scrapebench{i}")),
                ..Default::default()
            })
            .await
            .context("cannot make a bench consumer")?;
    }
    let (http, base) = colony.http();
    let mut t = Vec::new();
    for _ in 0..20 {
        t.push(scrape(http, base).await?);
    }
    for name in &names {
        let _ = stream.delete_consumer(name).await;
    }
    t.sort_by(f64::total_cmp);
    Ok(format!(
        "scrape with {} more durable consumers (no cache): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} scrapes",
        n,
        percentile(&t, 50.0),
        percentile(&t, 99.0),
        t.last().copied().unwrap_or(f64::NAN),
        t.len()
    ))
}
