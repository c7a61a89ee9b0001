//! `flightlm-trainer generate`: continue prompts with a causal model from an HF model directory
//! or a training checkpoint, and print the text (or, with `--json`, one JSON line per prompt).
//! Throughput, and any cut of the prompt or the context, go to stderr.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use clap::Args;
use serde::Serialize;

use super::generation::{generate, GenerateSettings, Generation, ModelLogits, Stop};
use super::prompts::{read_ids_file, read_prompt_lines, text_prompt, Framing, Prompt};
use super::sampling::Sampling;
use crate::config::{DeviceKind, Objective};
use crate::hf::{load_hf_dir, HfError, HfRobertaConfig, HfTokenizer, HF_DIR, TOKENIZER_FILE};
use crate::rng::SplitMix64;
use crate::run::checkpoint::CHECKPOINTS_DIR;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A causal model: an HF model directory (config.json, model.safetensors, tokenizer.json)
    /// or a training checkpoint (OUT/checkpoints/step-…).
    #[arg(long)]
    pub model: PathBuf,
    /// tokenizer.json [default: the model directory's, else the checkpoint's run's].
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Text to continue; repeat for several prompts.
    #[arg(long)]
    pub prompt: Vec<String>,
    /// A file of text prompts, one per line (blank lines skipped).
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// A file of prompts as token ids, one JSON array per line, read as they are (no start
    /// token is added).
    #[arg(long)]
    pub ids_file: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// The end token cannot end a text before this many new tokens.
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    /// 0 always takes the most likely token (greedy); higher values flatten the distribution.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Draw among the K most likely tokens only (0: all).
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Draw among the most likely tokens whose probability reaches P, in (0, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f64,
    /// Seed of the draws; the same seed and settings give the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Do not put the tokenizer's start token (`<s>`) before text prompts.
    #[arg(long)]
    pub no_start_token: bool,
    /// Read the whole context again for every token instead of keeping a key/value cache
    /// (slower; the same tokens).
    #[arg(long)]
    pub no_cache: bool,
    /// Print one JSON line per prompt (ids, text, stop reason, speed) instead of the text.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

impl GenerateArgs {
    pub fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
        }
    }
}

/// One prompt's result, as `--json` prints it.
#[derive(Serialize)]
struct Record<'a> {
    prompt: &'a str,
    input_ids: &'a [u32],
    prompt_cut: usize,
    output_ids: &'a [u32],
    text: &'a str,
    generated_text: String,
    stop: Stop,
    new_tokens: usize,
    context_shifts: usize,
    seconds: f64,
    tokens_per_s: f64,
    cache: bool,
}

/// The position id of a sequence's first token: HF RoBERTa numbers positions from
/// `pad_token_id + 1`.
pub fn first_position_id(config: &HfRobertaConfig) -> usize {
    // -1 (no pad token) counts from 0, as `position_offset` does.
    usize::try_from(config.pad_token_id + 1).unwrap_or(0)
}

/// Runs `generate` on `device`, printing to `out`.
pub fn generate_command<B: Backend>(
    args: &GenerateArgs,
    device: &B::Device,
    out: &mut dyn Write,
) -> Result<(), HfError> {
    let sampling = args.sampling();
    sampling.validate()?;
    let dir = model_dir(&args.model)?;
    let (config, model) = load_hf_dir::<B>(&dir, device)?;
    if config.objective() != Objective::Causal {
        return Err(HfError::Input(format!(
            "{} is a masked-LM model (objective mlm); generate continues text with a causal \
             model (one trained with --objective causal)",
            args.model.display()
        )));
    }
    let tokenizer = HfTokenizer::load(&tokenizer_path(args, &dir)?)?;
    let framing = Framing::of(&tokenizer)?;
    let prompts = collect_prompts(args, &tokenizer, &framing, config.vocab_size)?;
    let settings = GenerateSettings {
        max_new_tokens: args.max_new_tokens,
        min_new_tokens: args.min_new_tokens,
        sampling,
        end_token: framing.end,
        max_context: config.max_tokens(),
    };
    for (index, prompt) in prompts.iter().enumerate() {
        let mut logits =
            ModelLogits::new(&model, first_position_id(&config), !args.no_cache, device);
        let mut rng = SplitMix64::for_stream(args.seed, index as u64);
        let generation = generate(&mut logits, &prompt.ids, &settings, &mut rng)?;
        announce(prompt, &generation, settings.max_context, !args.no_cache);
        let text = continuation(&tokenizer, &generation)?;
        let generated_text = format!("{}{text}", prompt.text);
        let line = if args.json {
            let record = Record {
                prompt: &prompt.text,
                input_ids: &generation.prompt,
                prompt_cut: generation.prompt_cut,
                output_ids: &generation.new_tokens,
                text: &text,
                generated_text,
                stop: generation.stop,
                new_tokens: generation.new_tokens.len(),
                context_shifts: generation.context_shifts,
                seconds: generation.seconds,
                tokens_per_s: tokens_per_s(&generation),
                cache: !args.no_cache,
            };
            serde_json::to_string(&record).map_err(|error| HfError::Encode {
                what: "the output",
                message: error.to_string(),
            })?
        } else if index + 1 < prompts.len() {
            format!("{generated_text}\n---")
        } else {
            generated_text
        };
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|source| HfError::write("stdout", source))?;
    }
    Ok(())
}

