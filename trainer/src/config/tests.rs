//! Tests of `config`: presets, validation, and files written by older versions.

use super::*;

#[test]
fn presets_have_the_documented_shapes() {
    assert_eq!(
        Preset::Base.shape(),
        ModelShape {
            layers: 12,
            hidden: 768,
            heads: 12,
            intermediate: 3072
        }
    );
    for preset in [Preset::Tiny, Preset::Small, Preset::Base, Preset::Large] {
        TrainConfig::new("http://x", "out", preset)
            .validate()
            .expect("every preset is valid");
    }
}

#[test]
fn rejects_heads_that_do_not_divide_hidden() {
    let mut config = TrainConfig::new("http://x", "out", Preset::Tiny);
    config.model.heads = 3;
    assert!(matches!(
        config.validate(),
        Err(TrainError::InvalidConfig(_))
    ));
}

#[test]
fn rejects_short_sequences_and_zero_counts() {
    let mut config = TrainConfig::new("http://x", "out", Preset::Tiny);
    config.seq_len = 1;
    assert!(config.validate().is_err());
    let mut config = TrainConfig::new("http://x", "out", Preset::Tiny);
    config.grad_accum = 0;
    assert!(config.validate().is_err());
}

#[test]
fn round_trips_through_json() {
    let dir = std::env::temp_dir().join(format!("flightlm-config-{}", std::process::id()));
    let config = TrainConfig::new("http://127.0.0.1:50051", &dir, Preset::Small);
    let path = config.save(&dir).expect("saves");
    assert_eq!(path, dir.join("config.toml"));
    let text = std::fs::read_to_string(dir.join("config.json")).expect("reads");
    let loaded: TrainConfig = serde_json::from_str(&text).expect("parses");
    assert_eq!(loaded, config);
    assert!(text.contains("\"objective\": \"mlm\""));
    let toml_text = std::fs::read_to_string(dir.join("config.toml")).expect("reads");
    let from_toml: TrainConfig = toml::from_str(&toml_text).expect("parses");
    assert_eq!(from_toml, config);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bf16_is_valid_on_both_devices() {
    let mut config = TrainConfig::new("http://x", "out", Preset::Tiny);
    config.precision = Precision::Bf16;
    config.validate().expect("bf16 on the cpu is valid");
    config.device = DeviceKind::Cuda;
    config.validate().expect("bf16 on cuda is valid");
}

#[test]
fn precision_is_saved_and_defaults_to_f32() {
    let mut config = TrainConfig::new("http://x", "out", Preset::Tiny);
    config.device = DeviceKind::Cuda;
    config.precision = Precision::Bf16;
    let text = config.to_toml().expect("writes");
    assert!(text.contains("precision = \"bf16\""), "{text}");
    assert_eq!(
        toml::from_str::<TrainConfig>(&text).expect("parses"),
        config
    );
    let older = text.replace("precision = \"bf16\"\n", "");
    let loaded: TrainConfig = toml::from_str(&older).expect("parses");
    assert_eq!(loaded.precision, Precision::F32);
}

#[test]
fn configurations_saved_without_eval_blocks_score_the_whole_split() {
    let config = TrainConfig::new("http://x", "out", Preset::Tiny);
    assert_eq!(config.eval_block_limit(), Some(4096));
    let text = config.to_toml().expect("writes");
    let older = text.replace("eval_blocks = 4096\n", "");
    assert_ne!(older, text);
    let loaded: TrainConfig = toml::from_str(&older).expect("parses");
    assert_eq!(loaded.eval_block_limit(), None);
}

#[test]
fn disabled_clipping_survives_toml() {
    let mut config = TrainConfig::new("http://x", "out", Preset::Tiny);
    config.max_grad_norm = None;
    let text = config.to_toml().expect("writes");
    assert!(text.contains("max_grad_norm = 0.0"), "{text}");
    let loaded: TrainConfig = toml::from_str(&text).expect("parses");
    assert_eq!(loaded, config);
}
