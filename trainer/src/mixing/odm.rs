//! Online data mixing: the sources of a mixture as the arms of an EXP3 bandit (Albalak, Pan,
//! Raffel, Wang 2023, "Efficient Online Data Mixing For Language Model Pre-Training").
//!
//! Every update the policy gets each source's mean training loss over the steps since the last
//! one. A source's reward (its loss, as in the paper, or its learning progress: the relative fall
//! of a moving average of its loss over a window of updates) is divided by the probability the source was drawn
//! with (EXP3's importance weighting) and smoothed into an estimate `R̂ ← αR̂ + (1-α)r/π`. The
//! weights are `π = (1 - Kε) · softmax(log prior + ε R̂) + ε`, where the exploration rate
//! `ε_t = min(1/K, sqrt(ln K / (K t)))` decays with the updates, and no weight falls below
//! `floor / K`. A source the policy has not seen (added while the run goes) joins with its
//! prior and an estimate of 0.
//!
//! The state is plain numbers, saved in the checkpoint, and the update is a pure function of
//! them and the losses: every rank of a data-parallel run, and a resumed run, computes the same
//! weights from the same reduced losses.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// How much of its moving average a source's loss keeps at each update (progress reward).
const LOSS_SMOOTHING: f64 = 0.7;

/// What the bandit rewards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OdmReward {
    /// The relative fall of the source's loss over the window, in percent: a source that
    /// cannot be learned (noise, a script the tokenizer does not cover) earns nothing however
    /// high its loss.
    Progress,
    /// The source's loss itself, as in the paper: favours what is hardest, learnable or not.
    Loss,
}

/// The policy's settings (from the run's configuration).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OdmSettings {
    pub reward: OdmReward,
    /// α: how much of the estimate each update keeps (the paper's 0.9).
    pub smoothing: f64,
    /// No source's weight falls below `floor / K`.
    pub floor: f64,
    /// Updates over which the progress reward measures the fall of a loss.
    pub window: usize,
}

/// One arm: a source, its prior, its reward estimate and its recent losses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub source: String,
    pub prior: f64,
    pub estimate: f64,
    pub weight: f64,
    /// The moving average of the source's mean loss at the latest updates, oldest first (at
    /// most `window + 1`).
    pub losses: VecDeque<f64>,
}

/// The policy's state: what a checkpoint holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OdmPolicy {
    pub settings: OdmSettings,
    pub arms: Vec<Arm>,
    /// Updates made so far (the bandit's round `t`).
    pub updates: u64,
}

impl OdmPolicy {
    /// A policy over `priors` (source → weight; the weights it starts with, normalized).
    pub fn new(priors: &BTreeMap<String, f64>, settings: OdmSettings) -> Self {
        let mut policy = OdmPolicy {
            settings,
            arms: Vec::new(),
            updates: 0,
        };
        for (source, prior) in priors {
            policy.join(source, *prior);
        }
        policy
    }

    /// A source the policy has not seen joins with `prior` (its weight share of the priors).
    pub fn join(&mut self, source: &str, prior: f64) {
        if self.arms.iter().any(|arm| arm.source == source) {
            return;
        }
        self.arms.push(Arm {
            source: source.to_string(),
            prior: prior.max(f64::MIN_POSITIVE),
            estimate: 0.0,
            weight: prior,
            losses: VecDeque::new(),
        });
        if self.updates > 0 {
            self.recompute(self.exploration(self.updates));
        } else {
            self.normalize_start();
        }
    }

    fn normalize_start(&mut self) {
        let total: f64 = self.arms.iter().map(|arm| arm.prior).sum();
        for arm in &mut self.arms {
            arm.weight = arm.prior / total;
        }
    }

    /// The weights in effect, by source.
    pub fn weights(&self) -> BTreeMap<String, f64> {
        self.arms
            .iter()
            .map(|arm| (arm.source.clone(), arm.weight))
            .collect()
    }

    /// ε_t = min(1/K, sqrt(ln K / (K t))).
    fn exploration(&self, round: u64) -> f64 {
        let arms = self.arms.len() as f64;
        if arms < 2.0 {
            return 0.0;
        }
        (1.0 / arms).min((arms.ln() / (arms * round.max(1) as f64)).sqrt())
    }

