//! One rank's membership of the run's collective group.
//!
//! Everything a step shares goes through it: the gradients and small host messages
//! ([`RankGroup::gather`]: the agreement, the step reports, the parameter hashes), each call a
//! round named by its step and purpose. Three transports:
//! - CUDA ranks of one process (threads, one per device) use burn-collective, which
//!   all-reduces on the devices (one call per parameter, in `ParamId` order, summing in the
//!   order of the devices' ids);
//! - CPU ranks of one process meet in [`crate::parallel::local`] rounds: on the CPU every rank
//!   has the same device, so burn-collective's order would follow a hash map's and change the
//!   bits from run to run;
//! - ranks of a run on several nodes go through the coordinator node 0 runs
//!   ([`crate::parallel::star`]): host memory over TCP, one round for all the gradients of a
//!   step. (burn-collective 0.21's own multi-node level hangs at its second operation: its sync
//!   service never clears the list of peers that have synced.)
//!
//! The last two sum on the host in rank order, so `cpu:N` and N nodes of one CPU rank compute
//! the same bits. burn-collective's group is process-wide state, per backend: every rank of the
//! process registers before any of them can go on, and every rank must make the same calls in
//! the same order. A rank that fails calls [`RankGroup::fail`]: the other ranks' pending and
//! later calls then fail with its error (burn-collective's through [`abandon`], without the
//! cause), and the coordinator passes it on to every node.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};

use burn::collective::{
    all_reduce, finish_collective, register, reset_collective, CollectiveConfig, PeerId,
    ReduceOperation,
};
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use crate::error::TrainError;
use crate::parallel::frame::{Purpose, Round};
use crate::parallel::local::LocalRounds;
use crate::parallel::nodes::NodeLink;
use crate::parallel::rounds::{Contribution, Outcome, RoundError};
use crate::parallel::star::StarClient;

/// This rank's handle on the group.
pub struct RankGroup<B: Backend> {
    rank: usize,
    world: usize,
    device: B::Device,
    transport: Transport,
    _backend: PhantomData<B>,
}

/// How the ranks of a run meet.
#[derive(Clone)]
pub enum Membership<'a> {
    /// Devices of one process, through burn-collective (CUDA).
    Threads,
    /// CPU ranks of one process: in-memory rounds in rank order.
    Local(Arc<LocalRounds>),
    /// Several processes: rounds through node 0's coordinator.
    Nodes(&'a NodeLink),
}

enum Transport {
    Threads,
    Local(Arc<LocalRounds>),
    /// `None` once this rank has reported its failure (the connection is then closed).
    Star(Mutex<Option<StarClient>>),
}

