//! What a pipeline has served since it started, per source: blocks, tokens, documents, skipped
//! rows, dropped tokens, and bad records by kind, over every stream it opened. These only grow
//! (Prometheus counters are built from them), although the stream list forgets old finished
//! streams: a stream's counts move into the retired totals when it is forgotten.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// One source's totals.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SourceServed {
    pub source: String,
    pub blocks: u64,
    pub tokens: u64,
    pub documents: u64,
    pub skipped_rows: u64,
    pub dropped_tokens: u64,
}

/// Totals per source (in the order sources were first read) and bad records per kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Served {
    pub sources: Vec<SourceServed>,
    pub bad_records: BTreeMap<String, u64>,
}

impl Served {
    fn source(&mut self, name: &str) -> &mut SourceServed {
        let index = match self.sources.iter().position(|s| s.source == name) {
            Some(index) => index,
            None => {
                self.sources.push(SourceServed {
                    source: name.to_string(),
                    ..SourceServed::default()
                });
                self.sources.len() - 1
            }
        };
        &mut self.sources[index]
    }

    /// Adds what one stream (its `stats` snapshot) sent: blocks and tokens per source.
    pub fn add_sent(&mut self, stream: &Value) {
        for source in stream["sources"].as_array().into_iter().flatten() {
            let name = source["source"].as_str().unwrap_or_default();
            let served = self.source(name);
            served.blocks += source["blocks"].as_u64().unwrap_or(0);
            served.tokens += source["tokens"].as_u64().unwrap_or(0);
        }
    }

    /// Adds what one production (read by the stream whose snapshot this is, and maybe by its
    /// job's other shards) read: documents, skipped rows, dropped tokens, bad records.
    pub fn add_reading(&mut self, stream: &Value) {
        for source in stream["sources"].as_array().into_iter().flatten() {
            let name = source["source"].as_str().unwrap_or_default();
            let served = self.source(name);
            served.documents += source["documents"].as_u64().unwrap_or(0);
            served.skipped_rows += source["skipped_rows"].as_u64().unwrap_or(0);
            served.dropped_tokens += source["dropped_tokens"].as_u64().unwrap_or(0);
        }
        for (kind, count) in stream["bad_records"].as_object().into_iter().flatten() {
            *self.bad_records.entry(kind.clone()).or_default() += count.as_u64().unwrap_or(0);
        }
    }

    /// These totals plus the listed streams' (each production's reading counted once).
    pub fn with_streams(&self, streams: &[Value]) -> Served {
        let mut total = self.clone();
        let mut readings: Vec<&Value> = Vec::new();
        for stream in streams {
            total.add_sent(stream);
            if !readings.contains(&&stream["reading"]) {
                readings.push(&stream["reading"]);
                total.add_reading(stream);
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stream(reading: u64, blocks: u64, documents: u64) -> Value {
        json!({
            "reading": reading,
            "sources": [{"source": "a", "blocks": blocks, "tokens": blocks * 8,
                         "documents": documents, "skipped_rows": 0, "dropped_tokens": 1}],
            "bad_records": {"invalid_utf8": 1},
        })
    }

    #[test]
    fn shards_of_one_reading_count_its_documents_once() {
        let streams = [stream(7, 3, 10), stream(7, 4, 10), stream(8, 1, 2)];
        let total = Served::default().with_streams(&streams);
        assert_eq!(total.sources.len(), 1);
        assert_eq!(total.sources[0].blocks, 8);
        assert_eq!(total.sources[0].tokens, 64);
        assert_eq!(total.sources[0].documents, 12);
        assert_eq!(total.bad_records["invalid_utf8"], 2);
    }
}