    /// Takes the mean loss of each source since the last update (sources absent drew no block)
    /// and returns the new weights.
    pub fn update(&mut self, losses: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
        let settings = self.settings;
        for arm in &mut self.arms {
            let Some(loss) = losses
                .get(&arm.source)
                .copied()
                .filter(|loss| loss.is_finite())
            else {
                continue;
            };
            // A source's mean loss over one update's few blocks is noisy (±0.2 nats at tiny
            // scales) next to what it learns in a window (a tenth of a nat): progress is
            // measured on a moving average of it.
            let smoothed = arm.losses.back().map_or(loss, |last| {
                LOSS_SMOOTHING * last + (1.0 - LOSS_SMOOTHING) * loss
            });
            arm.losses.push_back(smoothed);
            while arm.losses.len() > settings.window + 1 {
                arm.losses.pop_front();
            }
            let reward = match settings.reward {
                OdmReward::Loss => loss,
                OdmReward::Progress => {
                    // In percent: a loss reward is a few nats, and the exploration rate scales
                    // both; a fraction would leave the weights where they started.
                    let oldest = arm.losses.front().copied().unwrap_or(smoothed);
                    100.0 * (oldest - smoothed) / oldest.abs().max(f64::MIN_POSITIVE)
                }
            };
            let drawn_with = arm.weight.max(f64::MIN_POSITIVE);
            arm.estimate = settings.smoothing * arm.estimate
                + (1.0 - settings.smoothing) * reward / drawn_with;
        }
        self.updates += 1;
        self.recompute(self.exploration(self.updates));
        self.weights()
    }

    fn recompute(&mut self, exploration: f64) {
        let arms = self.arms.len() as f64;
        let scores: Vec<f64> = self
            .arms
            .iter()
            .map(|arm| arm.prior.ln() + exploration * arm.estimate)
            .collect();
        let top = scores.iter().copied().fold(f64::MIN, f64::max);
        let exps: Vec<f64> = scores.iter().map(|score| (score - top).exp()).collect();
        let total: f64 = exps.iter().sum();
        let floor = self.settings.floor / arms;
        let mut weights: Vec<f64> = exps
            .iter()
            .map(|e| ((1.0 - arms * exploration) * e / total + exploration).max(floor))
            .collect();
        let sum: f64 = weights.iter().sum();
        for weight in &mut weights {
            *weight /= sum;
        }
        for (arm, weight) in self.arms.iter_mut().zip(weights) {
            arm.weight = weight;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(reward: OdmReward) -> OdmSettings {
        OdmSettings {
            reward,
            smoothing: 0.9,
            floor: 0.05,
            window: 4,
        }
    }

    fn equal(names: &[&str]) -> BTreeMap<String, f64> {
        names.iter().map(|name| (name.to_string(), 1.0)).collect()
    }

    /// Losses where `text` falls steadily and `noise` stays put at a higher level.
    fn losses(update: usize) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("text".to_string(), 7.0 * 0.98f64.powi(update as i32)),
            ("noise".to_string(), 9.0),
        ])
    }

    #[test]
    fn progress_moves_weight_off_a_source_that_does_not_learn_and_loss_onto_it() {
        let mut progress =
            OdmPolicy::new(&equal(&["noise", "text"]), settings(OdmReward::Progress));
        let mut loss = OdmPolicy::new(&equal(&["noise", "text"]), settings(OdmReward::Loss));
        assert_eq!(progress.weights()["noise"], 0.5);
        for update in 0..60 {
            progress.update(&losses(update));
            loss.update(&losses(update));
        }
        assert!(
            progress.weights()["noise"] < 0.5,
            "{:?}",
            progress.weights()
        );
        assert!(loss.weights()["noise"] > 0.5, "{:?}", loss.weights());
        let total: f64 = progress.weights().values().sum();
        assert!((total - 1.0).abs() < 1e-12);
    }

    #[test]
    fn no_source_falls_below_the_floor_and_the_state_round_trips() {
        let mut policy = OdmPolicy::new(&equal(&["a", "b", "c"]), settings(OdmReward::Loss));
        for _ in 0..200 {
            policy.update(&BTreeMap::from([
                ("a".to_string(), 50.0),
                ("b".to_string(), 0.1),
                ("c".to_string(), 0.1),
            ]));
        }
        let weights = policy.weights();
        assert!(
            weights.values().all(|weight| *weight >= 0.05 / 3.0 - 1e-12),
            "{weights:?}"
        );
        let saved = serde_json::to_string(&policy).unwrap();
        let mut restored: OdmPolicy = serde_json::from_str(&saved).unwrap();
        assert_eq!(restored, policy);
        let next = BTreeMap::from([("a".to_string(), 1.0), ("b".to_string(), 2.0)]);
        assert_eq!(restored.update(&next), policy.update(&next));
    }

    #[test]
    fn a_new_source_joins_with_its_prior() {
        let mut policy = OdmPolicy::new(&equal(&["a", "b"]), settings(OdmReward::Progress));
        policy.join("c", 1.0);
        let weights = policy.weights();
        assert!((weights["c"] - 1.0 / 3.0).abs() < 1e-12, "{weights:?}");
        // Past the first updates, where exploration alone (1/K each) sets the weights.
        let mut started = OdmPolicy::new(&equal(&["a", "b"]), settings(OdmReward::Progress));
        for _ in 0..10 {
            started.update(&BTreeMap::from([
                ("a".to_string(), 5.0),
                ("b".to_string(), 5.0),
            ]));
        }
        started.join("c", 4.0);
        let weights = started.weights();
        assert!(
            weights["c"] > weights["a"],
            "a large prior counts: {weights:?}"
        );
    }
}
