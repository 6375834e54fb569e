//! The client side of the `sluice` binary: `topic`, `produce` and `consume`
//! (alone, or as a consumer-group member: [`group`]).
//!
//! These commands run on the caller's thread with the blocking
//! [`sluice_protocol::client::Client`]; nothing here touches a shard or the
//! server's executors. What they promise:
//!
//! - Produce and fetch requests go to each partition's owning shard, over one
//!   connection per shard ([`Connections`]), so the broker never has to hop
//!   between cores to serve them. A shard whose address does not connect is
//!   reached through the bootstrap connection instead (the broker routes it).
//! - Admin requests (create, delete, metadata, list offsets) use the bootstrap
//!   connection.
//! - Every failure, local or remote, becomes a [`CliError`] that [`exit`]
//!   prints as `error: ...` with exit status 1.

mod consume;
mod group;
mod produce;
mod topic;

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use sluice_protocol::client::{Client, ClientError, CONNECT_TIMEOUT};
use sluice_protocol::native::{MetadataResponse, TopicMetadata};
use sluice_protocol::ErrorCode;

pub use consume::ConsumeArgs;
pub use produce::ProduceArgs;
pub use topic::TopicCommand;

/// Where the commands look for a broker unless told otherwise.
pub const BOOTSTRAP_DEFAULT: &str = "127.0.0.1:9192";

/// How long a command waits for any one response before giving up. Longer
/// than the produce timeout and the fetch wait it asks the broker for.
const RESPONSE_WAIT_MAX: Duration = Duration::from_secs(60);

/// A command's failure, already worded for a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError(pub String);

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError(e.to_string())
    }
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> Self {
        CliError(e.to_string())
    }
}

/// Turns a command's outcome into the process's exit status, printing the
/// error (if any) to stderr.
pub fn exit(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: it panics when stderr cannot be written.
            let _ = writeln!(io::stderr(), "error: {e}");
            ExitCode::from(1)
        }
    }
}

/// How to reach the broker; shared by every client command.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ConnectArgs {
    /// The broker's native listener.
    #[arg(long, value_name = "HOST:PORT", default_value = BOOTSTRAP_DEFAULT)]
    pub bootstrap: String,
}

impl ConnectArgs {
    /// Opens the bootstrap connection.
    fn connect(&self) -> Result<Client, CliError> {
        let stream = connect_stream(&self.bootstrap)
            .map_err(|e| CliError(format!("cannot connect to {}: {e}", self.bootstrap)))?;
        client_for(stream)
    }
}

/// Connects to `addr`, trying each address it resolves to.
fn connect_stream(addr: &str) -> io::Result<TcpStream> {
    let mut last_error = None;
    for socket_addr in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&socket_addr, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last_error = Some(e),
        }
    }
    let nothing = || io::Error::new(io::ErrorKind::InvalidInput, "resolves to no address");
    Err(last_error.unwrap_or_else(nothing))
}

fn client_for(stream: TcpStream) -> Result<Client, CliError> {
    let client = Client::from_stream(stream)?;
    client.set_read_timeout(Some(RESPONSE_WAIT_MAX))?;
    Ok(client)
}

/// The metadata of one topic, and the rest of the response (the shards'
/// addresses); an unknown topic or a topic-level error is a [`CliError`]
/// naming it.
fn topic_metadata(
    client: &mut Client,
    topic: &str,
) -> Result<(TopicMetadata, MetadataResponse), CliError> {
    let mut metadata = client.metadata(vec![topic.to_owned()])?;
    let index = metadata.topics.iter().position(|t| t.name == topic);
    let Some(index) = index else {
        let code = ErrorCode::UNKNOWN_TOPIC_OR_PARTITION;
        return Err(CliError(format!("topic {topic}: {code}")));
    };
    let found = metadata.topics.swap_remove(index);
    if !found.error.is_ok() {
        return Err(CliError(format!("topic {topic}: {}", found.error)));
    }
    if found.partitions.is_empty() {
        return Err(CliError(format!("topic {topic}: has no partitions")));
    }
    Ok((found, metadata))
}

/// `shard_of[p]`: the shard owning partition `p`, for partitions `0..n`.
fn shard_of_partitions(topic: &TopicMetadata) -> Result<Vec<u32>, CliError> {
    let n = topic.partitions.len();
    let mut shard_of = vec![None; n];
    for p in &topic.partitions {
        let slot = usize::try_from(p.partition)
            .ok()
            .and_then(|i| shard_of.get_mut(i));
        let Some(slot) = slot else {
            let name = &topic.name;
            return Err(CliError(format!(
                "metadata for {name}: partition {} of {n}",
                p.partition
            )));
        };
        *slot = Some(p.shard);
    }
    let missing = || CliError(format!("metadata for {}: partitions missing", topic.name));
    shard_of
        .into_iter()
        .map(|s| s.ok_or_else(missing))
        .collect()
}

