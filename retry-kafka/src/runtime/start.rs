//! [`App::start`]: provisioning, one consumer task per level, and the tasks that serve the
//! app (the metrics endpoint, the lag reporter).

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::app::{App, AppHandler};
use super::consumer::key_holds::{KeyHolds, Stage, Unsettled};
use super::consumer::outputs::PublishOutputs;
#[cfg(feature = "prometheus")]
use super::endpoint;
use super::lag::{report_lag, Lag, LagPace};
use super::running::{Running, Services};
use super::{consumer, provision};
use crate::backend::{Backend, Subscription, Topic, TopicRole};
use crate::breaker::CircuitBreaker;
use crate::error::{ConfigError, Error};
use crate::held_keys::HoldSources;
use crate::metrics::LevelMetrics;
use crate::policy::{derived_group, RetryPolicy};
use crate::rate::AttemptRate;
use crate::shutdown::Shutdown;

impl<B: Backend> App<B> {
    /// Where a key-ordered handler's holds are counted from: the records of its retry levels
    /// and its held topic not acknowledged yet, in the partitions asked for.
    fn unsettled(&self, sources: &HoldSources) -> Unsettled {
        let out: Vec<(Topic, String, Stage)> = sources
            .topics()
            .map(|(topic, group, followers)| {
                let stage = if followers { Stage::Held } else { Stage::Retry };
                (topic, group.to_owned(), stage)
            })
            .collect();
        let backend = self.backend.clone();
        Arc::new(move |partitions: Vec<u32>, only: Option<Stage>| {
            let (backend, out) = (backend.clone(), out.clone());
            Box::pin(async move {
                let mut found = Vec::with_capacity(out.len());
                for (topic, group, stage) in out.iter().filter(|o| only.is_none_or(|only| o.2 == only)) {
                    found.push((*stage, backend.unacknowledged(topic, group, &partitions).await?));
                }
                Ok(found)
            })
        })
    }

