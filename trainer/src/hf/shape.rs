//! The dimensions that decide whether weights fit a network, compared field by field so that a
//! mismatch is reported by its HF name (`num_hidden_layers is 4, the model has 2`).

use std::path::Path;

use burn::tensor::backend::Backend;

use super::config::HfRobertaConfig;
use super::error::HfError;
use crate::model::{Roberta, RobertaConfig};

/// A network's dimensions under their `config.json` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Dimensions {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
}

impl Dimensions {
    pub fn of_config(config: &RobertaConfig) -> Self {
        Dimensions {
            vocab_size: config.vocab_size,
            hidden_size: config.hidden,
            num_hidden_layers: config.layers,
            num_attention_heads: config.heads,
            intermediate_size: config.intermediate,
            max_position_embeddings: config.max_positions,
        }
    }

    pub fn of_hf(config: &HfRobertaConfig) -> Self {
        Dimensions {
            vocab_size: config.vocab_size,
            hidden_size: config.hidden_size,
            num_hidden_layers: config.num_hidden_layers,
            num_attention_heads: config.num_attention_heads,
            intermediate_size: config.intermediate_size,
            max_position_embeddings: config.max_position_embeddings,
        }
    }

    pub fn of_model<B: Backend>(model: &Roberta<B>) -> Self {
        let [vocab_size, hidden_size] = model.embeddings.word_embeddings.weight.dims();
        let [max_position_embeddings, _] = model.embeddings.position_embeddings.weight.dims();
        let first = model.layers.first();
        Dimensions {
            vocab_size,
            hidden_size,
            num_hidden_layers: model.layers.len(),
            num_attention_heads: first.map_or(0, |layer| layer.attention.heads),
            intermediate_size: first.map_or(0, |layer| layer.intermediate.weight.dims()[1]),
            max_position_embeddings,
        }
    }

    fn named(&self) -> [(&'static str, usize); 6] {
        [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ]
    }

    /// `Err` naming every field where `found` (read from `path`) differs from `expected`.
    pub fn check(
        expected: &Dimensions,
        found: &Dimensions,
        expected_what: &str,
        path: &Path,
    ) -> Result<(), HfError> {
        let differences: Vec<String> = expected
            .named()
            .iter()
            .zip(found.named())
            .filter(|((_, want), (_, got))| want != got)
            .map(|((name, want), (_, got))| format!("{name} is {got}, {expected_what} has {want}"))
            .collect();
        if differences.is_empty() {
            Ok(())
        } else {
            Err(HfError::ShapeMismatch {
                path: path.to_path_buf(),
                message: differences.join("; "),
            })
        }
    }
}

/// Checks that `config` describes `model` before both are written side by side.
pub(crate) fn check_model_fits_config<B: Backend>(
    model: &Roberta<B>,
    config: &HfRobertaConfig,
    path: &Path,
) -> Result<(), HfError> {
    Dimensions::check(
        &Dimensions::of_model(model),
        &Dimensions::of_hf(config),
        "the model",
        path,
    )?;
    if model.causal != config.is_decoder {
        return Err(HfError::ShapeMismatch {
            path: path.to_path_buf(),
            message: format!(
                "is_decoder is {}, the model's attention is {}",
                config.is_decoder,
                if model.causal {
                    "causal"
                } else {
                    "bidirectional"
                }
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_differing_field() {
        let run =
            Dimensions::of_config(&RobertaConfig::new(800, 48, 2, 2, 96, 66).with_pad_id(Some(1)));
        let file =
            Dimensions::of_config(&RobertaConfig::new(800, 48, 4, 2, 96, 130).with_pad_id(Some(1)));
        let error = Dimensions::check(&run, &file, "the run", Path::new("x/config.json"))
            .expect_err("differs");
        let message = error.to_string();
        assert!(
            message.contains("num_hidden_layers is 4, the run has 2"),
            "{message}"
        );
        assert!(
            message.contains("max_position_embeddings is 130, the run has 66"),
            "{message}"
        );
        assert!(Dimensions::check(&run, &run, "the run", Path::new("c")).is_ok());
    }
}
