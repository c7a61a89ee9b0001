//! Several processes in one run (usually one per host), joined through a coordinator.
//!
//! Node 0 runs the coordinator ([`crate::parallel::star`]) on the `coordinator` address, and
//! every rank of every node connects to it; each collective call of the run is then one round
//! through it, over TCP, through host memory. The coordinator listens on the address given (the
//! one the other nodes dial): a multi-node run belongs on a trusted cluster network.

use std::time::Duration;

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::parallel::star::{Coordinator, StarClient};

/// How this process reaches the other nodes of its run.
#[derive(Clone, Debug)]
pub struct NodeLink {
    coordinator: String,
    world: usize,
}

impl NodeLink {
    /// The link a multi-node configuration describes; `None` for a run on one node.
    pub fn from_config(config: &TrainConfig) -> Result<Option<Self>, TrainError> {
        if config.nodes <= 1 {
            return Ok(None);
        }
        check_host_and_port(&config.coordinator)?;
        Ok(Some(NodeLink {
            coordinator: config.coordinator.clone(),
            world: config.world_size(),
        }))
    }

    /// Starts the coordinator (node 0 only), on a thread of its own.
    pub fn start_coordinator(&self) -> Result<(), TrainError> {
        let failed = |error: std::io::Error| {
            TrainError::InvalidConfig(format!(
                "coordinator: cannot listen on {}: {error}",
                self.coordinator
            ))
        };
        Coordinator::bind(&self.coordinator, self.world)
            .and_then(Coordinator::spawn)
            .map_err(failed)
    }

    /// Connects global rank `rank` to the coordinator, waiting up to `patience` for it.
    pub fn connect(&self, rank: usize, patience: Duration) -> Result<StarClient, TrainError> {
        StarClient::connect(&self.coordinator, rank, self.world, patience).map_err(|error| {
            TrainError::Rank {
                rank: error.rank.unwrap_or(rank),
                message: error.message,
            }
        })
    }
}

fn check_host_and_port(text: &str) -> Result<(), TrainError> {
    let invalid = |why: String| Err(TrainError::InvalidConfig(format!("coordinator: {why}")));
    let Some((host, port)) = text.rsplit_once(':') else {
        return invalid(format!("`{text}` is not HOST:PORT"));
    };
    match port.parse::<u16>() {
        Ok(port) if port > 0 && !host.is_empty() => Ok(()),
        _ => invalid(format!("`{text}` needs a host and a port above 0")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn a_multi_node_run_needs_a_coordinator_address() {
        let mut config = TrainConfig::new("http://x", "out", Preset::Tiny);
        assert!(NodeLink::from_config(&config).expect("one node").is_none());
        config.nodes = 2;
        config.node_rank = 1;
        config.coordinator = "10.0.0.5:29500".into();
        let link = NodeLink::from_config(&config)
            .expect("valid")
            .expect("two nodes");
        assert_eq!(
            (link.coordinator.as_str(), link.world),
            ("10.0.0.5:29500", 2)
        );
        for bad in ["no-port", ":29500", "host:0", "host:x"] {
            config.coordinator = bad.into();
            let error = NodeLink::from_config(&config).expect_err(bad);
            assert!(error.to_string().contains("coordinator"), "{error}");
        }
    }
}
