//! A data-parallel run in one process: one thread per local device, each a rank running the
//! training loop on its own shard of the stream, the ranks joined by the collective group (and,
//! on several nodes, by the coordinator that node 0 starts).
//!
//! The model is made once and copied to every device, so every rank holds the same parameters
//! under the same ids; a resumed run loads the same checkpoint on every rank. Global rank 0
//! evaluates, writes metrics, the block log and checkpoints; the others only train. A rank that
//! fails releases the others' pending calls ([`abandon`]) and the run ends with the error of the
//! rank that failed first.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;

use crate::config::TrainConfig;
use crate::data::source::{check_tokenizer, BlockSource};
use crate::error::TrainError;
use crate::parallel::group::{abandon, RankGroup};
use crate::parallel::nodes::NodeLink;
use crate::parallel::watchdog::{Patience, Watchdog, LONG_WAIT_FACTOR};
use crate::run::metrics::MetricsLog;
use crate::run::step::RankRole;
use crate::run::train::{initial_model, train_rank, RunControl, TrainSummary};

/// No rank has failed yet.
const NONE_FAILED: usize = usize::MAX;

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
    if let (Some(link), 0) = (&link, config.node_rank) {
        link.start_coordinator()?;
    }
    let model = initial_model::<B>(config, &tokenizer, &devices[0])?;
    let timeout = Duration::from_secs(config.collective_timeout_s);
    let watchdog = Watchdog::start(timeout);
    let join_patience = timeout * LONG_WAIT_FACTOR;
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
            let (sender, watchdog, link, first_failed) =
                (sender.clone(), &watchdog, link.as_ref(), &first_failed);
            std::thread::Builder::new()
                .name(format!("rank-{rank}"))
                .spawn_scoped(scope, move || {
                    let run = || {
                        let group = {
                            let _wait = watchdog.wait(rank, 0, "joining the group", Patience::Long);
                            RankGroup::<B::InnerBackend>::join(
                                rank,
                                world,
                                local_ranks,
                                device.clone(),
                                (link, join_patience),
                            )?
                        };
                        let role = RankRole {
                            rank,
                            group: Some(&group),
                            watchdog: Some(watchdog),
                            checkpointing,
                        };
                        let mut own_metrics = MetricsLog::in_memory();
                        let metrics = lead_metrics.unwrap_or(&mut own_metrics);
                        let summary = train_rank(
                            config,
                            source.as_mut(),
                            &device,
                            model,
                            &role,
                            metrics,
                            rank_control,
                        )?;
                        group.leave();
                        Ok(summary)
                    };
                    let result =
                        std::panic::catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|panic| {
                            Err(TrainError::Rank {
                                rank,
                                message: format!("panicked: {}", panic_message(&*panic)),
                            })
                        });
                    if result.is_err() {
                        let _ = first_failed.compare_exchange(
                            NONE_FAILED,
                            rank,
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        );
                        abandon::<B::InnerBackend>();
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
