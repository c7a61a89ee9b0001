//! `config.json` of a HuggingFace RoBERTa model directory (a `transformers.RobertaConfig`), and its
//! translation to and from flightlm's [`RobertaConfig`].
//!
//! Writing fills every field `transformers` needs to rebuild the same network. Reading accepts
//! any RoBERTa config whose network flightlm computes exactly the same way, and names the field
//! at fault otherwise: fields `transformers` may leave out take `transformers`' own defaults.

use std::path::Path;

use flightlm_shared::TokenizerInfo;
use serde::{Deserialize, Serialize};

use super::error::HfError;
use crate::config::Objective;
use crate::model::{position_offset, RobertaConfig};

/// The `architectures` entry for each objective.
pub const MASKED_LM_ARCHITECTURE: &str = "RobertaForMaskedLM";
pub const CAUSAL_LM_ARCHITECTURE: &str = "RobertaForCausalLM";

/// The subset of `transformers.RobertaConfig` that describes the network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HfRobertaConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: String,
    #[serde(default = "defaults::dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "defaults::dropout")]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
    /// `transformers`' default is BERT's 1e-12; RoBERTa checkpoints (and flightlm) use 1e-5.
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Position ids start at `pad_token_id + 1`; -1 (a tokenizer without a pad token) makes them
    /// start at 0, and no token id is read as padding.
    #[serde(default = "defaults::pad_token_id")]
    pub pad_token_id: i64,
    #[serde(default = "defaults::bos_token_id")]
    pub bos_token_id: Option<usize>,
    #[serde(default = "defaults::eos_token_id")]
    pub eos_token_id: Option<usize>,
    #[serde(default)]
    pub is_decoder: bool,
    #[serde(default = "defaults::tie_word_embeddings")]
    pub tie_word_embeddings: bool,
    #[serde(
        default = "defaults::position_embedding_type",
        skip_serializing_if = "Option::is_none"
    )]
    pub position_embedding_type: Option<String>,
    #[serde(default = "defaults::dtype")]
    pub dtype: String,
}