/// One open connection: the client for request/response traffic, and a
/// second handle on the same socket for requests that get no response
/// (acks=0 produce), which the client's in-flight bookkeeping cannot track.
pub(crate) struct Connection {
    pub(crate) client: Client,
    pub(crate) raw: TcpStream,
}

impl Connection {
    fn open(stream: TcpStream) -> Result<Connection, CliError> {
        let raw = stream.try_clone()?;
        Ok(Connection {
            client: client_for(stream)?,
            raw,
        })
    }
}

/// The bootstrap connection (index 0) and one connection per shard that
/// answered; shards that did not are mapped to index 0.
pub(crate) struct Connections {
    pub(crate) conns: Vec<Connection>,
    by_shard: HashMap<u32, usize>,
}

impl Connections {
    /// Opens a connection to each of `shards` at the address `metadata`
    /// gives for it.
    fn open(
        connect: &ConnectArgs,
        metadata: &MetadataResponse,
        shards: &[u32],
    ) -> Result<Connections, CliError> {
        let bootstrap = connect_stream(&connect.bootstrap)
            .map_err(|e| CliError(format!("cannot connect to {}: {e}", connect.bootstrap)))?;
        let mut connections = Connections {
            conns: vec![Connection::open(bootstrap)?],
            by_shard: HashMap::new(),
        };
        for &shard in shards {
            if connections.by_shard.contains_key(&shard) {
                continue;
            }
            let address = metadata.shards.iter().find(|a| a.shard == shard);
            let addr = address.map(|a| shard_addr(&a.host, a.port, &connect.bootstrap));
            let stream = addr.and_then(|addr| connect_stream(&addr).ok());
            let index = match stream {
                Some(stream) => {
                    connections.conns.push(Connection::open(stream)?);
                    connections.conns.len() - 1
                }
                None => 0,
            };
            connections.by_shard.insert(shard, index);
        }
        Ok(connections)
    }

    /// The index in `conns` of the connection that reaches `shard`.
    fn index_of(&self, shard: u32) -> usize {
        self.by_shard.get(&shard).copied().unwrap_or(0)
    }
}

/// `host:port` for a shard. A shard listening on every interface (or
/// advertising no host) is reached at the bootstrap's host.
fn shard_addr(host: &str, port: u16, bootstrap: &str) -> String {
    let unspecified = matches!(host, "" | "0.0.0.0" | "::" | "[::]");
    let host = if unspecified {
        bootstrap_host(bootstrap)
    } else {
        host
    };
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The host part of `HOST:PORT` (brackets kept for IPv6).
fn bootstrap_host(bootstrap: &str) -> &str {
    match bootstrap.rsplit_once(':') {
        Some((host, _)) => host,
        None => bootstrap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::native::PartitionMetadata;

    fn topic(partitions: &[(u32, u32)]) -> TopicMetadata {
        let partitions = partitions
            .iter()
            .map(|&(partition, shard)| PartitionMetadata {
                partition,
                shard,
                leader_epoch: 0,
                error: ErrorCode::NONE,
            });
        TopicMetadata {
            name: "t".into(),
            error: ErrorCode::NONE,
            partitions: partitions.collect(),
            configs: vec![],
        }
    }

    #[test]
    fn shard_of_partitions_orders_by_partition_id() {
        let shards = shard_of_partitions(&topic(&[(1, 7), (0, 3), (2, 7)]));
        assert_eq!(shards, Ok(vec![3, 7, 7]));
    }

    #[test]
    fn shard_of_partitions_rejects_gaps_and_ids_out_of_range() {
        assert!(shard_of_partitions(&topic(&[(0, 0), (2, 0)])).is_err());
        assert!(shard_of_partitions(&topic(&[(0, 0), (0, 1)])).is_err());
    }

    #[test]
    fn shard_addr_uses_the_bootstrap_host_for_unspecified_hosts() {
        assert_eq!(shard_addr("10.0.0.5", 9300, "h:9192"), "10.0.0.5:9300");
        assert_eq!(shard_addr("0.0.0.0", 9300, "broker:9192"), "broker:9300");
        assert_eq!(shard_addr("", 9301, "[::1]:9192"), "[::1]:9301");
        assert_eq!(shard_addr("::1", 9302, "x:1"), "[::1]:9302");
    }

    #[test]
    fn exit_status_is_one_on_error() {
        assert_eq!(exit(Ok(())), ExitCode::SUCCESS);
        assert_eq!(exit(Err(CliError("boom".into()))), ExitCode::from(1));
    }
}
