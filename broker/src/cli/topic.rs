//! `sluice topic create|list|describe|delete`: topic administration over the
//! bootstrap connection.

use std::io::{self, Write};

use sluice_protocol::client::Client;
use sluice_protocol::native::{
    CreateTopic, ListOffsetsPartition, ListOffsetsPartitionResponse, TopicMetadata, TopicResult,
};
use sluice_protocol::types::list_offsets_timestamp;

use super::{topic_metadata, CliError, ConnectArgs};

#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum TopicCommand {
    /// Creates a topic.
    Create {
        name: String,
        /// How many partitions the topic has.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// A topic config, e.g. `retention.ms=60000`; repeat for several.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config)]
        configs: Vec<(String, String)>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Lists every topic with its partition count.
    List {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Shows a topic's configs and each partition's shard, epoch and offsets.
    Describe {
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Deletes a topic.
    Delete {
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

impl TopicCommand {
    pub fn run(self) -> Result<(), CliError> {
        match self {
            TopicCommand::Create {
                name,
                partitions,
                configs,
                connect,
            } => create(&connect, name, partitions, configs),
            TopicCommand::List { connect } => list(&connect),
            TopicCommand::Describe { name, connect } => describe(&connect, &name),
            TopicCommand::Delete { name, connect } => delete(&connect, name),
        }
    }
}

/// Parses `KEY=VALUE`; the value may itself contain `=`.
fn parse_config(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {arg:?}")),
    }
}

fn create(
    connect: &ConnectArgs,
    name: String,
    partitions: u32,
    configs: Vec<(String, String)>,
) -> Result<(), CliError> {
    let mut client = connect.connect()?;
    let topic = CreateTopic {
        name: name.clone(),
        partitions,
        configs,
    };
    let results = client.create_topics(vec![topic])?;
    check_topic_result(&results, &name)?;
    // writeln!, not println!: a stdout that cannot be written is an error
    // to report, not a panic.
    writeln!(
        io::stdout(),
        "created topic {name} with {partitions} partitions"
    )?;
    Ok(())
}

fn delete(connect: &ConnectArgs, name: String) -> Result<(), CliError> {
    let mut client = connect.connect()?;
    let results = client.delete_topics(vec![name.clone()])?;
    check_topic_result(&results, &name)?;
    writeln!(io::stdout(), "deleted topic {name}")?;
    Ok(())
}

/// The per-topic outcome for `name`: its error, with the server's message.
fn check_topic_result(results: &[TopicResult], name: &str) -> Result<(), CliError> {
    let Some(result) = results.iter().find(|r| r.name == name) else {
        return Err(CliError(format!("topic {name}: no result in the response")));
    };
    if result.error.is_ok() {
        return Ok(());
    }
    let mut text = format!("topic {name}: {}", result.error);
    if !result.message.is_empty() {
        text.push_str(": ");
        text.push_str(&result.message);
    }
    Err(CliError(text))
}

fn list(connect: &ConnectArgs) -> Result<(), CliError> {
    let mut client = connect.connect()?;
    let metadata = client.metadata(vec![])?;
    let mut out = io::stdout().lock();
    for line in list_lines(metadata.topics) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// `NAME\tpartitions=N` per topic, sorted by name.
fn list_lines(mut topics: Vec<TopicMetadata>) -> Vec<String> {
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    let line = |t: &TopicMetadata| format!("{}\tpartitions={}", t.name, t.partitions.len());
    topics.iter().map(line).collect()
}

fn describe(connect: &ConnectArgs, name: &str) -> Result<(), CliError> {
    let mut client = connect.connect()?;
    let (topic, _) = topic_metadata(&mut client, name)?;
    let earliest = list_offsets(&mut client, &topic, list_offsets_timestamp::EARLIEST)?;
    let latest = list_offsets(&mut client, &topic, list_offsets_timestamp::LATEST)?;
    let mut out = io::stdout().lock();
    for line in describe_lines(&topic, &earliest, &latest) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Every partition's offset at `timestamp` (earliest or latest).
fn list_offsets(
    client: &mut Client,
    topic: &TopicMetadata,
    timestamp: i64,
) -> Result<Vec<ListOffsetsPartitionResponse>, CliError> {
    let partitions = topic.partitions.iter().map(|p| ListOffsetsPartition {
        topic: topic.name.clone(),
        partition: p.partition,
        timestamp,
    });
    Ok(client.list_offsets(partitions.collect())?)
}

/// The topic line, its configs sorted by key, then one line per partition.
fn describe_lines(
    topic: &TopicMetadata,
    earliest: &[ListOffsetsPartitionResponse],
    latest: &[ListOffsetsPartitionResponse],
) -> Vec<String> {
    let mut lines = vec![format!(
        "{}\tpartitions={}",
        topic.name,
        topic.partitions.len()
    )];
    let mut configs = topic.configs.clone();
    configs.sort();
    lines.extend(configs.iter().map(|(k, v)| format!("{k}={v}")));
    let mut partitions = topic.partitions.clone();
    partitions.sort_by_key(|p| p.partition);
    for p in &partitions {
        let mut line = format!(
            "partition {}\tshard {}\tepoch {}",
            p.partition, p.shard, p.leader_epoch
        );
        if !p.error.is_ok() {
            line.push_str(&format!("\terror {}", p.error));
        }
        line.push_str(&format!(
            "\tlog_start {}",
            offset_text(earliest, p.partition)
        ));
        line.push_str(&format!("\tlog_end {}", offset_text(latest, p.partition)));
        lines.push(line);
    }
    lines
}

/// A partition's listed offset, or its error, or `?` if the broker left it out.
fn offset_text(offsets: &[ListOffsetsPartitionResponse], partition: u32) -> String {
    match offsets.iter().find(|o| o.partition == partition) {
        Some(o) if o.error.is_ok() => o.offset.to_string(),
        Some(o) => o.error.name().to_owned(),
        None => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use sluice_protocol::native::PartitionMetadata;
    use sluice_protocol::ErrorCode;

    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: TopicCommand,
    }

    fn parse(args: &[&str]) -> Result<TopicCommand, clap::Error> {
        let argv = std::iter::once("topic").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.command)
    }

    fn bootstrap(addr: &str) -> ConnectArgs {
        ConnectArgs {
            bootstrap: addr.into(),
        }
    }

    #[test]
    fn create_takes_partitions_repeated_configs_and_bootstrap() {
        let args = [
            "create",
            "orders",
            "--partitions",
            "12",
            "--config",
            "retention.ms=60000",
            "--config",
            "x=a=b",
            "--bootstrap",
            "h:1",
        ];
        let expected = TopicCommand::Create {
            name: "orders".into(),
            partitions: 12,
            configs: vec![
                ("retention.ms".into(), "60000".into()),
                ("x".into(), "a=b".into()),
            ],
            connect: bootstrap("h:1"),
        };
        assert_eq!(parse(&args).expect("parses"), expected);
    }

    #[test]
    fn defaults_are_one_partition_and_the_local_broker() {
        let expected = TopicCommand::Create {
            name: "t".into(),
            partitions: 1,
            configs: vec![],
            connect: bootstrap("127.0.0.1:9192"),
        };
        assert_eq!(parse(&["create", "t"]).expect("parses"), expected);
        let list = TopicCommand::List {
            connect: bootstrap("127.0.0.1:9192"),
        };
        assert_eq!(parse(&["list"]).expect("parses"), list);
    }

    #[test]
    fn describe_and_delete_need_a_name() {
        assert!(parse(&["describe"]).is_err());
        assert!(parse(&["delete"]).is_err());
        let delete = TopicCommand::Delete {
            name: "t".into(),
            connect: bootstrap("b:2"),
        };
        assert_eq!(
            parse(&["delete", "t", "--bootstrap", "b:2"]).expect("parses"),
            delete
        );
    }

    #[test]
    fn config_without_equals_is_rejected() {
        assert!(parse(&["create", "t", "--config", "retention"]).is_err());
        assert!(parse(&["create", "t", "--config", "=1"]).is_err());
    }

    fn topic(name: &str, partitions: u32) -> TopicMetadata {
        let partitions = (0..partitions).rev().map(|partition| PartitionMetadata {
            partition,
            shard: partition % 2,
            leader_epoch: 3,
            error: ErrorCode::NONE,
        });
        TopicMetadata {
            name: name.into(),
            error: ErrorCode::NONE,
            partitions: partitions.collect(),
            configs: vec![("b".into(), "2".into()), ("a".into(), "1".into())],
        }
    }

    #[test]
    fn list_is_sorted_by_name() {
        let lines = list_lines(vec![topic("zeta", 3), topic("alpha", 1)]);
        assert_eq!(lines, ["alpha\tpartitions=1", "zeta\tpartitions=3"]);
    }

    #[test]
    fn describe_shows_configs_then_partitions_in_order() {
        let offsets = |base: i64| -> Vec<ListOffsetsPartitionResponse> {
            (0..2)
                .map(|partition| ListOffsetsPartitionResponse {
                    topic: "t".into(),
                    partition,
                    error: ErrorCode::NONE,
                    offset: base + i64::from(partition),
                    timestamp: -1,
                })
                .collect()
        };
        let lines = describe_lines(&topic("t", 2), &offsets(0), &offsets(10));
        let expected = [
            "t\tpartitions=2",
            "a=1",
            "b=2",
            "partition 0\tshard 0\tepoch 3\tlog_start 0\tlog_end 10",
            "partition 1\tshard 1\tepoch 3\tlog_start 1\tlog_end 11",
        ];
        assert_eq!(lines, expected);
    }

    #[test]
    fn topic_errors_carry_the_code_name_and_the_message() {
        let results = [TopicResult {
            name: "t".into(),
            error: ErrorCode::TOPIC_ALREADY_EXISTS,
            message: "exists".into(),
        }];
        let e = check_topic_result(&results, "t").expect_err("fails");
        assert_eq!(e.0, "topic t: TOPIC_ALREADY_EXISTS (36): exists");
        assert!(check_topic_result(&[], "t").is_err());
    }
}
