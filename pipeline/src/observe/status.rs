//! The state every view of a running pipeline reads: the corpus (sources and weights), the
//! stream registry, the control actions called, and a once-a-second history of the tokens
//! served, from which rates and recent source shares come.
//!
//! [`PipelineStatus::summary`] is the JSON the status page polls (`/status.json`); the
//! Prometheus collector reads the same values. A new figure goes into [`Summary`] (and, when it
//! is worth a series, into the collector), and the page shows whatever it is told to.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::corpus::Corpus;
use crate::production::served::Served;
use crate::production::stats::StreamRegistry;

/// Samples kept: five minutes at one a second.
const HISTORY_SAMPLES: usize = 300;
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Rates and recent shares are taken over this many of the latest samples.
const RECENT_SAMPLES: usize = 10;
/// Finished streams the page lists, besides every open one.
const FINISHED_STREAMS_SHOWN: usize = 8;

/// Tokens served at one moment, in all and per source.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    tokens: u64,
    by_source: BTreeMap<String, u64>,
}

/// Shared by the Flight service (which updates it) and the metrics listener (which shows it).
pub struct PipelineStatus {
    pub corpus: Arc<Corpus>,
    pub streams: Arc<StreamRegistry>,
    /// Control actions called: (action, "ok" | "refused") → count.
    actions: Mutex<BTreeMap<(String, &'static str), u64>>,
    history: Mutex<VecDeque<Sample>>,
    started: Instant,
}

/// One source as the page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SourceView {
    pub source: String,
    /// The mixture weight, and its share of all weights.
    pub weight: f64,
    pub weight_share: f64,
    pub tokens: u64,
    pub blocks: u64,
    pub documents: u64,
    pub skipped_rows: u64,
    pub dropped_tokens: u64,
    /// Share of all tokens served, since start and over the last seconds.
    pub share: f64,
    pub recent_share: f64,
}

/// Everything the status page shows.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub uptime_s: f64,
    pub files: usize,
    pub tokens: u64,
    pub blocks: u64,
    pub documents: u64,
    pub tokens_per_s: f64,
    /// `[seconds ago, tokens per second]`, oldest first.
    pub history: Vec<(f64, f64)>,
    pub sources: Vec<SourceView>,
    pub active_streams: u64,
    pub streams: Vec<Value>,
    pub skipped_rows: u64,
    pub bad_records: BTreeMap<String, u64>,
    pub remote: Option<Value>,
    pub actions: BTreeMap<String, u64>,
}

impl PipelineStatus {
    pub fn new(corpus: Arc<Corpus>, streams: Arc<StreamRegistry>) -> Arc<Self> {
        Arc::new(PipelineStatus {
            corpus,
            streams,
            actions: Mutex::default(),
            history: Mutex::default(),
            started: Instant::now(),
        })
    }

    /// Counts a control action, accepted or refused.
    pub fn count_action(&self, action: &str, accepted: bool) {
        if let Ok(mut actions) = self.actions.lock() {
            let outcome = if accepted { "ok" } else { "refused" };
            *actions.entry((action.to_string(), outcome)).or_default() += 1;
        }
    }