impl<B: Backend> RankGroup<B> {
    /// Joins global rank `rank` of `world` on `device`: registers with the process's other
    /// `local_ranks` ranks (blocking until all have), or connects to the coordinator, returning
    /// once every rank of every node has joined (or the join deadline has passed).
    pub fn join(
        rank: usize,
        world: usize,
        local_ranks: usize,
        device: B::Device,
        membership: Membership<'_>,
    ) -> Result<Self, TrainError> {
        let transport = match membership {
            Membership::Nodes(link) => Transport::Star(Mutex::new(Some(link.connect(rank)?))),
            Membership::Local(rounds) => Transport::Local(rounds),
            Membership::Threads => {
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

    fn round_failed(&self, error: RoundError) -> TrainError {
        TrainError::Rank {
            rank: error.rank.unwrap_or(self.rank),
            message: error.message,
        }
    }

    /// `round` through the local rounds or the coordinator; `None` on burn-collective.
    fn host_round(
        &self,
        round: Round,
        contribution: Contribution,
    ) -> Result<Option<Arc<Outcome>>, TrainError> {
        let outcome = match &self.transport {
            Transport::Threads => return Ok(None),
            // Every rank reads the one outcome; nobody copies it whole.
            Transport::Local(rounds) => rounds.round(self.rank, round, contribution),
            Transport::Star(client) => {
                let mut client = client.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(client) = client.as_mut() else {
                    return Err(TrainError::Rank {
                        rank: self.rank,
                        message: "has left the run".into(),
                    });
                };
                match contribution {
                    Contribution::Sum(values) => client.sum(round, &values).map(Outcome::Sum),
                    Contribution::Gather(bytes) => {
                        client.gather(round, &bytes).map(Outcome::Gathered)
                    }
                }
                .map(Arc::new)
            }
        };
        outcome.map(Some).map_err(|error| self.round_failed(error))
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

    /// The element-wise sum of every rank's `tensor` (burn-collective's ranks only: the others
    /// sum on the host, see [`RankGroup::sum_gradients`]).
    fn device_sum<const D: usize>(&self, tensor: Tensor<B, D>) -> Result<Tensor<B, D>, TrainError> {
        let primitive = tensor.into_primitive().tensor();
        let summed = all_reduce::<B>(PeerId::from(self.rank), primitive, ReduceOperation::Sum)
            .map_err(|error| self.failed("an all-reduce", error))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(summed)))
    }

    /// Every rank's `payload`, indexed by rank. On burn-collective: two all-reduces, the lengths
    /// then the bytes (one exact f32 per byte), each rank writing only its own row.
    pub fn gather(&self, round: Round, payload: &[u8]) -> Result<Vec<Vec<u8>>, TrainError> {
        if self.world == 1 {
            return Ok(vec![payload.to_vec()]);
        }
        if let Some(outcome) = self.host_round(round, Contribution::Gather(payload.to_vec()))? {
            return match outcome.as_ref() {
                Outcome::Gathered(payloads) => Ok(payloads.clone()),
                Outcome::Sum(_) => unreachable!("a gather answers a gather"),
            };
        }
        let mut lengths = vec![0f32; self.world];
        lengths[self.rank] = payload.len() as f32;
        let lengths = self.device_sum(self.host_tensor(lengths, [self.world]))?;
        let lengths: Vec<usize> = read_f32(lengths)?
            .into_iter()
            .map(|length| length as usize)
            .collect();
        let longest = lengths.iter().copied().max().unwrap_or(0).max(1);
        let mut rows = vec![0f32; self.world * longest];
        for (slot, byte) in rows[self.rank * longest..].iter_mut().zip(payload) {
            *slot = f32::from(*byte);
        }
        let rows = read_f32(self.device_sum(self.host_tensor(rows, [self.world, longest]))?)?;
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

    /// Ends the run for every rank because this one failed with `error`: the others' pending
    /// and later calls fail with it, naming this rank (an error that came from another rank is
    /// theirs to report and is not passed on).
    pub fn fail(self, error: &TrainError) {
        let message = match error {
            TrainError::Rank { rank, .. } if *rank != self.rank => None,
            TrainError::Rank { message, .. } => Some(message.clone()),
            other => Some(other.to_string()),
        };
        match self.transport {
            Transport::Threads => abandon::<B>(),
            Transport::Local(rounds) => {
                let message = message.unwrap_or_else(|| error.to_string());
                rounds.fail(RoundError::of(self.rank, message));
            }
            Transport::Star(client) => {
                let client = client.into_inner().unwrap_or_else(PoisonError::into_inner);
                if let (Some(client), Some(message)) = (client, message) {
                    client.fail(&message);
                }
            }
        }
    }
}

/// The values a gradient round carries for `model`: one per parameter value.
pub fn gradient_values<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M) -> usize {
    struct Count(usize);
    impl<B: Backend> ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0 += param.val().shape().num_elements();
        }
    }
    let mut count = Count(0);
    model.visit(&mut count);
    count.0
}

impl<I: Backend> RankGroup<I> {
    /// The sum of every rank's accumulated gradients. A parameter this rank has no gradient for
    /// (a micro-batch with nothing to predict) takes part with zeros, so every rank makes the
    /// same calls.
    pub fn sum_gradients<B: AutodiffBackend<InnerBackend = I>, M: AutodiffModule<B>>(
        &self,
        step: usize,
        model: &M,
        gradients: GradientsParams,
    ) -> Result<GradientsParams, TrainError> {
        let mut complete = FillMissing::<B> {
            gradients,
            _backend: PhantomData,
        };
        model.visit(&mut complete);
        if self.world == 1 {
            return Ok(complete.gradients); // the sum of one rank's gradients
        }
        if !matches!(self.transport, Transport::Threads) {
            // One round for the whole step: every gradient, flattened in the model's order.
            let mut flat = Flatten::<B> {
                gradients: complete.gradients,
                values: Vec::with_capacity(gradient_values::<B, M>(model)),
                error: None,
                _backend: PhantomData,
            };
            model.visit(&mut flat);
            if let Some(error) = flat.error {
                return Err(error);
            }
            let round = Round::new(step, Purpose::Gradients);
            let outcome = self.host_round(round, Contribution::Sum(flat.values))?;
            let Some(Outcome::Sum(summed)) = outcome.as_deref() else {
                unreachable!("a sum answers a sum")
            };
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
struct Unflatten<'a, B: AutodiffBackend> {
    gradients: GradientsParams,
    values: &'a [f32],
    offset: usize,
    _backend: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_, B> {
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
