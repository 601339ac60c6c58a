//! `GET /metrics`: the process's own metrics (the scheduler's fires, the
//! HTTP API's requests) and the fleet's figures — streams, consumers,
//! dead letters from JetStream; tasks, goals, patrol actions and reviews
//! from Postgres. The fleet's figures are read at most every
//! [`Collector::ttl`], however often Prometheus scrapes.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures_util::TryStreamExt;
use store::Store;
use subjects::stream;
use telemetry::{
    ConsumerLabels, PatrolLabels, PoolLabels, SourceLabels, StateLabels, StreamLabels, TaskLabels,
    VerdictLabels,
};
use time::OffsetDateTime;

pub struct Collector {
    store: Store,
    js: jetstream::Context,
    pub ttl: Duration,
    last: tokio::sync::Mutex<Option<Instant>>,
}

fn age(t: OffsetDateTime) -> f64 {
    (OffsetDateTime::now_utc() - t).as_seconds_f64().max(0.0)
}

/// A consumer's figures, and the age of its oldest unacknowledged message.
struct ConsumerFigures {
    info: consumer::Info,
    backlog_age: f64,
}

impl Collector {
    pub fn new(store: Store, js: jetstream::Context, ttl: Duration) -> Collector {
        Collector {
            store,
            js,
            ttl,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The text of a scrape, the fleet's figures refreshed when stale.
    pub async fn scrape(&self) -> String {
        let mut last = self.last.lock().await;
        if last.is_none_or(|t| t.elapsed() >= self.ttl) {
            self.refresh().await;
            *last = Some(Instant::now());
        }
        telemetry::encode()
    }

    async fn consumers_of(
        &self,
        s: &jetstream::stream::Stream,
        first_ts: OffsetDateTime,
    ) -> Result<Vec<ConsumerFigures>, async_nats::Error> {
        let infos: Vec<consumer::Info> = s.consumers().try_collect().await?;
        let mut out = Vec::with_capacity(infos.len());
        for info in infos {
            let unacked = info.num_pending + info.num_ack_pending as u64;
            let mut backlog_age = 0.0;
            let by_message =
                subjects::metrics::BACKLOG_BY_MESSAGE.contains(&info.stream_name.as_str());
            if unacked > 0 && !by_message {
                backlog_age = age(first_ts);
            } else if unacked > 0 {
                let filter = if info.config.filter_subject.is_empty() {
                    ">".to_string()
                } else {
                    info.config.filter_subject.clone()
                };
                // The first message past the ack floor of the consumer's
                // subjects: the oldest it has not finished with.
                match s
                    .raw_message_builder()
                    .sequence(info.ack_floor.stream_sequence + 1)
                    .next_by_subject(filter)
                    .send()
                    .await
                {
                    Ok(m) => backlog_age = age(m.time),
                    Err(e) => {
                        tracing::debug!(consumer = %info.name, error = %e, "no oldest message")
                    }
                }
            }
            out.push(ConsumerFigures { info, backlog_age });
        }
        Ok(out)
    }

    async fn refresh(&self) {
        let started = Instant::now();
        let f = &telemetry::get().fleet;
        let mut streams = Vec::new();
        for name in stream::ALL {
            let got = async {
                let mut s = self.js.get_stream(name).await?;
                let info = s.info().await?.clone();
                let consumers = self.consumers_of(&s, info.state.first_timestamp).await?;
                // Messages by subject: dead letters by source, and work by
                // pool (with the age of each pool's oldest).
                let mut by_subject = Vec::new();
                let filter = match name {
                    stream::DLQ => Some(subjects::subject::dlq_all()),
                    stream::WORK => Some(subjects::subject::work_all()),
                    _ => None,
                };
                if let Some(filter) = filter {
                    let i = s.info_with_subjects(filter).await?;
                    let counts: std::collections::HashMap<String, usize> = i.try_collect().await?;
                    for (subject, n) in counts {
                        let oldest = if name == stream::WORK && n > 0 {
                            s.get_first_raw_message_by_subject(&subject, info.state.first_sequence)
                                .await
                                .ok()
                                .map(|m| age(m.time))
                        } else {
                            None
                        };
                        by_subject.push((subject, n, oldest));
                    }
                }
                Ok::<_, async_nats::Error>((info, consumers, by_subject))
            }
            .await;
            match got {
                Ok(x) => streams.push(x),
                Err(e) => {
                    tracing::warn!(stream = name, error = %e, "metrics: cannot read a stream")
                }
            }
        }
        let counts = self.store.fleet_counts().await;
        if let Err(e) = &counts {
            tracing::warn!(error = %e, "metrics: cannot count in Postgres");
        }
        f.clear();
        // What may have no rows yet shows as 0, not as no data.
        for source in [
            subjects::subject::DLQ_INTAKE,
            subjects::subject::DLQ_WORK,
            subjects::subject::DLQ_LOOP,
        ] {
            f.dlq_messages
                .get_or_create(&SourceLabels {
                    source: source.to_string(),
                })
                .set(0);
        }
        for state in subjects::goals::GoalState::ALL {
            f.goals
                .get_or_create(&StateLabels {
                    state: state.as_str().to_string(),
                })
                .set(0);
        }
        for verdict in ["approved", "rejected"] {
            f.reviews
                .get_or_create(&VerdictLabels {
                    verdict: verdict.to_string(),
                })
                .set(0);
        }
        f.patrol_actions
            .get_or_create(&PatrolLabels {
                rule: "stale_heartbeat".into(),
                action: "requeue".into(),
            })
            .set(0);
        for (info, consumers, by_subject) in &streams {
            let sl = StreamLabels {
                stream: info.config.name.clone(),
            };
            f.stream_messages
                .get_or_create(&sl)
                .set(info.state.messages as i64);
            f.stream_bytes
                .get_or_create(&sl)
                .set(info.state.bytes as i64);
            let empty = info.state.messages == 0;
            f.stream_first_age.get_or_create(&sl).set(if empty {
                0.0
            } else {
                age(info.state.first_timestamp)
            });
            f.stream_last_age
                .get_or_create(&sl)
                .set(if info.state.last_sequence == 0 {
                    0.0
                } else {
                    age(info.state.last_timestamp)
                });
            for c in consumers {
                let i = &c.info;
                let labels = ConsumerLabels {
                    stream: i.stream_name.clone(),
                    consumer: i.name.clone(),
                    pool: i.name.strip_prefix("worker-").unwrap_or("").to_string(),
                };
                f.consumer_pending
                    .get_or_create(&labels)
                    .set(i.num_pending as i64);
                f.consumer_ack_pending
                    .get_or_create(&labels)
                    .set(i.num_ack_pending as i64);
                f.consumer_redelivered
                    .get_or_create(&labels)
                    .set(i.num_redelivered as i64);
                f.consumer_waiting
                    .get_or_create(&labels)
                    .set(i.num_waiting as i64);
                f.consumer_lag
                    .get_or_create(&labels)
                    .set((i.num_pending + i.num_ack_pending as u64) as i64);
                f.consumer_backlog_age
                    .get_or_create(&labels)
                    .set(c.backlog_age);
                if !labels.pool.is_empty() {
                    // A served pool with nothing waiting: 0.
                    let pool = PoolLabels {
                        pool: labels.pool.clone(),
                    };
                    f.pool_backlog.get_or_create(&pool).inc_by(0);
                    f.pool_backlog_age.get_or_create(&pool).inc_by(0.0);
                }
            }
            for (subject, n, oldest) in by_subject {
                let last = subject.rsplit('.').next().unwrap_or(subject).to_string();
                if info.config.name == stream::DLQ {
                    f.dlq_messages
                        .get_or_create(&SourceLabels { source: last })
                        .inc_by(*n as i64);
                } else {
                    let pool = PoolLabels { pool: last };
                    f.pool_backlog.get_or_create(&pool).inc_by(*n as i64);
                    f.pool_backlog_age
                        .get_or_create(&pool)
                        .set(oldest.unwrap_or(0.0));
                }
            }
        }
        if let Ok(c) = counts {
            for (state, role, n) in c.tasks {
                f.tasks.get_or_create(&TaskLabels { state, role }).set(n);
            }
            for (state, n) in c.goals {
                f.goals.get_or_create(&StateLabels { state }).set(n);
            }
            for (rule, action, n) in c.patrol_actions {
                f.patrol_actions
                    .get_or_create(&PatrolLabels { rule, action })
                    .set(n);
            }
            for (verdict, n) in c.reviews {
                f.reviews.get_or_create(&VerdictLabels { verdict }).set(n);
            }
        }
        f.refresh_seconds.set(started.elapsed().as_secs_f64());
    }
}