/// `transformers`' defaults for fields a config may leave out.
mod defaults {
    pub fn hidden_act() -> String {
        "gelu".into()
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn type_vocab_size() -> usize {
        2
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn pad_token_id() -> i64 {
        1
    }
    pub fn bos_token_id() -> Option<usize> {
        Some(0)
    }
    pub fn eos_token_id() -> Option<usize> {
        Some(2)
    }
    pub fn tie_word_embeddings() -> bool {
        true
    }
    pub fn position_embedding_type() -> Option<String> {
        None
    }
    pub fn dtype() -> String {
        "float32".into()
    }
}

impl HfRobertaConfig {
    /// The config `transformers` needs to rebuild `model`; the special ids come from the tokenizer.
    pub fn from_model(model: &RobertaConfig, tokenizer: &TokenizerInfo) -> Self {
        let architecture = if model.causal {
            CAUSAL_LM_ARCHITECTURE
        } else {
            MASKED_LM_ARCHITECTURE
        };
        HfRobertaConfig {
            architectures: vec![architecture.into()],
            model_type: "roberta".into(),
            vocab_size: model.vocab_size,
            hidden_size: model.hidden,
            num_hidden_layers: model.layers,
            num_attention_heads: model.heads,
            intermediate_size: model.intermediate,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: model.dropout,
            attention_probs_dropout_prob: model.attention_dropout,
            max_position_embeddings: model.max_positions,
            type_vocab_size: 1,
            initializer_range: model.initializer_range,
            layer_norm_eps: model.layer_norm_eps,
            pad_token_id: model.pad_id.map_or(-1, |pad| pad as i64),
            bos_token_id: tokenizer.bos_id.map(|id| id as usize),
            eos_token_id: tokenizer.eos_id.map(|id| id as usize),
            is_decoder: model.causal,
            tie_word_embeddings: true,
            position_embedding_type: None,
            dtype: "float32".into(),
        }
    }

    pub fn objective(&self) -> Objective {
        let causal_architecture = self
            .architectures
            .iter()
            .any(|name| name == CAUSAL_LM_ARCHITECTURE);
        if self.is_decoder || causal_architecture {
            Objective::Causal
        } else {
            Objective::Mlm
        }
    }

    /// flightlm's description of the same network, after checking that flightlm computes it
    /// exactly as `transformers` does; `path` names the file in errors.
    pub fn to_model(&self, path: &Path) -> Result<RobertaConfig, HfError> {
        let unsupported = |message: String| {
            Err(HfError::Unsupported {
                path: path.to_path_buf(),
                message,
            })
        };
        if self.model_type != "roberta" {
            return unsupported(format!(
                "model_type is `{}`, only `roberta` is supported",
                self.model_type
            ));
        }
        if self.hidden_act != "gelu" {
            return unsupported(format!(
                "hidden_act is `{}`, only the exact `gelu` is implemented",
                self.hidden_act
            ));
        }
        if self.type_vocab_size != 1 {
            // RoBERTa never uses a second segment; flightlm keeps a single token-type row.
            return unsupported(format!(
                "type_vocab_size is {}, flightlm models have exactly 1",
                self.type_vocab_size
            ));
        }
        if !self.tie_word_embeddings {
            return unsupported("the decoder is not tied to the word embeddings".into());
        }
        if let Some(kind) = self
            .position_embedding_type
            .as_deref()
            .filter(|kind| *kind != "absolute")
        {
            return unsupported(format!(
                "position_embedding_type is `{kind}`, only `absolute` is supported"
            ));
        }
        let dimensions = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
        ];
        if let Some((name, _)) = dimensions.iter().find(|(_, value)| *value == 0) {
            return unsupported(format!("{name} is 0"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        let pad_id = match self.pad_id() {
            Ok(pad_id) => pad_id,
            Err(message) => return unsupported(message),
        };
        if self.max_position_embeddings <= position_offset(pad_id) {
            return unsupported(format!(
                "max_position_embeddings is {}, leaving no room for a token after the first \
                 position id {}",
                self.max_position_embeddings,
                position_offset(pad_id)
            ));
        }
        Ok(RobertaConfig::new(
            self.vocab_size,
            self.hidden_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.intermediate_size,
            self.max_position_embeddings,
        )
        .with_pad_id(pad_id)
        .with_causal(self.objective() == Objective::Causal)
        .with_layer_norm_eps(self.layer_norm_eps)
        .with_dropout(self.hidden_dropout_prob)
        .with_attention_dropout(self.attention_probs_dropout_prob)
        .with_initializer_range(self.initializer_range))
    }

    /// Longest input (special tokens included) the position table covers.
    pub fn max_tokens(&self) -> usize {
        let offset = position_offset(self.pad_id().ok().flatten());
        self.max_position_embeddings.saturating_sub(offset)
    }

    /// The pad id positions are counted after (`None` for -1: no pad token).
    fn pad_id(&self) -> Result<Option<usize>, String> {
        match self.pad_token_id {
            -1 => Ok(None),
            pad if pad >= 0 && (pad as usize) < self.vocab_size => Ok(Some(pad as usize)),
            pad => Err(format!(
                "pad_token_id is {pad}: neither -1 (no pad token) nor an id below vocab_size {}",
                self.vocab_size
            )),
        }
    }

    pub fn read(path: &Path) -> Result<Self, HfError> {
        let text = std::fs::read_to_string(path).map_err(|source| HfError::read(path, source))?;
        serde_json::from_str(&text).map_err(|source| HfError::BadConfig {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn write(&self, path: &Path) -> Result<(), HfError> {
        let text = serde_json::to_string_pretty(self).map_err(|error| HfError::Encode {
            what: "config.json",
            message: error.to_string(),
        })?;
        std::fs::write(path, text + "\n").map_err(|source| HfError::write(path, source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> TokenizerInfo {
        TokenizerInfo::roberta("test", 800)
    }

    #[test]
    fn round_trips_a_causal_model() {
        let model = RobertaConfig::new(800, 48, 2, 2, 96, 66)
            .with_pad_id(Some(1))
            .with_causal(true);
        let hf = HfRobertaConfig::from_model(&model, &tokenizer());
        assert_eq!(hf.architectures, vec![CAUSAL_LM_ARCHITECTURE.to_string()]);
        assert!(hf.is_decoder);
        assert_eq!(hf.max_tokens(), 64);
        let text = serde_json::to_string(&hf).expect("encodes");
        let parsed: HfRobertaConfig = serde_json::from_str(&text).expect("parses");
        let back = parsed
            .to_model(Path::new("config.json"))
            .expect("supported");
        assert_eq!(back.causal, model.causal);
        assert_eq!(back.max_positions, 66);
        assert_eq!(back.layer_norm_eps, model.layer_norm_eps);
    }

    #[test]
    fn missing_fields_take_transformers_defaults() {
        let text = r#"{"model_type": "roberta", "vocab_size": 50, "hidden_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
            "max_position_embeddings": 10, "type_vocab_size": 1}"#;
        let hf: HfRobertaConfig = serde_json::from_str(text).expect("parses");
        assert_eq!(hf.layer_norm_eps, 1e-12);
        assert_eq!(hf.objective(), Objective::Mlm);
        assert!(hf.to_model(Path::new("c")).is_ok());
    }

    #[test]
    fn names_what_flightlm_cannot_compute() {
        let model = RobertaConfig::new(800, 48, 2, 2, 96, 66).with_pad_id(Some(1));
        let mut hf = HfRobertaConfig::from_model(&model, &tokenizer());
        hf.hidden_act = "relu".into();
        let error = hf.to_model(Path::new("c")).expect_err("relu");
        assert!(error.to_string().contains("hidden_act"), "{error}");
        let mut hf = HfRobertaConfig::from_model(&model, &tokenizer());
        hf.type_vocab_size = 2;
        let error = hf.to_model(Path::new("c")).expect_err("two segments");
        assert!(error.to_string().contains("type_vocab_size"), "{error}");
        let mut hf = HfRobertaConfig::from_model(&model, &tokenizer());
        hf.pad_token_id = -2;
        let error = hf.to_model(Path::new("c")).expect_err("negative pad");
        assert!(error.to_string().contains("pad_token_id is -2"), "{error}");
    }

    #[test]
    fn positions_follow_the_pad_id_of_any_tokenizer() {
        // BERT's `[PAD]` = 0: positions from 1; no pad token: -1 and positions from 0.
        for (pad_id, hf_pad, offset) in [(Some(0), 0, 1), (None, -1, 0), (Some(1), 1, 2)] {
            let model = RobertaConfig::new(800, 48, 2, 2, 96, 64 + offset).with_pad_id(pad_id);
            let mut tokenizer = tokenizer();
            (tokenizer.bos_id, tokenizer.eos_id) = (None, Some(7));
            let hf = HfRobertaConfig::from_model(&model, &tokenizer);
            assert_eq!(hf.pad_token_id, hf_pad);
            assert_eq!((hf.bos_token_id, hf.eos_token_id), (None, Some(7)));
            assert_eq!(hf.max_tokens(), 64);
            let text = serde_json::to_string(&hf).expect("encodes");
            assert!(text.contains(r#""bos_token_id":null"#), "{text}");
            let back: HfRobertaConfig = serde_json::from_str(&text).expect("parses");
            let back = back.to_model(Path::new("c")).expect("supported");
            assert_eq!(back.pad_id, pad_id);
            assert_eq!(position_offset(back.pad_id), offset);
        }
    }
}
