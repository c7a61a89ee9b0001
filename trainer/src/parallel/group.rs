//! One rank's membership of the run's collective group.
//!
//! Everything a step shares goes through it: the gradients and small host messages
//! ([`RankGroup::all_gather_bytes`]: the step reports). Ranks of one process (threads, one per
//! device) use burn-collective, which all-reduces on the devices (one call per parameter, in
//! `ParamId` order). Ranks of a run on several nodes go through the coordinator node 0 runs
//! ([`crate::parallel::star`]): host memory over TCP, one round for all the gradients of a step.
//! (burn-collective 0.21's own multi-node level hangs at its second operation: its sync
//! service never clears the list of peers that have synced.)
//!
//! burn-collective's group is process-wide state, per backend: every rank of the process
//! registers before any of them can go on, and every rank must make the same calls in the same
//! order. A run that fails calls [`abandon`], which makes the local ranks' pending calls return
//! errors instead of waiting for a peer that will never call; a rank of a multi-node run that
//! fails closes its connection, and the coordinator ends the round for everyone.

use std::marker::PhantomData;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use burn::collective::{
    all_reduce, finish_collective, register, reset_collective, CollectiveConfig, PeerId,
    ReduceOperation,
};
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use crate::error::TrainError;
use crate::parallel::nodes::NodeLink;
use crate::parallel::star::{RoundError, StarClient};

/// This rank's handle on the group.
pub struct RankGroup<B: Backend> {
    rank: usize,
    world: usize,
    device: B::Device,
    transport: Transport,
    _backend: PhantomData<B>,
}

enum Transport {
    /// Ranks of one process: burn-collective.
    Threads,
    /// Ranks of several processes: rounds through node 0's coordinator.
    Star(Mutex<StarClient>),
}

impl<B: Backend> RankGroup<B> {
    /// Joins global rank `rank` of `world` on `device`: registers with the process's other
    /// `local_ranks` ranks (blocking until all have), or with `nodes`, connects to the
    /// coordinator, waiting for it up to `patience`.
    pub fn join(
        rank: usize,
        world: usize,
        local_ranks: usize,
        device: B::Device,
        (nodes, patience): (Option<&NodeLink>, Duration),
    ) -> Result<Self, TrainError> {
        let transport = match nodes {
            Some(link) => Transport::Star(Mutex::new(link.connect(rank, patience)?)),
            None => {
                let config = CollectiveConfig::default().with_num_devices(local_ranks);
                register::<B>(PeerId::from(rank), device.clone(), config).map_err(|error| {
                    TrainError::Rank {
                        rank,
                        message: format!("could not join the collective group: {error:?}"),
                    }
                })?;
                Transport::Threads
            }
        };
        Ok(RankGroup {
            rank,
            world,
            device,
            transport,
            _backend: PhantomData,
        })
    }

    /// The coordinator's connection (multi-node runs only).
    fn star(&self) -> Option<std::sync::MutexGuard<'_, StarClient>> {
        match &self.transport {
            Transport::Star(client) => Some(client.lock().unwrap_or_else(PoisonError::into_inner)),
            Transport::Threads => None,
        }
    }

    fn round_failed(&self, error: RoundError) -> TrainError {
        TrainError::Rank {
            rank: error.rank.unwrap_or(self.rank),
            message: error.message,
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    fn failed(&self, what: &str, error: impl std::fmt::Debug) -> TrainError {
        TrainError::Rank {
            rank: self.rank,
            message: format!("{what} failed: {error:?} (another rank stopped)"),
        }
    }

    /// The element-wise sum of every rank's `tensor`.
    pub fn sum<const D: usize>(&self, tensor: Tensor<B, D>) -> Result<Tensor<B, D>, TrainError> {
        if let Some(mut star) = self.star() {
            let shape = tensor.shape();
            let summed = star
                .sum(&read_f32(tensor)?)
                .map_err(|error| self.round_failed(error))?;
            return Ok(Tensor::from_data(
                TensorData::new(summed, shape),
                &self.device,
            ));
        }
        let primitive = tensor.into_primitive().tensor();
        let summed = all_reduce::<B>(PeerId::from(self.rank), primitive, ReduceOperation::Sum)
            .map_err(|error| self.failed("an all-reduce", error))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(summed)))
    }

    /// Every rank's `payload`, indexed by rank. Two all-reduces: the lengths, then the bytes
    /// (one exact f32 per byte), each rank writing only its own row.
    pub fn all_gather_bytes(&self, payload: &[u8]) -> Result<Vec<Vec<u8>>, TrainError> {
        if let Some(mut star) = self.star() {
            return star
                .gather(payload)
                .map_err(|error| self.round_failed(error));
        }
        let mut lengths = vec![0f32; self.world];
        lengths[self.rank] = payload.len() as f32;
        let lengths = self.sum(self.host_tensor(lengths, [self.world]))?;
        let lengths: Vec<usize> = read_f32(lengths)?
            .into_iter()
            .map(|length| length as usize)
            .collect();
        let longest = lengths.iter().copied().max().unwrap_or(0).max(1);
        let mut rows = vec![0f32; self.world * longest];
        for (slot, byte) in rows[self.rank * longest..].iter_mut().zip(payload) {
            *slot = f32::from(*byte);
        }
        let rows = read_f32(self.sum(self.host_tensor(rows, [self.world, longest]))?)?;
        Ok(lengths
            .iter()
            .enumerate()
            .map(|(rank, length)| {
                rows[rank * longest..rank * longest + length]
                    .iter()
                    .map(|value| *value as u8)
                    .collect()
            })
            .collect())
    }

    fn host_tensor<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(values, shape), &self.device)
    }

    /// Leaves the group at the end of a run.
    pub fn leave(self) {
        if let Transport::Threads = self.transport {
            // Failing to unregister after the last step loses nothing: the run is complete.
            let _ = finish_collective::<B>(PeerId::from(self.rank));
        }
    }
}