    /// Refuses a key-ordered handler on a backend that cannot keep its order, before any I/O.
    fn check_key_ordering(&self) -> Result<(), ConfigError> {
        let ordered = self.handlers.iter().find(|h| h.topology.held.is_some());
        match ordered {
            Some(handler) if !self.backend.keeps_partitions_together() => Err(ConfigError::KeyOrdering {
                handler: handler.spec.name().to_owned(),
                reason: format!(
                    "cannot run on the {} backend: it keeps each key's holds in the process that \
                     consumes the key's partition on every level, which the Kafka backend, Redis \
                     with leases (not `unordered`), either of them with retries on Kafka, Redis or \
                     PostgreSQL (`Tiered`) and the in-process broker (`memory`) guarantee",
                    self.backend.name()
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Creates the topics, joins every group and starts the consumers; returns once all run.
    pub async fn start(&self) -> Result<Running, Error> {
        self.check_key_ordering()?;
        // First, so probes answer while topics are provisioned and groups joined, and so the
        // level handles below register with the recorder.
        let mut services = Services::default();
        #[cfg(feature = "prometheus")]
        let mut metrics_addr = None;
        #[cfg(feature = "prometheus")]
        if let Some(addr) = self.metrics_addr {
            let recorder = endpoint::install_recorder()?;
            let listener = endpoint::bind(addr).await?;
            let bound = listener.local_addr().unwrap_or(addr);
            metrics_addr = Some(bound);
            tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
            let (health, stop) = (self.health.clone(), services.stop.clone());
            services
                .tasks
                .spawn(endpoint::serve(listener, recorder, health, stop));
        }
        // Help texts for whichever recorder is installed (ours above, or the application's).
        crate::metrics::describe();
        for handler in &self.handlers {
            provision::provision(&self.backend, &handler.topology, self.provisioning).await?;
        }
        let shutdown = Shutdown {
            handle: self.shutdown.clone(),
            timeout: self.shutdown_timeout,
        };
        let mut levels = Vec::new();
        // Handlers' outputs, when a consumer does not write them in its transaction.
        let publisher: Arc<dyn PublishOutputs> = Arc::new(self.backend.clone());
        let mut lags = Vec::new();
        // Woken when a level settles messages, so its lag is asked soon after (see `report_lag`).
        let lag_wake = self.lag_interval.map(|_| Arc::new(Notify::new()));
        for AppHandler {
            spec,
            breaker,
            topology,
            counters,
            health,
        } in &self.handlers
        {
            let policy = Arc::new(RetryPolicy::of(spec));
            let main_topic: Arc<str> = topology.main.as_str().into();
            // One limiter for all of the handler's levels: the rate caps its attempts in all.
            let rate = spec.rate().map(|rate| Arc::new(AttemptRate::new(rate)));
            // One breaker too: an outage is the handler's dependency's, not one level's.
            let breaker = breaker.map(|settings| {
                let handles = crate::metrics::breaker_handles(&main_topic, spec.group());
                let breaker = Arc::new(CircuitBreaker::new(
                    settings,
                    spec.name(),
                    &main_topic,
                    spec.group(),
                    handles,
                ));
                counters.watch(breaker.clone());
                for consumer in health.iter() {
                    consumer.watch(breaker.clone());
                }
                breaker
            });
            // A key-ordered handler's levels share its holds, and its held topic has a
            // consumer of its own: its records' first attempts, counted as level 0's.
            let key_holds = HoldSources::of(topology).map(|sources| {
                let handles = crate::metrics::key_hold_handles(&topology.main, spec.group());
                Arc::new(KeyHolds::new(handles, self.unsettled(&sources)))
            });
            let consumed: Vec<(u32, TopicRole, &str, &str)> = (0..=policy.levels())
                .map(|level| {
                    let role = TopicRole::of_level(level);
                    (
                        level,
                        role,
                        topology.level(level),
                        topology.consumer_group(spec.group(), level),
                    )
                })
                .chain(
                    topology
                        .held
                        .as_deref()
                        .map(|held| (0, TopicRole::Held, held, derived_group(held))),
                )
                .collect();
            let mut subscriptions = consumed.iter().map(|&(_, role, topic, group)| Subscription {
                topic: Topic::new(topic, role),
                group: group.to_owned(),
            });
            let consumers = match &key_holds {
                // Every level reads, partition for partition, what the main consumer is
                // assigned: each partition's holds live in one process.
                Some(_) => {
                    let main = subscriptions.next().expect("the main topic is a level");
                    self.backend
                        .subscribe_together(main, subscriptions.collect())
                        .await?
                }
                None => {
                    let mut consumers = Vec::with_capacity(consumed.len());
                    for subscription in subscriptions {
                        consumers.push(self.backend.subscribe(subscription).await?);
                    }
                    consumers
                }
            };
            for (index, ((level, role, topic, group), consumer)) in
                consumed.into_iter().zip(consumers).enumerate()
            {
                let seam_topic = Topic::new(topic, role);
                let metrics = Arc::new(LevelMetrics::new(
                    topology,
                    spec.group(),
                    level,
                    counters.clone(),
                    health[index].clone(),
                    lag_wake.clone(),
                ));
                if lag_wake.is_some() {
                    lags.push(Lag {
                        topic: seam_topic,
                        group: group.to_owned(),
                        metrics: metrics.clone(),
                    });
                }
                let level = consumer::Level {
                    hand_off_window: self.hand_off_window,
                    spec,
                    policy: policy.clone(),
                    topology: topology.clone(),
                    level,
                    topic: topic.into(),
                    main_topic: main_topic.clone(),
                    shutdown: shutdown.clone(),
                    rate: rate.clone(),
                    breaker: breaker.clone(),
                    key_holds: key_holds.clone(),
                    held: role == TopicRole::Held,
                    metrics,
                    publisher: publisher.clone(),
                };
                levels.push((level, consumer));
            }
        }
        let mut tasks = JoinSet::new();
        for (level, consumer) in levels {
            let (topic, group) = (level.topic.to_string(), level.spec.group().to_owned());
            let metrics = level.metrics.clone();
            metrics.health.running();
            tasks.spawn(async move {
                let unfinished = StopReport(Some(metrics));
                let result = level.run(consumer).await;
                unfinished.finished(&result);
                result.map_err(|error| Error::Consumer {
                    topic,
                    group,
                    source: Box::new(error),
                })
            });
        }
        if let (Some(interval), Some(wake)) = (self.lag_interval, lag_wake) {
            services.tasks.spawn(report_lag(
                self.backend.clone(),
                lags,
                LagPace { interval, wake },
                services.stop.clone(),
            ));
        }
        tracing::info!(
            backend = self.backend.name(),
            handlers = self.handlers.len(),
            consumers = tasks.len(),
            "started"
        );
        Ok(Running {
            tasks,
            shutdown: self.shutdown.clone(),
            counters: self.handlers.iter().map(|h| h.counters.clone()).collect(),
            health: self.health.clone(),
            services,
            #[cfg(feature = "prometheus")]
            metrics_addr,
        })
    }
}

/// Reports a consumer's end to its health and gauges: how it returned, or, when the task
/// panicked or was aborted (the [`Running`] dropped), that it ended without draining.
struct StopReport(Option<Arc<LevelMetrics>>);

impl StopReport {
    fn finished(mut self, result: &Result<(), Error>) {
        if let Some(metrics) = self.0.take() {
            // Debug: the message and its causes, as `main` would print them.
            metrics.stopped(result.as_ref().err().map(|error| format!("{error:?}")));
        }
    }
}

impl Drop for StopReport {
    fn drop(&mut self) {
        if let Some(metrics) = self.0.take() {
            metrics.stopped(Some(
                "the consumer task ended without draining (it panicked or the app was dropped)".into(),
            ));
        }
    }
}
