//! The run's Prometheus metrics, served on `--metrics-listen` (text format 0.0.4): the gauges
//! follow the `train` and `eval` lines as they are recorded, the counters count checkpoints,
//! evaluations and the pipeline reconnects of every rank of this process.
//!
//! To add a metric: register it in [`RunMetrics::new`] and set it in `observe` (or in
//! [`RunMetrics::encode`] for values read at scrape time).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use flightlm_shared::metrics_http;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::data::pipeline::reconnects;
use crate::error::TrainError;
use crate::run::metrics::{Metric, MetricObserver};

type FloatGauge = Gauge<f64, AtomicU64>;
type SourceLabel = Vec<(&'static str, String)>;

/// The metrics and the registry that encodes them; cheap to clone, shared with the listener.
#[derive(Clone)]
pub struct RunMetrics {
    registry: Arc<Registry>,
    step: Gauge,
    loss: FloatGauge,
    perplexity: FloatGauge,
    lr: FloatGauge,
    tokens_per_second: FloatGauge,
    data_wait: FloatGauge,
    grad_norm: FloatGauge,
    eval_loss: FloatGauge,
    eval_perplexity: FloatGauge,
    evaluations: Counter,
    checkpoints: Counter,
    reconnects: Counter,
    /// Input tokens trained on per source (streams that name each block's source).
    source_tokens: Family<SourceLabel, Counter>,
    /// Reconnects already added to the counter (the source's count is read at each scrape).
    reconnects_counted: Arc<Mutex<u64>>,
}

impl Default for RunMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RunMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flightlm_trainer");
        let metrics = RunMetrics {
            registry: Arc::default(),
            step: Gauge::default(),
            loss: FloatGauge::default(),
            perplexity: FloatGauge::default(),
            lr: FloatGauge::default(),
            tokens_per_second: FloatGauge::default(),
            data_wait: FloatGauge::default(),
            grad_norm: FloatGauge::default(),
            eval_loss: FloatGauge::default(),
            eval_perplexity: FloatGauge::default(),
            evaluations: Counter::default(),
            checkpoints: Counter::default(),
            reconnects: Counter::default(),
            source_tokens: Family::default(),
            reconnects_counted: Arc::default(),
        };
        let gauges: [(&str, &str, &FloatGauge); 8] = [
            (
                "loss",
                "Mean training loss of the last train line",
                &metrics.loss,
            ),
            (
                "perplexity",
                "exp(loss) of the last train line",
                &metrics.perplexity,
            ),
            (
                "learning_rate",
                "Learning rate of the last logged step",
                &metrics.lr,
            ),
            (
                "tokens_per_second",
                "Input tokens per second of training over the last train line's window",
                &metrics.tokens_per_second,
            ),
            (
                "data_wait_ratio",
                "Share of the last window's training time spent waiting for data",
                &metrics.data_wait,
            ),
            (
                "grad_norm",
                "Global gradient norm before clipping at the last logged step",
                &metrics.grad_norm,
            ),
            (
                "eval_loss",
                "Loss of the last evaluation",
                &metrics.eval_loss,
            ),
            (
                "eval_perplexity",
                "Perplexity of the last evaluation",
                &metrics.eval_perplexity,
            ),
        ];
        registry.register(
            "step",
            "Optimizer steps completed, as of the last train line",
            metrics.step.clone(),
        );
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "evaluations",
            "Evaluations on the valid split",
            metrics.evaluations.clone(),
        );
        registry.register(
            "checkpoints",
            "Checkpoints written",
            metrics.checkpoints.clone(),
        );
        registry.register(
            "tokens",
            "Input tokens trained on per source, where the stream names each block's source",
            metrics.source_tokens.clone(),
        );
        registry.register(
            "pipeline_reconnects",
            "Times a train stream was reopened after the pipeline went away",
            metrics.reconnects.clone(),
        );
        RunMetrics {
            registry: Arc::new(registry),
            ..metrics
        }
    }

    /// The metrics in Prometheus' text format (version 0.0.4).
    pub fn encode(&self) -> String {
        if let Ok(mut counted) = self.reconnects_counted.lock() {
            let now = reconnects();
            self.reconnects.inc_by(now.saturating_sub(*counted));
            *counted = now.max(*counted);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut text, &self.registry);
        text
    }
}

impl MetricObserver for RunMetrics {
    fn observe(&mut self, metric: &Metric) -> Result<(), TrainError> {
        match metric {
            Metric::Train {
                step,
                loss,
                perplexity,
                lr,
                tokens_per_s,
                data_wait,
                grad_norm,
                tokens_by_source,
                ..
            } => {
                for (source, tokens) in tokens_by_source {
                    let counter = self
                        .source_tokens
                        .get_or_create(&vec![("source", source.clone())]);
                    counter.inc_by(tokens.saturating_sub(counter.get()));
                }
                self.step.set(*step as i64);
                self.loss.set(*loss);
                self.perplexity.set(*perplexity);
                self.lr.set(*lr);
                self.tokens_per_second.set(*tokens_per_s);
                self.data_wait.set(*data_wait);
                if let Some(norm) = grad_norm {
                    self.grad_norm.set(*norm);
                }
            }
            Metric::Eval {
                eval_loss,
                eval_perplexity,
                ..
            } => {
                self.eval_loss.set(*eval_loss);
                self.eval_perplexity.set(*eval_perplexity);
                self.evaluations.inc();
            }
            Metric::Checkpoint { .. } => {
                self.checkpoints.inc();
            }
            Metric::Resume { step, .. } => {
                self.step.set(*step as i64);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Serves `metrics` at `/metrics` on `address` (port 0 picks one); returns the address bound.
pub fn serve_metrics(address: SocketAddr, metrics: RunMetrics) -> std::io::Result<SocketAddr> {
    metrics_http::serve(address, Arc::new(Endpoint(metrics)))
}

struct Endpoint(RunMetrics);

impl metrics_http::Handler for Endpoint {
    fn handle(&self, request: &metrics_http::Request) -> metrics_http::Response {
        match request.path.as_str() {
            "/metrics" => {
                metrics_http::Response::ok(metrics_http::PROMETHEUS_TEXT, self.0.encode())
            }
            "/" => metrics_http::Response::text(200, "flightlm-trainer: metrics at /metrics"),
            _ => metrics_http::Response::not_found(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_set_the_gauges_and_count() {
        let mut metrics = RunMetrics::new();
        let observed = [
            Metric::Eval {
                step: 0,
                eval_loss: 3.0,
                eval_perplexity: 3f64.exp(),
                eval_tokens: 10,
                eval_seconds: 0.1,
                eval_loss_by_source: Default::default(),
            },
            Metric::Checkpoint {
                step: 5,
                path: "x".into(),
                eval_perplexity: None,
                parameter_hash: None,
            },
        ];
        for metric in &observed {
            metrics.observe(metric).expect("observes");
        }
        let text = metrics.encode();
        assert!(
            text.contains("# TYPE flightlm_trainer_checkpoints_total counter"),
            "{text}"
        );
        assert!(
            text.contains("flightlm_trainer_checkpoints_total 1\n"),
            "{text}"
        );
        assert!(text.contains("flightlm_trainer_eval_loss 3.0\n"), "{text}");
        assert!(
            text.contains("flightlm_trainer_evaluations_total 1\n"),
            "{text}"
        );
    }
}
