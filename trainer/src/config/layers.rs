//! Resolves a run's [`TrainConfig`] from layers: the seed recipe's defaults (or a resumed
//! checkpoint's configuration), then a TOML file, then the command line's flags. A layer
//! overrides exactly the keys it sets, tables (`[model]`) key by key.
//!
//! Layers are merged as JSON values and deserialized once into the typed configuration, so every
//! field of [`TrainConfig`] can be set in a file without a second list of names to keep in sync,
//! and a misspelled key is an error that names the layer it came from.

use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{Preset, TrainConfig};
use crate::error::TrainError;

/// One source of settings and the keys it sets.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigLayer {
    /// Where the values come from, for error messages ("config file run.toml").
    pub origin: String,
    pub values: Map<String, Value>,
}

impl ConfigLayer {
    /// A TOML document's keys.
    pub fn from_toml(origin: impl Into<String>, text: &str) -> Result<Self, TrainError> {
        let origin = origin.into();
        let table: toml::Table = toml::from_str(text)
            .map_err(|error| TrainError::InvalidConfig(format!("{origin}: {error}")))?;
        let values = to_object(&origin, &table)?;
        Ok(ConfigLayer { origin, values })
    }

    /// The keys of the TOML file at `path`.
    pub fn from_toml_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::io(path, source))?;
        ConfigLayer::from_toml(format!("config file {}", path.display()), &text)
    }

    /// The fields `settings` serializes: a struct of `Option`s that skips `None` sets only the
    /// flags that were given.
    pub fn from_serialize(
        origin: impl Into<String>,
        settings: &impl Serialize,
    ) -> Result<Self, TrainError> {
        let origin = origin.into();
        let values = to_object(&origin, settings)?;
        Ok(ConfigLayer { origin, values })
    }

    fn preset(&self) -> Result<Option<Preset>, TrainError> {
        self.values
            .get("preset")
            .map(|value| {
                serde_json::from_value(value.clone()).map_err(|error| {
                    TrainError::InvalidConfig(format!("{}: preset: {error}", self.origin))
                })
            })
            .transpose()
    }
}

fn to_object(origin: &str, settings: &impl Serialize) -> Result<Map<String, Value>, TrainError> {
    match serde_json::to_value(settings) {
        Ok(Value::Object(values)) => Ok(values),
        Ok(other) => Err(TrainError::InvalidConfig(format!(
            "{origin}: expected a table of settings, found {other}"
        ))),
        Err(error) => Err(TrainError::InvalidConfig(format!("{origin}: {error}"))),
    }
}

/// Applies `layers` in order over `base` (or over the seed recipe for the preset the layers
/// name, `base` when none is given), then validates the result.
pub fn resolve(
    base: Option<&TrainConfig>,
    layers: &[ConfigLayer],
) -> Result<TrainConfig, TrainError> {
    let base = match base {
        Some(base) => base.clone(),
        None => {
            // The preset decides the defaults of the model shape, so it is settled first.
            let mut preset = Preset::Base;
            for layer in layers {
                preset = layer.preset()?.unwrap_or(preset);
            }
            TrainConfig::new("", "", preset)
        }
    };
    let base = serde_json::to_value(&base).map_err(|source| TrainError::Json {
        what: "the training configuration",
        source,
    })?;
    let mut merged = base.clone();
    for layer in layers {
        // Checking each layer on its own names the layer a bad key or value comes from.
        let mut alone = base.clone();
        merge(&mut alone, &layer.values);
        parse(alone, &layer.origin)?;
        merge(&mut merged, &layer.values);
    }
    let config = parse(merged, "the combined configuration")?;
    config.validate()?;
    Ok(config)
}

fn parse(value: Value, origin: &str) -> Result<TrainConfig, TrainError> {
    serde_json::from_value(value)
        .map_err(|error| TrainError::InvalidConfig(format!("{origin}: {error}")))
}

/// Overrides `target`'s keys with `layer`'s, descending into tables both sides have.
fn merge(target: &mut Value, layer: &Map<String, Value>) {
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in layer {
        match (target.get_mut(key), value) {
            (Some(existing @ Value::Object(_)), Value::Object(nested)) => merge(existing, nested),
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Objective;
    use crate::config::ScheduleKind;

    fn flags(values: Value) -> ConfigLayer {
        ConfigLayer::from_serialize("command line", &values).expect("an object")
    }

    #[test]
    fn defaults_then_file_then_flags() {
        let file = ConfigLayer::from_toml(
            "run.toml",
            "preset = \"small\"\nlr = 1e-3\nwarmup_steps = 10\nobjective = \"causal\"\n\
             max_grad_norm = 0\nlr_schedule = \"constant_with_warmup\"\n[model]\nlayers = 3\n",
        )
        .expect("parses");
        let cli = flags(serde_json::json!({ "lr": 2e-3, "pipeline": "http://h:1" }));
        let config = resolve(None, &[file, cli]).expect("resolves");
        assert_eq!(config.lr, 2e-3, "the command line wins");
        assert_eq!(config.warmup_steps, 10, "the file beats the default");
        assert_eq!(config.objective, Objective::Causal);
        assert_eq!(config.lr_schedule, ScheduleKind::ConstantWithWarmup);
        assert_eq!(config.max_grad_norm, None, "0 disables clipping");
        assert_eq!(config.model.layers, 3);
        assert_eq!(
            config.model.hidden, 256,
            "the rest of the shape is the small preset's"
        );
        assert_eq!(config.weight_decay, 0.1, "the seed recipe fills the rest");
        assert_eq!(config.save_every, 500);
        assert_eq!(config.pipeline, "http://h:1");
    }

    #[test]
    fn a_preset_on_the_command_line_resizes_the_model() {
        let file = ConfigLayer::from_toml("f", "preset = \"large\"").expect("parses");
        let config = resolve(
            None,
            &[file, flags(serde_json::json!({ "preset": "tiny" }))],
        )
        .expect("resolves");
        assert_eq!(config.model, Preset::Tiny.shape());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_their_layer() {
        let typo = ConfigLayer::from_toml("config file x.toml", "learning_rate = 1").expect("toml");
        let error = resolve(None, &[typo]).expect_err("unknown key").to_string();
        assert!(
            error.contains("x.toml") && error.contains("learning_rate"),
            "{error}"
        );

        let bad = flags(serde_json::json!({ "batch_size": -3 }));
        let error = resolve(None, &[bad]).expect_err("negative").to_string();
        assert!(error.contains("command line"), "{error}");

        let zero = flags(serde_json::json!({ "save_every": 0 }));
        let error = resolve(None, &[zero]).expect_err("validated").to_string();
        assert!(error.contains("save_every"), "{error}");
    }

    #[test]
    fn the_written_config_reads_back_as_a_layer() {
        let mut config = TrainConfig::new("http://h:1", "out", Preset::Tiny);
        config.model.layers = 5;
        config.max_grad_norm = None;
        let layer = ConfigLayer::from_toml("saved", &config.to_toml().expect("toml")).expect("ok");
        assert_eq!(resolve(None, &[layer]).expect("resolves"), config);
    }

    #[test]
    fn a_base_configuration_replaces_the_defaults() {
        let mut base = TrainConfig::new("http://h:1", "out", Preset::Tiny);
        base.lr = 7e-4;
        let config = resolve(Some(&base), &[flags(serde_json::json!({ "max_steps": 9 }))])
            .expect("resolves");
        assert_eq!(config.lr, 7e-4);
        assert_eq!(config.max_steps, 9);
    }
}
