//! A data-parallel run in one process: one thread per local device, each a rank running the
//! training loop on its own shard of the stream, the ranks joined by the collective group (and,
//! on several nodes, by the coordinator that node 0 starts).
//!
//! The model is made once and copied to every device, so every rank holds the same parameters
//! under the same ids; a resumed run loads the same checkpoint on every rank. Before the first
//! step the ranks compare their settings, start step, cursor and parameters
//! ([`agree_before_first_step`]). Global rank 0 evaluates, writes metrics, the block log and
//! checkpoints; the others only train. A rank that fails ends the group for the others
//! ([`RankGroup::fail`]: with its cause, on every node) and the run ends with the error of the
//! rank that failed first.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;

use flightlm_shared::TokenizerInfo;

use crate::config::{DeviceKind, TrainConfig};
use crate::data::source::{check_tokenizer, BlockSource};
use crate::error::TrainError;
use crate::model::Roberta;
use crate::parallel::agreement::Agreement;
use crate::parallel::frame::{Purpose, Round};
use crate::parallel::group::{gradient_values, Membership, RankGroup};
use crate::parallel::local::LocalRounds;
use crate::parallel::nodes::NodeLink;
use crate::parallel::watchdog::{Patience, Watchdog};
use crate::run::checkpoint::TrainingState;
use crate::run::metrics::MetricsLog;
use crate::run::step::{parameter_hash, RankRole};
use crate::run::train::{initial_model, train_rank, RunControl, TrainSummary};

/// No rank has failed yet.
const NONE_FAILED: usize = usize::MAX;

/// How long node 0 waits for its coordinator to tell the other nodes how the run ended.
const COORDINATOR_GOODBYE: Duration = Duration::from_secs(10);

