//! Several processes in one run (usually one per host), joined through a coordinator.
//!
//! Node 0 runs the coordinator ([`crate::parallel::star`]) on the `coordinator` address, and
//! every rank of every node connects to it; each collective call of the run is then one round
//! through it, over TCP, through host memory. The coordinator listens on the address given (the
//! one the other nodes dial); beyond loopback it admits only ranks that hold the run's token
//! ([`crate::parallel::access`]), optionally over TLS.

use std::net::ToSocketAddrs;
use std::time::Duration;

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::parallel::access::Access;
use crate::parallel::coordinator::{Coordinator, CoordinatorHandle, RunShape};
use crate::parallel::handshake::HANDSHAKE_TIMEOUT;
use crate::parallel::star::{Dial, StarClient};

/// How this process reaches the other nodes of its run.
#[derive(Clone)]
pub struct NodeLink {
    coordinator: String,
    world: usize,
    ranks_per_node: usize,
    join_timeout: Duration,
    access: Access,
}

impl std::fmt::Debug for NodeLink {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NodeLink")
            .field("coordinator", &self.coordinator)
            .field("world", &self.world)
            .finish_non_exhaustive()
    }
}

impl NodeLink {
    /// The link a multi-node configuration describes; `None` for a run on one node. Reads the
    /// token and TLS files, and refuses a coordinator reachable beyond loopback without a token.
    pub fn from_config(config: &TrainConfig) -> Result<Option<Self>, TrainError> {
        if config.nodes <= 1 {
            return Ok(None);
        }
        check_host_and_port(&config.coordinator)?;
        let access = Access::from_config(config, config.node_rank == 0)?;
        if config.node_rank == 0 && access.token.is_none() && !loopback_only(&config.coordinator) {
            return Err(TrainError::InvalidConfig(format!(
                "coordinator: refusing to listen on {} without coordinator_token_file                  (--coordinator-token-file): anyone who reaches it could take a rank",
                config.coordinator
            )));
        }
        Ok(Some(NodeLink {
            coordinator: config.coordinator.clone(),
            world: config.world_size(),
            ranks_per_node: config.local_devices().len(),
            join_timeout: Duration::from_secs(config.join_timeout_s),
            access,
        }))
    }

    /// Starts the coordinator (node 0 only), on threads of its own, for a model of
    /// `parameters` values (what a gradient round carries).
    pub fn start_coordinator(&self, parameters: usize) -> Result<CoordinatorHandle, TrainError> {
        let failed = |error: std::io::Error| {
            TrainError::InvalidConfig(format!(
                "coordinator: cannot listen on {}: {error}",
                self.coordinator
            ))
        };
        let shape = RunShape {
            world: self.world,
            ranks_per_node: self.ranks_per_node,
            gradient_values: parameters,
            join_timeout: self.join_timeout,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        };
        Coordinator::bind(&self.coordinator, shape, self.access.clone())
            .and_then(Coordinator::spawn)
            .map_err(failed)
    }

    /// Connects global rank `rank` to the coordinator; returns once every rank has joined.
    pub fn connect(&self, rank: usize) -> Result<StarClient, TrainError> {
        let dial = Dial {
            address: &self.coordinator,
            access: &self.access,
            join_timeout: self.join_timeout,
        };
        StarClient::connect(&dial, rank, self.world).map_err(|error| TrainError::Rank {
            rank: error.rank.unwrap_or(rank),
            message: error.message,
        })
    }

    /// How long joining may take, for the watchdog.
    pub fn join_timeout(&self) -> Duration {
        self.join_timeout
    }
}

/// Whether every address `HOST:PORT` resolves to is a loopback one.
fn loopback_only(address: &str) -> bool {
    address
        .to_socket_addrs()
        .map(|mut addresses| addresses.all(|socket| socket.ip().is_loopback()))
        .unwrap_or(false)
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

    #[test]
    fn node_0_listens_beyond_loopback_only_with_a_token() {
        let mut config = TrainConfig::new("http://x", "out", Preset::Tiny);
        config.nodes = 2;
        config.coordinator = "127.0.0.1:29500".into();
        assert!(NodeLink::from_config(&config).expect("loopback").is_some());
        config.coordinator = "0.0.0.0:29500".into();
        let error = NodeLink::from_config(&config).expect_err("open to all");
        assert!(
            error.to_string().contains("coordinator_token_file"),
            "{error}"
        );
        let dir = std::env::temp_dir().join(format!("flightlm-nodes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("token"), "0123456789abcdef0123").expect("token");
        config.coordinator_token_file = Some(dir.join("token"));
        assert!(NodeLink::from_config(&config)
            .expect("with a token")
            .is_some());
        config.coordinator_tls_cert = Some(dir.join("cert.pem"));
        let error = NodeLink::from_config(&config).expect_err("TLS without a CA");
        assert!(error.to_string().contains("coordinator_tls_ca"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