    pub fn actions(&self) -> Vec<((String, &'static str), u64)> {
        self.actions
            .lock()
            .map(|actions| actions.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }

    /// Samples the tokens served once a second from now on (for rates and the chart).
    pub fn start_sampling(self: &Arc<Self>) {
        let status = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("status-sampler".into())
            .spawn(move || {
                while let Some(status) = status.upgrade() {
                    status.sample();
                    drop(status);
                    std::thread::sleep(SAMPLE_EVERY);
                }
            });
    }

    fn sample(&self) {
        let served = self.streams.served();
        let sample = Sample {
            at: Instant::now(),
            tokens: served.sources.iter().map(|s| s.tokens).sum(),
            by_source: served
                .sources
                .iter()
                .map(|s| (s.source.clone(), s.tokens))
                .collect(),
        };
        if let Ok(mut history) = self.history.lock() {
            if history.len() == HISTORY_SAMPLES {
                history.pop_front();
            }
            history.push_back(sample);
        }
    }

    fn samples(&self) -> Vec<Sample> {
        self.history
            .lock()
            .map(|history| history.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Tokens per second over the latest samples.
    pub fn tokens_per_s(&self) -> f64 {
        let samples = self.samples();
        recent_rate(&samples)
    }

    /// What the status page shows.
    pub fn summary(&self) -> Summary {
        let stats = self.streams.snapshot();
        let served: Served = self.streams.served();
        let samples = self.samples();
        let now = Instant::now();
        let history = samples
            .windows(2)
            .map(|pair| {
                let seconds = pair[1].at.duration_since(pair[0].at).as_secs_f64();
                let rate = pair[1].tokens.saturating_sub(pair[0].tokens) as f64 / seconds.max(1e-3);
                (now.duration_since(pair[1].at).as_secs_f64(), rate)
            })
            .collect();
        let mut streams: Vec<Value> = stats["streams"].as_array().cloned().unwrap_or_default();
        let finished = streams.iter().filter(|s| s["active"] != true).count();
        let mut skip = finished.saturating_sub(FINISHED_STREAMS_SHOWN);
        streams.retain(|stream| {
            let dropped = stream["active"] != true && skip > 0;
            skip -= usize::from(dropped);
            !dropped
        });
        for stream in &mut streams {
            if let Some(fields) = stream.as_object_mut() {
                // The cursor's state is long and says nothing at a glance.
                fields.remove("sources");
            }
        }
        Summary {
            uptime_s: self.started.elapsed().as_secs_f64(),
            files: self.corpus.file_count(),
            tokens: served.sources.iter().map(|s| s.tokens).sum(),
            blocks: served.sources.iter().map(|s| s.blocks).sum(),
            documents: served.sources.iter().map(|s| s.documents).sum(),
            tokens_per_s: recent_rate(&samples),
            history,
            sources: self.source_views(&served, &samples),
            active_streams: stats["active_streams"].as_u64().unwrap_or(0),
            streams,
            skipped_rows: served.sources.iter().map(|s| s.skipped_rows).sum(),
            bad_records: served.bad_records.clone(),
            remote: crate::read::remote::stats(),
            actions: self
                .actions()
                .into_iter()
                .map(|((action, outcome), count)| (format!("{action} ({outcome})"), count))
                .collect(),
        }
    }

    /// The train sources with their weights, and every source that has served tokens.
    fn source_views(&self, served: &Served, samples: &[Sample]) -> Vec<SourceView> {
        let weights: Vec<(String, f64)> = self
            .corpus
            .describe_sources()
            .as_array()
            .into_iter()
            .flatten()
            .filter(|source| source.get("split").is_none())
            .map(|source| {
                let name = source["source"].as_str().unwrap_or_default().to_string();
                (name, source["weight"].as_f64().unwrap_or(0.0))
            })
            .collect();
        let weight_sum: f64 = weights.iter().map(|(_, weight)| weight).sum();
        let total: u64 = served.sources.iter().map(|s| s.tokens).sum();
        let recent = recent_by_source(samples);
        let recent_total: u64 = recent.values().sum();
        let mut names: Vec<String> = weights.iter().map(|(name, _)| name.clone()).collect();
        for source in &served.sources {
            if !names.contains(&source.source) {
                names.push(source.source.clone());
            }
        }
        names
            .into_iter()
            .map(|name| {
                let weight = weights
                    .iter()
                    .find(|(known, _)| *known == name)
                    .map_or(0.0, |(_, weight)| *weight);
                let counts = served.sources.iter().find(|s| s.source == name);
                let tokens = counts.map_or(0, |s| s.tokens);
                let share = ratio(tokens, total);
                let recent_share = match recent_total {
                    0 => share,
                    _ => ratio(recent.get(&name).copied().unwrap_or(0), recent_total),
                };
                SourceView {
                    weight,
                    weight_share: if weight_sum > 0.0 {
                        weight / weight_sum
                    } else {
                        0.0
                    },
                    tokens,
                    blocks: counts.map_or(0, |s| s.blocks),
                    documents: counts.map_or(0, |s| s.documents),
                    skipped_rows: counts.map_or(0, |s| s.skipped_rows),
                    dropped_tokens: counts.map_or(0, |s| s.dropped_tokens),
                    share,
                    recent_share,
                    source: name,
                }
            })
            .collect()
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn recent_window(samples: &[Sample]) -> Option<(&Sample, &Sample)> {
    let last = samples.last()?;
    let first = &samples[samples.len().saturating_sub(RECENT_SAMPLES + 1)];
    Some((first, last))
}

fn recent_rate(samples: &[Sample]) -> f64 {
    let Some((first, last)) = recent_window(samples) else {
        return 0.0;
    };
    let seconds = last.at.duration_since(first.at).as_secs_f64();
    if seconds <= 0.0 {
        return 0.0;
    }
    last.tokens.saturating_sub(first.tokens) as f64 / seconds
}

fn recent_by_source(samples: &[Sample]) -> BTreeMap<String, u64> {
    let Some((first, last)) = recent_window(samples) else {
        return BTreeMap::new();
    };
    last.by_source
        .iter()
        .map(|(source, tokens)| {
            let before = first.by_source.get(source).copied().unwrap_or(0);
            (source.clone(), tokens.saturating_sub(before))
        })
        .collect()
}
