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
