//! How each parameter of flightlm's [`Roberta`](crate::model::Roberta) is named and laid out in a
//! HuggingFace `RobertaForMaskedLM` / `RobertaForCausalLM` state dict.
//!
//! burn's module visitor and mapper announce every field they descend into; [`ParamPath`] keeps
//! that trail, and [`hf_name`] turns the trail of one parameter into its HF key. Export and
//! import both go through this one mapping, so they cannot disagree.

/// Where burn's traversal currently is: field names, with the type of the struct holding each.
#[derive(Debug, Default)]
pub(crate) struct ParamPath {
    fields: Vec<String>,
    containers: Vec<String>,
}

impl ParamPath {
    pub fn enter(&mut self, name: &str, container_type: &str) {
        self.fields.push(name.to_string());
        self.containers.push(container_type.to_string());
    }

    pub fn exit(&mut self) {
        self.fields.pop();
        self.containers.pop();
    }

    /// The parameter at the current position, as HF names and stores it.
    pub fn current(&self) -> Option<HfParam> {
        let name = hf_name(&self.fields)?;
        // burn's `Linear` keeps its weight as [in, out]; torch's `nn.Linear` as [out, in].
        let transposed = self.containers.last().map(String::as_str) == Some("Struct:Linear")
            && self.fields.last().map(String::as_str) == Some("weight");
        Some(HfParam { name, transposed })
    }

    /// The burn path, for error messages.
    pub fn burn_name(&self) -> String {
        self.fields.join(".")
    }
}

/// A parameter's key in the HF state dict and whether HF stores it transposed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HfParam {
    pub name: String,
    pub transposed: bool,
}

/// The HF key of the parameter at burn path `fields`, e.g.
/// `layers.0.attention_output.layer_norm.gamma` -> `roberta.encoder.layer.0.attention.output.LayerNorm.weight`.
pub(crate) fn hf_name(fields: &[String]) -> Option<String> {
    let parts: Vec<&str> = fields.iter().map(String::as_str).collect();
    let (leaf, modules) = parts.split_last()?;
    let leaf = match *leaf {
        "gamma" => "weight",
        "beta" => "bias",
        other => other,
    };
    let module = match modules {
        ["embeddings", "layer_norm"] => "roberta.embeddings.LayerNorm".to_string(),
        ["embeddings", table] => format!("roberta.embeddings.{table}"),
        ["layers", index, rest @ ..] => {
            let inner = match rest {
                ["attention", projection] => format!("attention.self.{projection}"),
                ["attention_output", "dense"] => "attention.output.dense".into(),
                ["attention_output", "layer_norm"] => "attention.output.LayerNorm".into(),
                ["intermediate"] => "intermediate.dense".into(),
                ["output", "dense"] => "output.dense".into(),
                ["output", "layer_norm"] => "output.LayerNorm".into(),
                _ => return None,
            };
            format!("roberta.encoder.layer.{index}.{inner}")
        }
        ["lm_head"] => "lm_head".into(),
        ["lm_head", part] => format!("lm_head.{part}"),
        _ => return None,
    };
    Some(format!("{module}.{leaf}"))
}

/// Keys of an HF RoBERTa state dict that flightlm's model has no parameter for and that carry
/// nothing it needs: buffers older `transformers` saved, and the pooler of `RobertaModel`.
pub(crate) fn is_ignorable(name: &str) -> bool {
    name == "roberta.embeddings.position_ids"
        || name == "roberta.embeddings.token_type_ids"
        || name.starts_with("roberta.pooler.")
}

/// The decoder's weight and bias: tied to `roberta.embeddings.word_embeddings.weight` and
/// `lm_head.bias`, so `transformers` leaves them out of the files it saves.
pub(crate) const TIED_DECODER_WEIGHT: &str = "lm_head.decoder.weight";
pub(crate) const TIED_DECODER_BIAS: &str = "lm_head.decoder.bias";
pub(crate) const WORD_EMBEDDINGS: &str = "roberta.embeddings.word_embeddings.weight";
pub(crate) const HEAD_BIAS: &str = "lm_head.bias";

#[cfg(test)]
mod tests {
    use super::*;

    fn name(path: &str) -> Option<String> {
        let fields: Vec<String> = path.split('.').map(String::from).collect();
        hf_name(&fields)
    }

    #[test]
    fn maps_every_kind_of_parameter() {
        let cases = [
            (
                "embeddings.word_embeddings.weight",
                "roberta.embeddings.word_embeddings.weight",
            ),
            (
                "embeddings.layer_norm.beta",
                "roberta.embeddings.LayerNorm.bias",
            ),
            (
                "layers.1.attention.query.weight",
                "roberta.encoder.layer.1.attention.self.query.weight",
            ),
            (
                "layers.0.attention_output.layer_norm.gamma",
                "roberta.encoder.layer.0.attention.output.LayerNorm.weight",
            ),
            (
                "layers.0.intermediate.bias",
                "roberta.encoder.layer.0.intermediate.dense.bias",
            ),
            (
                "layers.3.output.dense.weight",
                "roberta.encoder.layer.3.output.dense.weight",
            ),
            ("lm_head.layer_norm.gamma", "lm_head.layer_norm.weight"),
            ("lm_head.bias", "lm_head.bias"),
        ];
        for (burn, hf) in cases {
            assert_eq!(name(burn).as_deref(), Some(hf), "{burn}");
        }
        assert_eq!(name("layers.0.unknown.weight"), None);
    }

    #[test]
    fn only_linear_weights_are_transposed() {
        let mut path = ParamPath::default();
        path.enter("lm_head", "Struct:Roberta");
        path.enter("dense", "Struct:LmHead");
        path.enter("weight", "Struct:Linear");
        assert!(path.current().expect("known").transposed);
        path.exit();
        path.enter("bias", "Struct:Linear");
        assert!(!path.current().expect("known").transposed);
        path.exit();
        path.exit();
        path.enter("bias", "Struct:LmHead");
        assert_eq!(
            path.current(),
            Some(HfParam {
                name: "lm_head.bias".into(),
                transposed: false
            })
        );
    }
}