/// An HF directory as it is, or a training checkpoint's `hf/`.
fn model_dir(path: &Path) -> Result<PathBuf, HfError> {
    if path.join("config.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let nested = path.join(HF_DIR);
    if nested.join("config.json").is_file() {
        return Ok(nested);
    }
    Err(HfError::Input(format!(
        "{} holds no config.json: pass an HF model directory or a training checkpoint",
        path.display()
    )))
}

/// `--tokenizer`, else the model directory's, else (a checkpoint's `hf/`) its run's.
fn tokenizer_path(args: &GenerateArgs, dir: &Path) -> Result<PathBuf, HfError> {
    if let Some(path) = &args.tokenizer {
        return Ok(path.clone());
    }
    // A checkpoint's `OUT/checkpoints/step-N/hf` -> the run's `OUT/tokenizer.json`.
    let in_checkpoints = dir
        .ancestors()
        .nth(2)
        .and_then(Path::file_name)
        .is_some_and(|name| name == CHECKPOINTS_DIR);
    let run = dir
        .ancestors()
        .nth(3)
        .filter(|_| in_checkpoints)
        .map(|run| run.join(TOKENIZER_FILE));
    [Some(dir.join(TOKENIZER_FILE)), run]
        .into_iter()
        .flatten()
        .find(|path| path.is_file())
        .ok_or_else(|| {
            HfError::Input(format!(
                "{} has no {TOKENIZER_FILE}: pass --tokenizer with the run's",
                dir.display()
            ))
        })
}

fn collect_prompts(
    args: &GenerateArgs,
    tokenizer: &HfTokenizer,
    framing: &Framing,
    vocab_size: usize,
) -> Result<Vec<Prompt>, HfError> {
    let add_start = !args.no_start_token;
    let mut prompts = Vec::new();
    for (index, text) in args.prompt.iter().enumerate() {
        let origin = format!("--prompt {}", index + 1);
        prompts.push(text_prompt(tokenizer, framing, text, add_start, origin)?);
    }
    if let Some(path) = &args.prompt_file {
        for (line, text) in read_prompt_lines(path)? {
            let origin = format!("{} line {line}", path.display());
            prompts.push(text_prompt(tokenizer, framing, &text, add_start, origin)?);
        }
    }
    if let Some(path) = &args.ids_file {
        prompts.extend(read_ids_file(path, vocab_size, tokenizer)?);
    }
    if prompts.is_empty() {
        return Err(HfError::Input(
            "nothing to continue: pass --prompt TEXT, --prompt-file FILE or --ids-file FILE".into(),
        ));
    }
    Ok(prompts)
}

/// The text of the new tokens, as it reads after the prompt.
fn continuation(tokenizer: &HfTokenizer, generation: &Generation) -> Result<String, HfError> {
    let prompt = tokenizer.decode(&generation.prompt, true)?;
    let mut all = generation.prompt.clone();
    all.extend(&generation.new_tokens);
    let whole = tokenizer.decode(&all, true)?;
    // Decoding the whole keeps characters whose bytes span the prompt's edge intact.
    match whole.strip_prefix(&prompt) {
        Some(rest) => Ok(rest.to_string()),
        None => tokenizer.decode(&generation.new_tokens, true),
    }
}

fn tokens_per_s(generation: &Generation) -> f64 {
    generation.new_tokens.len() as f64 / generation.seconds.max(1e-9)
}

/// Tells stderr what was cut and how fast the tokens came.
fn announce(prompt: &Prompt, generation: &Generation, max_context: usize, cached: bool) {
    let origin = &prompt.origin;
    if generation.prompt_cut > 0 {
        eprintln!(
            "{origin}: the prompt has {} tokens and the model reads {max_context}: its first {} \
             were cut, generation continues its last {}",
            prompt.ids.len(),
            generation.prompt_cut,
            generation.prompt.len()
        );
    }
    if generation.context_shifts > 0 {
        eprintln!(
            "{origin}: the context filled the model's {max_context} positions {} time(s); each \
             time generation went on from its last {} tokens",
            generation.context_shifts,
            max_context / 2
        );
    }
    let ended = match generation.stop {
        Stop::EndToken => ", ended by the end token",
        Stop::MaxNewTokens => "",
    };
    eprintln!(
        "{origin}: {} new tokens in {:.2} s: {:.1} tokens/s ({} prompt tokens, {}){ended}",
        generation.new_tokens.len(),
        generation.seconds,
        tokens_per_s(generation),
        generation.prompt.len(),
        if cached {
            "key/value cache"
        } else {
            "no cache"
        }
    );
}
