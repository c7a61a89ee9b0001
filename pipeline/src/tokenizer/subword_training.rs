//! WordPiece and Unigram training with Python `tokenizers`' layouts and defaults, made
//! reproducible: the same corpus and settings give the same file, byte for byte.
//!
//! Upstream training of both is not reproducible run to run, in Python and in Rust alike
//! (huggingface/tokenizers #1794): the BPE trainer under WordPiece numbers the `##x` pieces while
//! iterating a hash map whose keys are seeded at random per process, and merge ties are broken by
//! those numbers; the Unigram trainer takes its sentences from such a map, sums floats over as
//! many chunks as the machine has threads, and orders tied pieces by walking a hash set. Here the
//! word counts are taken first (integer sums, in any order), sorted, and handed to the crates'
//! own `do_train` — WordPiece's as a map with fixed hash keys filled in sorted order, Unigram's as
//! a sorted list inside a one-thread pool, so every float sum runs in one order. Unigram's last
//! step then walks a hash set: characters of the corpus that the model dropped come back with a
//! ladder of small scores in that set's order, and pieces of equal score keep the order they came
//! in; here the ladder is dealt out again in character order and ties are ordered by piece.
//! What each model learns is upstream's algorithm unchanged; only its tie-breaking is fixed.

use std::collections::{BTreeSet, HashMap};

use ahash::AHashMap;
use compact_str::CompactString;
use rayon::prelude::*;
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::unigram::{Unigram, UnigramTrainerBuilder};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::{BertNormalizer, Nmt, Replace, Sequence, NFKC};
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::bert::BertProcessing;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString,
    PreTokenizer, Tokenizer,
};

/// BERT's special tokens, in BERT's order (`[PAD]`=0 … `[MASK]`=4), as Python's
/// `BertWordPieceTokenizer` trains them.
pub const WORDPIECE_SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
/// T5's (`<pad>`=0 `</s>`=1 `<unk>`=2) plus a mask token, so masked-LM pre-training can use it.
pub const UNIGRAM_SPECIAL_TOKENS: [&str; 4] = ["<pad>", "</s>", "<unk>", "<mask>"];
/// Python's `WordPieceTrainer` keeps at most this many characters in the initial alphabet.
const WORDPIECE_LIMIT_ALPHABET: usize = 1000;
/// Fixed keys for the word-count map WordPiece training iterates (any constants do).
const WORD_MAP_SEEDS: [u64; 4] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
];

fn special_tokens(tokens: &[&str]) -> Vec<AddedToken> {
    tokens
        .iter()
        .map(|token| AddedToken::from(token.to_string(), true))
        .collect()
}

/// A tokenizer laid out as Python's `BertWordPieceTokenizer` (lowercasing BERT normalizer, BERT
/// pre-tokenizer, `[CLS] … [SEP]`, `##` pieces), trained on `documents`.
pub fn train_wordpiece(
    documents: impl Iterator<Item = Vec<String>>,
    vocab_size: usize,
    min_frequency: u64,
) -> Result<Tokenizer, String> {
    let mut tokenizer = Tokenizer::new(WordPiece::default());
    tokenizer.with_normalizer(Some(BertNormalizer::new(true, true, None, true)));
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_decoder(Some(WordPieceDecoder::default()));
    let counts = count_words(&tokenizer, documents)?;
    let mut word_counts = HashMap::with_capacity_and_hasher(
        counts.len(),
        ahash::RandomState::with_seeds(
            WORD_MAP_SEEDS[0],
            WORD_MAP_SEEDS[1],
            WORD_MAP_SEEDS[2],
            WORD_MAP_SEEDS[3],
        ),
    );
    for (word, count) in counts {
        word_counts.insert(CompactString::from(word), count);
    }
    let word_counts = AHashMap::from(word_counts);
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .special_tokens(special_tokens(&WORDPIECE_SPECIAL_TOKENS))
        .limit_alphabet(WORDPIECE_LIMIT_ALPHABET)
        .continuing_subword_prefix("##".into())
        .show_progress(false)
        .build();
    let mut bpe = BPE::default();
    let special = trainer
        .do_train(&word_counts, &mut bpe)
        .map_err(|error| error.to_string())?;
    tokenizer.with_model(WordPiece::from_bpe(&bpe));
    tokenizer.add_special_tokens(&special);
    let id = |token: &str| tokenizer.token_to_id(token).unwrap_or_default();
    let processor =
        BertProcessing::new(("[SEP]".into(), id("[SEP]")), ("[CLS]".into(), id("[CLS]")));
    tokenizer.with_post_processor(Some(processor));
    Ok(tokenizer)
}