/// Trains on this process's devices as ranks `node_rank × devices … + devices - 1` of the run:
/// `sources[i]` must be the shard of local rank `i`. `metrics` and `control`'s checkpoints and
/// block log serve global rank 0 only. Returns the summary of this process's first rank (global
/// rank 0's on node 0).
pub fn train_data_parallel<B: AutodiffBackend>(
    config: &TrainConfig,
    sources: Vec<Box<dyn BlockSource + Send>>,
    devices: Vec<B::Device>,
    metrics: &mut MetricsLog,
    control: RunControl<'_>,
) -> Result<TrainSummary<B>, TrainError> {
    config.validate()?;
    let local_ranks = config.local_devices().len();
    if sources.len() != local_ranks || devices.len() != local_ranks {
        return Err(TrainError::InvalidConfig(format!(
            "{local_ranks} local ranks need as many sources and devices ({} and {} given)",
            sources.len(),
            devices.len()
        )));
    }
    let tokenizer = sources[0].tokenizer().clone();
    check_tokenizer(&tokenizer, config.objective)?;
    if let Some(other) = sources
        .iter()
        .find(|s| s.tokenizer().hash != tokenizer.hash)
    {
        return Err(TrainError::BadBatch(format!(
            "serves tokenizer {} to one rank and {} to another",
            tokenizer.hash,
            other.tokenizer().hash
        )));
    }
    let world = config.world_size();
    let first_rank = config.node_rank * local_ranks;
    let link = NodeLink::from_config(config)?;
    let model = initial_model::<B>(config, &tokenizer, &devices[0])?;
    let coordinator = match (&link, config.node_rank) {
        (Some(link), 0) => Some(link.start_coordinator(gradient_values(&model))?),
        _ => None,
    };
    let membership = match &link {
        Some(link) => Membership::Nodes(link),
        None if config.device == DeviceKind::Cpu => Membership::Local(LocalRounds::new(world)),
        None => Membership::Threads,
    };
    let timeout = Duration::from_secs(config.collective_timeout_s);
    let watchdog = Watchdog::start(timeout);
    let checkpointing = control.checkpoints.is_some();
    let RunControl {
        checkpoints,
        resume,
        stop,
        block_log,
    } = control;
    let mut lead = Some((
        metrics,
        RunControl {
            checkpoints,
            resume: resume.clone(),
            stop,
            block_log,
        },
    ));
    let first_failed = AtomicUsize::new(NONE_FAILED);
    let (sender, receiver) = mpsc::channel();
    std::thread::scope(|scope| {
        for (local, (mut source, device)) in sources.into_iter().zip(devices).enumerate() {
            let rank = first_rank + local;
            let model = model.clone().fork(&device);
            let (lead_metrics, rank_control) = match lead.take().filter(|_| rank == 0) {
                Some((metrics, control)) => (Some(metrics), control),
                None => {
                    let control = RunControl {
                        resume: resume.clone(),
                        stop,
                        ..RunControl::default()
                    };
                    (None, control)
                }
            };
            let (sender, watchdog, first_failed) = (sender.clone(), &watchdog, &first_failed);
            let membership = membership.clone();
            std::thread::Builder::new()
                .name(format!("rank-{rank}"))
                .spawn_scoped(scope, move || {
                    let joined = {
                        // Joining nodes is bounded by join_timeout_s, not by the watchdog.
                        let nodes = matches!(membership, Membership::Nodes(_));
                        let _wait = (!nodes)
                            .then(|| watchdog.wait(rank, 0, "joining the group", Patience::Long));
                        RankGroup::<B::InnerBackend>::join(
                            rank,
                            world,
                            local_ranks,
                            device.clone(),
                            membership,
                        )
                    };
                    let result = joined.and_then(|group| {
                        let run = || {
                            let role = RankRole {
                                rank,
                                group: Some(&group),
                                watchdog: Some(watchdog),
                                checkpointing,
                            };
                            let mut own_metrics = MetricsLog::in_memory();
                            let metrics = lead_metrics.unwrap_or(&mut own_metrics);
                            train_rank(
                                config,
                                source.as_mut(),
                                &device,
                                model,
                                &role,
                                metrics,
                                rank_control,
                            )
                        };
                        let result = std::panic::catch_unwind(AssertUnwindSafe(run))
                            .unwrap_or_else(|panic| {
                                Err(TrainError::Rank {
                                    rank,
                                    message: format!("panicked: {}", panic_message(&*panic)),
                                })
                            });
                        match &result {
                            Ok(_) => group.leave(),
                            Err(error) => group.fail(error),
                        }
                        result
                    });
                    // Every node's line names the rank it happened on.
                    let result = result.map_err(|error| match error {
                        TrainError::Rank { .. } => error,
                        other => TrainError::Rank {
                            rank,
                            message: other.to_string(),
                        },
                    });
                    if result.is_err() {
                        let _ = first_failed.compare_exchange(
                            NONE_FAILED,
                            rank,
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        );
                    }
                    let _ = sender.send((rank, result));
                })
                .map_err(|error| TrainError::Rank {
                    rank,
                    message: format!("could not start its thread: {error}"),
                })?;
        }
        drop(sender);
        let results: Vec<(usize, Result<TrainSummary<B>, TrainError>)> = receiver.iter().collect();
        if let Some(coordinator) = coordinator {
            // The other nodes learn how the run ended from node 0's coordinator.
            coordinator.finish(COORDINATOR_GOODBYE);
        }
        let failed = first_failed.load(Ordering::SeqCst);
        let wanted = if failed == NONE_FAILED {
            first_rank
        } else {
            failed
        };
        results
            .into_iter()
            .find_map(|(rank, result)| (rank == wanted).then_some(result))
            .unwrap_or_else(|| {
                Err(TrainError::Rank {
                    rank: wanted,
                    message: "ended without a result".into(),
                })
            })
    })
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|message| message.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Before the first step of a data-parallel run: every rank's settings, start step, cursor and
/// parameters must be rank 0's, or the run is refused on every rank naming the first rank that
/// differs and how (see [`Agreement`]). Nothing to agree on alone.
pub(crate) fn agree_before_first_step<B: AutodiffBackend>(
    role: &RankRole<'_, B>,
    config: &TrainConfig,
    tokenizer: &TokenizerInfo,
    state: &TrainingState,
    model: &Roberta<B>,
) -> Result<(), TrainError> {
    let Some(group) = role.group else {
        return Ok(());
    };
    let start = (state.step, state.cursor.as_ref());
    let agreement = Agreement::new(config, tokenizer, start, parameter_hash(model)?)?;
    // One round at "step 0" whatever the start step: ranks that start elsewhere must meet to
    // find out.
    let round = Round::new(0, Purpose::Agreement);
    let payloads = role.all_gather(group, &agreement.encode(), round, Patience::Long)?;
    Agreement::check_all(&payloads)
}
