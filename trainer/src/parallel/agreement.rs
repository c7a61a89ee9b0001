//! What the ranks of a data-parallel run compare before the first step: the settings that must
//! match, the step they start at, the stream position they continue from and a hash of their
//! parameters. Each process builds or loads its model and configuration on its own, so a node
//! started with another seed, `max_steps` or tokenizer, or resumed from another checkpoint,
//! would otherwise train on and be found out at a checkpoint's hash at best.
//!
//! Every rank gathers every rank's agreement (the run's first round) and compares them with rank
//! 0's the same way, so every node ends with the same one line naming the rank and what differs.

use flightlm_shared::{Cursor, TokenizerInfo, CONTRACT_VERSION};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::TrainError;

/// The configuration keys whose values every rank must share: the model, the objective, the
/// data a step reads, the optimizer and schedule, the run's length and its collective calls
/// (`eval_every` and `save_every` decide when the ranks meet to check their parameters), the
/// masking and loss rules, the randomness.
const AGREED_KEYS: &[&str] = &[
    "objective",
    "model",
    "seq_len",
    "batch_size",
    "grad_accum",
    "lr",
    "lr_schedule",
    "warmup_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "max_steps",
    "eval_every",
    "save_every",
    "seed",
    "mlm_probability",
    "dropout",
    "masking_key",
    "loss_average",
    "precision",
    "nodes",
];

/// One rank's account of where it starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// A hash of `settings`, compared first.
    pub settings_hash: u64,
    /// `(name, value)` of every setting that must match, to name the one that does not.
    pub settings: Vec<(String, String)>,
    /// The step the rank's first step continues from (0 for a fresh run).
    pub start_step: usize,
    /// The stream position it continues after, as JSON.
    pub cursor: Option<String>,
    pub parameter_hash: u64,
}

impl Agreement {
    pub fn new(
        config: &TrainConfig,
        tokenizer: &TokenizerInfo,
        (start_step, cursor): (usize, Option<&Cursor>),
        parameter_hash: u64,
    ) -> Result<Self, TrainError> {
        let settings = settings(config, tokenizer)?;
        let text = serde_json::to_vec(&settings).expect("strings serialize");
        Ok(Agreement {
            settings_hash: flightlm_shared::hashing::stable_hash(0, &text),
            settings,
            start_step,
            cursor: cursor.map(|cursor| serde_json::to_string(cursor).expect("serializes")),
            parameter_hash,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an Agreement always serializes")
    }

    /// Decodes every rank's agreement and refuses the run at the first rank that differs from
    /// rank 0, naming it and every difference.
    pub fn check_all(payloads: &[Vec<u8>]) -> Result<(), TrainError> {
        let agreements = payloads
            .iter()
            .enumerate()
            .map(|(rank, payload)| {
                serde_json::from_slice::<Agreement>(payload).map_err(|error| TrainError::Rank {
                    rank,
                    message: format!("its agreement does not parse: {error}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let Some(lead) = agreements.first() else {
            return Ok(());
        };
        for (rank, other) in agreements.iter().enumerate().skip(1) {
            let differences = lead.differences(other);
            if !differences.is_empty() {
                return Err(TrainError::Rank {
                    rank,
                    message: format!("refused before step 1: {}", differences.join("; ")),
                });
            }
        }
        Ok(())
    }

    /// What `other` (a rank) does differently from `self` (rank 0), in words.
    fn differences(&self, other: &Agreement) -> Vec<String> {
        let mut differences = Vec::new();
        if self.settings_hash != other.settings_hash || self.settings != other.settings {
            let lead: std::collections::BTreeMap<&str, &str> = self
                .settings
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            for (name, value) in &other.settings {
                match lead.get(name.as_str()) {
                    Some(expected) if expected == value => {}
                    Some(expected) => {
                        differences.push(format!("its {name} is {value}, rank 0's is {expected}"))
                    }
                    None => differences.push(format!("it has a setting {name} rank 0 lacks")),
                }
            }
            if differences.is_empty() {
                differences.push("its settings differ from rank 0's".into());
            }
            // The rest follows from the settings; naming them too would bury the cause.
            return differences;
        }
        if self.start_step != other.start_step {
            differences.push(format!(
                "it starts after step {}, rank 0 after step {} (every node must resume from the \
                 same checkpoint)",
                other.start_step, self.start_step
            ));
        }
        if self.cursor != other.cursor {
            differences.push(
                "it continues the stream from another position than rank 0 (its checkpoint's \
                 cursor differs)"
                    .into(),
            );
        }
        if self.parameter_hash != other.parameter_hash {
            differences.push(format!(
                "its parameters hash {:016x}, rank 0's {:016x} (another init_from or checkpoint)",
                other.parameter_hash, self.parameter_hash
            ));
        }
        differences
    }
}

/// The settings every rank must share, by name, with the tokenizer and the wire contract.
fn settings(
    config: &TrainConfig,
    tokenizer: &TokenizerInfo,
) -> Result<Vec<(String, String)>, TrainError> {
    let values = serde_json::to_value(config).map_err(|source| TrainError::Json {
        what: "the training configuration",
        source,
    })?;
    let mut settings: Vec<(String, String)> = AGREED_KEYS
        .iter()
        .map(|key| {
            let value = values.get(key).map_or("unset".into(), |value| match value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            });
            (key.to_string(), value)
        })
        .collect();
    settings.extend([
        ("global_batch".into(), config.global_batch().to_string()),
        ("world_size".into(), config.world_size().to_string()),
        ("tokenizer".into(), tokenizer.hash.clone()),
        ("vocab_size".into(), tokenizer.vocab_size.to_string()),
        ("contract_version".into(), CONTRACT_VERSION.to_string()),
    ]);
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    fn tokenizer(hash: &str) -> TokenizerInfo {
        TokenizerInfo::roberta(hash, 512)
    }

    fn agreement(config: &TrainConfig, tokenizer_hash: &str, step: usize, params: u64) -> Vec<u8> {
        Agreement::new(config, &tokenizer(tokenizer_hash), (step, None), params)
            .expect("builds")
            .encode()
    }

    fn refusal(payloads: &[Vec<u8>]) -> String {
        Agreement::check_all(payloads)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn the_first_differing_rank_is_named_with_every_differing_setting() {
        let config = TrainConfig::new("http://x", "out", Preset::Tiny);
        let same = agreement(&config, "t", 0, 7);
        Agreement::check_all(&[same.clone(), same.clone()]).expect("agree");

        let mut other = config.clone();
        other.seed = 7;
        other.max_steps = 20;
        let message = refusal(&[same.clone(), same.clone(), agreement(&other, "t", 0, 7)]);
        assert_eq!(
            message,
            "rank 2: refused before step 1: its max_steps is 20, rank 0's is 10000; its seed \
             is 7, rank 0's is 42"
        );
        let message = refusal(&[same.clone(), agreement(&config, "u", 0, 7)]);
        assert_eq!(
            message,
            "rank 1: refused before step 1: its tokenizer is u, rank 0's is t"
        );
        let message = refusal(&[agreement(&config, "t", 8, 9), same.clone()]);
        assert!(
            message.starts_with(
                "rank 1: refused before step 1: it starts after step 0, rank 0 after step 8"
            ),
            "{message}"
        );
        assert!(
            message.contains("parameters hash 0000000000000007"),
            "{message}"
        );
        let mut other = config.clone();
        other.out_dir = "elsewhere".into();
        other.log_every = 3;
        Agreement::check_all(&[same, agreement(&other, "t", 0, 7)]).expect("local settings");
    }
}
