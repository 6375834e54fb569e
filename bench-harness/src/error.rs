//! The one error type of the generator: a message for a person.

use std::fmt;

use sluice_protocol::client::ClientError;

/// Why a run stopped. The generator never retries: a failed run is reported
/// as failed, so no figure silently includes a reconnect.
#[derive(Debug)]
pub struct BenchError(String);

impl BenchError {
    pub fn new(message: impl Into<String>) -> BenchError {
        BenchError(message.into())
    }

    pub fn usage(message: &str) -> BenchError {
        BenchError(format!("usage: {message}"))
    }

    /// The same error, with what was being done in front.
    #[must_use]
    pub fn context(self, what: &str) -> BenchError {
        BenchError(format!("{what}: {}", self.0))
    }
}

/// A Kafka error code as a person reads it: `Kafka error 56 (KafkaStorageError)`.
pub fn kafka_error(code: i16) -> String {
    match kafka_protocol::error::ResponseError::try_from_code(code) {
        Some(kafka_protocol::error::ResponseError::Unknown(_)) | None => {
            format!("Kafka error {code}")
        }
        Some(e) => format!("Kafka error {code} ({e})"),
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

impl From<ClientError> for BenchError {
    fn from(e: ClientError) -> Self {
        BenchError(e.to_string())
    }
}

impl From<std::io::Error> for BenchError {
    fn from(e: std::io::Error) -> Self {
        BenchError(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::kafka_error;

    #[test]
    fn kafka_errors_are_named() {
        assert_eq!(kafka_error(56), "Kafka error 56 (KafkaStorageError)");
        assert_eq!(kafka_error(3), "Kafka error 3 (UnknownTopicOrPartition)");
        assert_eq!(kafka_error(-1), "Kafka error -1 (UnknownServerError)");
        assert_eq!(kafka_error(30_000), "Kafka error 30000");
    }
}
