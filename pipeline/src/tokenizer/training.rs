//! Trains a tokenizer from the same sources a pipeline reads.
//!
//! The default is byte-level BPE with RoBERTa's special tokens and post-processor: a
//! `tokenizer.json` that Python `tokenizers` and `transformers.RobertaTokenizerFast(tokenizer_file=…)`
//! load unchanged, byte-level pre-tokenizer and decoder without a prefix space, `<s>`=0 `<pad>`=1
//! `</s>`=2 `<unk>`=3 `<mask>`=4, and `RobertaProcessing` adding `<s> … </s>`. WordPiece (BERT's
//! layout) and Unigram (T5's) come from [`super::subword_training`]. Documents are read through
//! the same source layer as `serve`, streamed into the trainer rather than held in memory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{PipelineError, Result};
use crate::read::reader::{documents, reader_runtime, CorpusReader};
use crate::read::sources::CorpusFile;
use crate::tokenizer::file::{BOS, EOS, MASK, PAD, UNK};
use crate::tokenizer::subword_training::{train_unigram, train_wordpiece};

/// Documents handed to the trainer per channel message.
const DOCUMENTS_PER_CHUNK: usize = 4096;

#[derive(Debug, Clone)]
pub struct TokenizerTrainingConfig {
    pub model: TokenizerModel,
    pub vocab_size: usize,
    /// Pieces seen fewer times are not merged (BPE and WordPiece; Unigram has no such setting).
    pub min_frequency: u64,
}

/// The kind of tokenizer to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TokenizerModel {
    /// Byte-level BPE with RoBERTa's special tokens (GPT-2/RoBERTa style).
    #[default]
    Bpe,
    /// WordPiece with BERT's normalizer, pre-tokenizer and `[CLS] … [SEP]`.
    Wordpiece,
    /// Unigram with SentencePiece's Metaspace and T5's `… </s>`.
    Unigram,
}

impl TokenizerModel {
    /// The smallest vocabulary that holds the model's special tokens and base alphabet.
    pub fn min_vocab_size(self) -> usize {
        match self {
            TokenizerModel::Bpe => 256 + 5,
            TokenizerModel::Wordpiece | TokenizerModel::Unigram => 100,
        }
    }
}

/// What training saw, for the command's summary line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainingReport {
    pub documents: u64,
    pub skipped_rows: u64,
    pub vocab_size: usize,
    pub path: PathBuf,
}

/// Trains on every document of `manifest` and writes `out_dir/tokenizer.json`.
pub fn train_tokenizer(
    manifest: &[CorpusFile],
    config: &TokenizerTrainingConfig,
    out_dir: &Path,
) -> Result<TrainingReport> {
    let stream = DocumentStream::start(manifest.to_vec());
    let counts = stream.counts.clone();
    let failure = stream.failure.clone();
    let trained = match config.model {
        TokenizerModel::Bpe => train_byte_level_bpe(stream, config),
        TokenizerModel::Wordpiece => train_wordpiece(
            stream.chunks.into_iter(),
            config.vocab_size,
            config.min_frequency,
        ),
        TokenizerModel::Unigram => train_unigram(stream.chunks.into_iter(), config.vocab_size),
    };
    if let Some(error) = failure.lock().map(|mut slot| slot.take()).unwrap_or(None) {
        return Err(error);
    }
    let tokenizer = trained.map_err(|message| PipelineError::Tokenizer {
        path: out_dir.to_path_buf(),
        message: format!("training failed: {message}"),
    })?;
    let (documents, skipped_rows) = *counts.lock().expect("count lock");
    if documents == 0 {
        return Err(PipelineError::NoDocuments);
    }
    std::fs::create_dir_all(out_dir).map_err(|source| PipelineError::Write {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let path = out_dir.join("tokenizer.json");
    tokenizer
        .save(&path, true)
        .map_err(|error| PipelineError::Tokenizer {
            path: path.clone(),
            message: error.to_string(),
        })?;
    Ok(TrainingReport {
        documents,
        skipped_rows,
        vocab_size: tokenizer.get_vocab_size(true),
        path,
    })
}

/// RoBERTa's tokenizer: byte-level BPE over every byte, `<s> … </s>`.
fn train_byte_level_bpe(
    stream: DocumentStream,
    config: &TokenizerTrainingConfig,
) -> std::result::Result<Tokenizer, String> {
    let special_tokens = vec![
        AddedToken::from(BOS, true),
        AddedToken::from(PAD, true),
        AddedToken::from(EOS, true),
        AddedToken::from(UNK, true),
        AddedToken::from(MASK, true).lstrip(true),
    ];
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(config.vocab_size)
        .min_frequency(config.min_frequency)
        .special_tokens(special_tokens)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build()
        .into();
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_post_processor(Some(
        RobertaProcessing::new((EOS.into(), 2), (BOS.into(), 0))
            .trim_offsets(true)
            .add_prefix_space(false),
    ));

    tokenizer
        .train(&mut trainer, stream.into_iter())
        .map_err(|error| error.to_string())?;
    Ok(tokenizer)
}

/// Documents of a manifest as a blocking iterator, read by DataFusion on a thread of its own.
struct DocumentStream {
    chunks: crossbeam_channel::Receiver<Vec<String>>,
    counts: Arc<Mutex<(u64, u64)>>,
    failure: Arc<Mutex<Option<PipelineError>>>,
}

impl DocumentStream {
    fn start(manifest: Vec<CorpusFile>) -> Self {
        let (sender, chunks) = crossbeam_channel::bounded(4);
        let counts = Arc::new(Mutex::new((0, 0)));
        let failure = Arc::new(Mutex::new(None));
        let (thread_counts, thread_failure) = (counts.clone(), failure.clone());
        std::thread::spawn(move || {
            let result = read_all(&manifest, &sender, &thread_counts);
            if let Err(error) = result {
                if let Ok(mut slot) = thread_failure.lock() {
                    *slot = Some(error);
                }
            }
        });
        DocumentStream {
            chunks,
            counts,
            failure,
        }
    }

    fn into_iter(self) -> impl Iterator<Item = String> + Send {
        self.chunks.into_iter().flatten()
    }
}

fn read_all(
    manifest: &[CorpusFile],
    sender: &crossbeam_channel::Sender<Vec<String>>,
    counts: &Mutex<(u64, u64)>,
) -> Result<()> {
    reader_runtime()?.block_on(async {
        let reader = CorpusReader::new();
        let mut chunk = Vec::with_capacity(DOCUMENTS_PER_CHUNK);
        for file in manifest {
            let mut texts = reader.open(file).await?;
            while let Some(batch) = texts.next().await {
                let batch = batch?;
                let (kept, skipped) = documents(&batch);
                if let Ok(mut counts) = counts.lock() {
                    counts.0 += kept.len() as u64;
                    counts.1 += skipped;
                }
                for text in kept {
                    chunk.push(text.to_string());
                    if chunk.len() == DOCUMENTS_PER_CHUNK
                        && sender.send(std::mem::take(&mut chunk)).is_err()
                    {
                        return Ok(());
                    }
                }
            }
        }
        if !chunk.is_empty() {
            let _ = sender.send(chunk);
        }
        Ok(())
    })
}
