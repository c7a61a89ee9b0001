//! Round trips through HF directories: export, import, re-export, and `--init-from`.

use std::path::PathBuf;

use flightlm_shared::TokenizerInfo;

use super::*;
use crate::data::source::BlockSource;
use crate::model::RobertaConfig;
use crate::CpuBackend;

type TestBackend = CpuBackend;

fn tokenizer() -> TokenizerInfo {
    TokenizerInfo::roberta("test", 60)
}

fn model_config(causal: bool) -> RobertaConfig {
    RobertaConfig::new(60, 16, 2, 2, 24, 12)
        .with_pad_id(Some(1))
        .with_causal(causal)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flightlm-hf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn export_then_import_gives_the_same_model() {
    let _rng = crate::backend_rng_lock();
    let device = Default::default();
    for causal in [false, true] {
        let config = model_config(causal);
        let model = config.init::<TestBackend>(&device);
        let dir = scratch(if causal { "causal" } else { "mlm" });
        let hf_config = HfRobertaConfig::from_model(&config, &tokenizer());
        export_hf(&model, &hf_config, None, &dir).expect("exports");

        let (read_config, loaded) = load_hf_dir::<TestBackend>(&dir, &device).expect("loads");
        assert_eq!(read_config, hf_config);
        assert_eq!(loaded.causal, causal);
        let original = hf_tensors(&model).expect("tensors");
        assert_eq!(original, hf_tensors(&loaded).expect("tensors"));
        assert_eq!(original.len(), 5 + 16 * 2 + 5, "HF keys of a 2-layer model");
        let names: Vec<&str> = original.iter().map(|(name, _)| name.as_str()).collect();
        assert!(names.contains(&"roberta.encoder.layer.1.attention.self.query.weight"));
        assert!(!names.iter().any(|name| name.contains("decoder")));

        let ids = [0u32, 7, 8, 4, 9, 2];
        let before = sequence_logits(&model, &ids, &device).expect("logits");
        let after = sequence_logits(&loaded, &ids, &device).expect("logits");
        assert_eq!(before, after);
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn linear_weights_are_stored_as_out_by_in() {
    let _rng = crate::backend_rng_lock();
    let config = RobertaConfig::new(60, 16, 1, 2, 24, 12).with_pad_id(Some(1));
    let model = config.init::<TestBackend>(&Default::default());
    let tensors = hf_tensors(&model).expect("tensors");
    let shape = |name: &str| {
        tensors
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, tensor)| tensor.shape.clone())
            .expect("present")
    };
    assert_eq!(
        shape("roberta.encoder.layer.0.intermediate.dense.weight"),
        vec![24, 16]
    );
    assert_eq!(
        shape("roberta.encoder.layer.0.output.dense.weight"),
        vec![16, 24]
    );
    // The first row of HF's [out, in] weight is the first column of burn's [in, out].
    let burn_weight: Vec<f32> = model.layers[0]
        .intermediate
        .weight
        .val()
        .into_data()
        .to_vec()
        .expect("f32");
    let hf_weight = &tensors
        .iter()
        .find(|(key, _)| key == "roberta.encoder.layer.0.intermediate.dense.weight")
        .expect("present")
        .1
        .values;
    for input in 0..16 {
        assert_eq!(hf_weight[input], burn_weight[input * 24]);
    }
}

#[test]
fn init_from_rejects_another_network_by_name() {
    let _rng = crate::backend_rng_lock();
    let device = Default::default();
    let stored = model_config(false);
    let dir = scratch("warm");
    let model = stored.init::<TestBackend>(&device);
    export_hf(
        &model,
        &HfRobertaConfig::from_model(&stored, &tokenizer()),
        None,
        &dir,
    )
    .expect("exports");

    let started = warm_start(stored.init::<TestBackend>(&device), &stored, &dir).expect("fits");
    assert_eq!(
        hf_tensors(&started).expect("tensors"),
        hf_tensors(&model).expect("tensors")
    );

    let wider = RobertaConfig::new(60, 16, 3, 2, 24, 12).with_pad_id(Some(1));
    let error = warm_start(wider.init::<TestBackend>(&device), &wider, &dir)
        .expect_err("three layers do not fit two");
    assert!(
        error.to_string().contains("num_hidden_layers is 2"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn missing_extra_and_untied_tensors_are_named() {
    let _rng = crate::backend_rng_lock();
    let device = Default::default();
    let config = model_config(false);
    let model = config.init::<TestBackend>(&device);
    let dir = scratch("partial");
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(WEIGHTS_FILE);
    let complete = hf_tensors(&model).expect("tensors");
    let word_embeddings = complete
        .iter()
        .find(|(name, _)| name == "roberta.embeddings.word_embeddings.weight")
        .map(|(_, tensor)| tensor.clone())
        .expect("present");
    let load = |tensors: Vec<(String, HostTensor)>| {
        safetensors::serialize_to_file(tensors, None, &path).expect("writes");
        load_weights(config.init::<TestBackend>(&device), &path).map(|_| ())
    };

    let mut missing = complete.clone();
    missing.retain(|(name, _)| name != "lm_head.dense.bias");
    let error = load(missing).expect_err("missing");
    assert!(
        error
            .to_string()
            .contains("`lm_head.dense.bias` is missing"),
        "{error}"
    );

    let mut extra = complete.clone();
    extra.push(("classifier.dense.weight".into(), word_embeddings.clone()));
    let error = load(extra).expect_err("extra");
    assert!(
        error
            .to_string()
            .contains("`classifier.dense.weight` has no counterpart"),
        "{error}"
    );

    // Files that spell out the tied decoder load when it is the word embeddings, not otherwise.
    let mut tied = complete.clone();
    tied.push(("lm_head.decoder.weight".into(), word_embeddings.clone()));
    load(tied).expect("an explicit tied decoder is fine");
    let mut untied = complete;
    let mut other = word_embeddings;
    other.values[0] += 1.0;
    untied.push(("lm_head.decoder.weight".into(), other));
    let error = load(untied).expect_err("untied");
    assert!(error.to_string().contains("tie the decoder"), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_run_started_from_an_export_continues_where_it_stopped() {
    use crate::config::{Preset, TrainConfig};
    use crate::data::synthetic::{SyntheticConfig, SyntheticSource};
    use crate::run::metrics::MetricsLog;
    use burn::backend::Autodiff;
    use burn::module::AutodiffModule;

    let _rng = crate::backend_rng_lock();
    type TrainBackend = Autodiff<TestBackend>;
    let mut config = TrainConfig::new("memory", "unused", Preset::Tiny);
    config.model.hidden = 32;
    config.model.intermediate = 64;
    config.seq_len = 16;
    config.batch_size = 4;
    config.grad_accum = 1;
    config.max_steps = 3;
    config.warmup_steps = 1;
    config.lr = 1e-2;
    let source = || SyntheticSource::new(SyntheticConfig::new(128, 16, 4));
    let device = Default::default();
    let first = crate::run::train::train::<TrainBackend>(
        &config,
        &mut source(),
        &device,
        &mut MetricsLog::in_memory(),
    )
    .expect("trains");
    let dir = scratch("continue");
    let tokenizer_info = source().tokenizer().clone();
    let model_config = RobertaConfig::from_train_config(&config, &tokenizer_info);
    let hf_config = HfRobertaConfig::from_model(&model_config, &tokenizer_info);
    export_hf(&first.model.valid(), &hf_config, None, &dir).expect("exports");

    config.init_from = Some(dir.clone());
    let second = crate::run::train::train::<TrainBackend>(
        &config,
        &mut source(),
        &device,
        &mut MetricsLog::in_memory(),
    )
    .expect("trains from the export");
    assert_eq!(
        second.first_eval, first.last_eval,
        "the second run starts with the first run's final model"
    );

    config.model.layers = 3;
    let error = crate::run::train::train::<TrainBackend>(
        &config,
        &mut source(),
        &device,
        &mut MetricsLog::in_memory(),
    )
    .expect_err("a deeper network does not fit");
    assert!(
        error.to_string().contains("num_hidden_layers is 2"),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