impl<I: Backend> RankGroup<I> {
    /// The sum of every rank's accumulated gradients. A parameter this rank has no gradient for
    /// (a micro-batch with nothing to predict) takes part with zeros, so every rank makes the
    /// same calls.
    pub fn sum_gradients<B: AutodiffBackend<InnerBackend = I>, M: AutodiffModule<B>>(
        &self,
        model: &M,
        gradients: GradientsParams,
    ) -> Result<GradientsParams, TrainError> {
        let mut complete = FillMissing::<B> {
            gradients,
            _backend: PhantomData,
        };
        model.visit(&mut complete);
        if let Some(mut star) = self.star() {
            // One round for the whole step: every gradient, flattened in the model's order.
            let mut flat = Flatten::<B> {
                gradients: complete.gradients,
                values: Vec::new(),
                error: None,
                _backend: PhantomData,
            };
            model.visit(&mut flat);
            if let Some(error) = flat.error {
                return Err(error);
            }
            let summed = star
                .sum(&flat.values)
                .map_err(|error| self.round_failed(error))?;
            let mut restore = Unflatten::<B> {
                gradients: flat.gradients,
                values: summed,
                offset: 0,
                _backend: PhantomData,
            };
            model.visit(&mut restore);
            return Ok(restore.gradients);
        }
        complete
            .gradients
            .all_reduce::<B::InnerBackend>(PeerId::from(self.rank), ReduceOperation::Sum)
            .map_err(|error| self.failed("the gradient all-reduce", error))
    }
}

/// Registers zeros for parameters without a gradient.
struct FillMissing<B: AutodiffBackend> {
    gradients: GradientsParams,
    _backend: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for FillMissing<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.gradients.get::<B::InnerBackend, D>(param.id).is_none() {
            let value = param.val().inner();
            let zeros = Tensor::zeros(value.shape(), &value.device());
            self.gradients
                .register::<B::InnerBackend, D>(param.id, zeros);
        }
    }
}

/// Appends every parameter's gradient to `values`, in the model's visiting order.
struct Flatten<B: AutodiffBackend> {
    gradients: GradientsParams,
    values: Vec<f32>,
    error: Option<TrainError>,
    _backend: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(gradient) = self.gradients.get::<B::InnerBackend, D>(param.id) {
            match read_f32(gradient) {
                Ok(values) => self.values.extend(values),
                Err(error) => self.error = Some(error),
            }
        }
    }
}

/// Replaces every parameter's gradient with its slice of `values`, in the same order.
struct Unflatten<B: AutodiffBackend> {
    gradients: GradientsParams,
    values: Vec<f32>,
    offset: usize,
    _backend: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(gradient) = self.gradients.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        let (shape, device) = (gradient.shape(), gradient.device());
        let count = shape.num_elements();
        let values = self.values[self.offset..self.offset + count].to_vec();
        self.offset += count;
        let summed = Tensor::from_data(TensorData::new(values, shape), &device);
        self.gradients
            .register::<B::InnerBackend, D>(param.id, summed);
    }
}

/// Makes every pending and later collective call of this process fail at once: the local side
/// of ending a run whose rank has stopped.
pub fn abandon<B: Backend>() {
    reset_collective::<B>();
}

fn read_f32<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<Vec<f32>, TrainError> {
    tensor
        .into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|error| TrainError::Device(format!("{error:?}")))
}
