//! The pipeline's Prometheus metrics (`/metrics`, text format 0.0.4), read from
//! [`PipelineStatus`] at each scrape: per source and per stream tokens, blocks and documents,
//! the token rate, queued batches, open streams, skipped rows and bad records by kind, remote
//! store requests/retries/bytes, and control actions.
//!
//! To add a series, write it in [`StatusCollector::encode`] with [`counters`] or [`gauges`].

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::Value;

use crate::observe::status::PipelineStatus;

type Labels = Vec<(&'static str, String)>;

/// A registry holding the pipeline's collector, under the `flightlm_pipeline` prefix.
pub fn registry(status: Arc<PipelineStatus>) -> Registry {
    let mut registry = Registry::with_prefix("flightlm_pipeline");
    registry.register_collector(Box::new(StatusCollector(status)));
    registry
}

/// The metrics in Prometheus' text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, registry);
    text
}

#[derive(Debug)]
struct StatusCollector(Arc<PipelineStatus>);

impl fmt::Debug for PipelineStatus {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("PipelineStatus")
    }
}

/// A counter family: one series per label set.
fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge family: one series per label set.
fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, f64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn stream_labels(stream: &Value) -> Labels {
    let shard = match &stream["shard"] {
        Value::Null => "all".to_string(),
        shard => format!("{}/{}", shard["index"], shard["count"]),
    };
    vec![
        ("stream", stream["id"].to_string()),
        (
            "split",
            stream["split"].as_str().unwrap_or_default().to_string(),
        ),
        ("shard", shard),
    ]
}

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let status = &self.0;
        let stats = status.streams.snapshot();
        let served = status.streams.served();
        let by_source = |value: fn(&crate::production::served::SourceServed) -> u64| {
            served
                .sources
                .iter()
                .map(move |s| (vec![("source", s.source.clone())], value(s)))
                .collect::<Vec<_>>()
        };
        let e = &mut encoder;
        counters(
            e,
            "tokens",
            "Tokens served per source",
            by_source(|s| s.tokens),
        )?;
        counters(
            e,
            "blocks",
            "Blocks served per source",
            by_source(|s| s.blocks),
        )?;
        counters(
            e,
            "documents",
            "Documents read per source",
            by_source(|s| s.documents),
        )?;
        counters(
            e,
            "skipped_rows",
            "Rows that were not documents (null or blank text) per source",
            by_source(|s| s.skipped_rows),
        )?;
        counters(
            e,
            "dropped_tokens",
            "Tokens of the last partial block of a pass, per source",
            by_source(|s| s.dropped_tokens),
        )?;
        let kinds = served.bad_records.iter();
        let kinds = kinds.map(|(kind, count)| (vec![("kind", kind.clone())], *count));
        counters(e, "bad_records", "Bad records skipped, by kind", kinds)?;
        let weights = status.corpus.describe_sources();
        let weights = weights
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|source| {
                let weight = source.get("weight")?.as_f64()?;
                Some((
                    vec![("source", source["source"].as_str()?.to_string())],
                    weight,
                ))
            });
        gauges(e, "source_weight", "Mixture weight per source", weights)?;
        gauges(
            e,
            "tokens_per_second",
            "Tokens served per second over the last ten seconds",
            [(Labels::new(), status.tokens_per_s())],
        )?;
        let open = stats["active_streams"].as_u64().unwrap_or(0) as f64;
        gauges(
            e,
            "open_streams",
            "Streams being served",
            [(Labels::new(), open)],
        )?;

        let streams: Vec<Value> = stats["streams"].as_array().cloned().unwrap_or_default();
        let per_stream = |key: &str| -> Vec<(Labels, u64)> {
            let key = key.to_string();
            streams
                .iter()
                .map(|s| (stream_labels(s), s[&key].as_u64().unwrap_or(0)))
                .collect()
        };
        counters(
            e,
            "stream_tokens",
            "Tokens sent per stream",
            per_stream("tokens"),
        )?;
        counters(
            e,
            "stream_blocks",
            "Blocks sent per stream",
            per_stream("blocks"),
        )?;
        counters(
            e,
            "stream_documents",
            "Documents read by each stream's production (shared by a job's shards)",
            per_stream("documents"),
        )?;
        let queued = per_stream("queued_batches")
            .into_iter()
            .map(|(labels, count)| (labels, count as f64));
        gauges(
            e,
            "stream_queued_batches",
            "Encoded batches waiting for the network",
            queued,
        )?;

        let remote = crate::read::remote::stats().unwrap_or(Value::Null);
        for (key, help) in [
            ("requests", "Requests to remote stores"),
            (
                "retries",
                "Remote requests retried after a transient failure",
            ),
            ("bytes", "Bytes read from remote stores"),
        ] {
            let value = remote[key].as_u64().unwrap_or(0);
            counters(e, &format!("remote_{key}"), help, [(Labels::new(), value)])?;
        }
        let actions = status
            .actions()
            .into_iter()
            .map(|((action, outcome), count)| {
                (
                    vec![("action", action), ("outcome", outcome.to_string())],
                    count,
                )
            });
        counters(e, "control_actions", "Control actions called", actions)?;
        Ok(())
    }
}