/// A tokenizer laid out as Python's `SentencePieceUnigramTokenizer` (NMT + NFKC normalization,
/// runs of spaces collapsed, Metaspace `▁` prepended to every word) with T5's `… </s>`
/// post-processor, trained on `documents`.
pub fn train_unigram(
    documents: impl Iterator<Item = Vec<String>>,
    vocab_size: usize,
) -> Result<Tokenizer, String> {
    let mut tokenizer = Tokenizer::new(Unigram::default());
    let spaces = Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(" {2,}".into()),
        " ",
    )
    .map_err(|error| error.to_string())?;
    tokenizer.with_normalizer(Some(Sequence::new(vec![
        Nmt.into(),
        NFKC.into(),
        spaces.into(),
    ])));
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tokenizer.with_decoder(Some(MetaspaceDecoder::new(
        '▁',
        PrependScheme::Always,
        true,
    )));
    let counts = count_words(&tokenizer, documents)?;
    let sentences: Vec<(String, u32)> = counts
        .into_iter()
        .map(|(word, count)| (word, count.min(u64::from(u32::MAX)) as u32))
        .collect();
    let required = required_chars(&sentences);
    let trainer = UnigramTrainerBuilder::default()
        .vocab_size(vocab_size as u32)
        .special_tokens(special_tokens(&UNIGRAM_SPECIAL_TOKENS))
        .unk_token(Some("<unk>".into()))
        .show_progress(false)
        .build()
        .map_err(|error| error.to_string())?;
    // One thread: the E step sums floats per chunk, and the chunks are as many as the pool's
    // threads, so a fixed pool size is what makes the sums (and the vocabulary) repeat.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|error| error.to_string())?;
    let mut model = Unigram::default();
    let special = pool
        .install(|| trainer.do_train(sentences, &mut model))
        .map_err(|error| error.to_string())?;
    let model = order_ties(&model, &required)?;
    tokenizer.with_model(model);
    tokenizer.add_special_tokens(&special);
    let eos = tokenizer.token_to_id("</s>").unwrap_or_default();
    let processor = TemplateProcessing::builder()
        .try_single("$A </s>")
        .and_then(|builder| builder.try_pair("$A </s> $B:1 </s>:1"))
        .map_err(|error| error.to_string())?
        .special_tokens(vec![("</s>", eos)])
        .build()
        .map_err(|error| error.to_string())?;
    tokenizer.with_post_processor(Some(processor));
    Ok(tokenizer)
}

/// Every character of the training words: what the Unigram trainer must keep as a piece.
fn required_chars(words: &[(String, u32)]) -> BTreeSet<String> {
    words
        .iter()
        .flat_map(|(word, _)| word.chars())
        .map(String::from)
        .collect()
}

/// Upstream's step between dropped characters' scores (`min_score_penalty_delta`).
const DROPPED_CHAR_STEP: f64 = 0.0001;

/// The pieces after the special tokens in a fixed order. Upstream's `finalize` gives each corpus
/// character the model dropped the score `min_score + k·step`, k counting in hash-set order, then
/// sorts by score alone. The ladder's scores are recognized (the same float additions from the
/// lowest score), dealt out again in character order, and equal scores ordered by piece.
fn order_ties(model: &Unigram, required: &BTreeSet<String>) -> Result<Unigram, String> {
    let pieces: Vec<(String, f64)> = model
        .iter()
        .map(|(piece, score)| (piece.clone(), *score))
        .collect();
    let specials = UNIGRAM_SPECIAL_TOKENS.len().min(pieces.len());
    let (head, tail) = pieces.split_at(specials);
    let mut tail = tail.to_vec();
    let lowest = tail
        .iter()
        .map(|(_, score)| *score)
        .fold(f64::INFINITY, f64::min);
    let mut ladder = Vec::with_capacity(required.len());
    let mut penalty = 0.0;
    for _ in 0..required.len() {
        ladder.push(lowest + penalty);
        penalty += DROPPED_CHAR_STEP;
    }
    let on_ladder = |score: f64| ladder.iter().any(|step| step.to_bits() == score.to_bits());
    let mut dropped: Vec<usize> = (0..tail.len())
        .filter(|index| required.contains(&tail[*index].0) && on_ladder(tail[*index].1))
        .collect();
    dropped.sort_by(|a, b| tail[*a].0.cmp(&tail[*b].0));
    for (step, index) in dropped.into_iter().enumerate() {
        tail[index].1 = ladder[step];
    }
    tail.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let unk_id = head.iter().position(|(piece, _)| piece == "<unk>");
    Unigram::from(
        [head.to_vec(), tail].concat(),
        unk_id,
        model.byte_fallback(),
    )
    .map_err(|error| error.to_string())
}

/// How often each pre-tokenized word occurs, as the trainers' `feed` counts them (normalized,
/// then split by the pre-tokenizer), sorted by word.
fn count_words(
    tokenizer: &Tokenizer,
    documents: impl Iterator<Item = Vec<String>>,
) -> Result<Vec<(String, u64)>, String> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for chunk in documents {
        let partial = chunk
            .par_iter()
            .map(|text| {
                let mut local: HashMap<String, u64> = HashMap::new();
                for word in split_words(tokenizer, text)? {
                    *local.entry(word).or_default() += 1;
                }
                Ok(local)
            })
            .reduce(
                || Ok(HashMap::new()),
                |left: Result<HashMap<String, u64>, String>, right| {
                    let (mut left, right) = (left?, right?);
                    for (word, count) in right {
                        *left.entry(word).or_default() += count;
                    }
                    Ok(left)
                },
            )?;
        for (word, count) in partial {
            *counts.entry(word).or_default() += count;
        }
    }
    let mut counts: Vec<(String, u64)> = counts.into_iter().collect();
    counts.sort_unstable();
    Ok(counts)
}

/// `text` normalized and pre-tokenized as `Tokenizer::train` does before a trainer sees it.
fn split_words(tokenizer: &Tokenizer, text: &str) -> Result<Vec<String>, String> {
    let mut normalized = NormalizedString::from(text);
    if let Some(normalizer) = tokenizer.get_normalizer() {
        normalizer
            .normalize(&mut normalized)
            .map_err(|error| error.to_string())?;
    }
    let mut pre_tokenized = PreTokenizedString::from(normalized);
    if let Some(pre_tokenizer) = tokenizer.get_pre_tokenizer() {
        pre_tokenizer
            .pre_tokenize(&mut pre_tokenized)
            .map_err(|error| error.to_string())?;
    }
    Ok(pre_tokenized
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(word, _, _)| word.to_owned())
        .collect())
}
