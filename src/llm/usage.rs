//! Metering: the token usage of a Messages API response, read from a JSON body or an SSE stream as it passes,
//! without buffering the stream and without changing a byte of it.

/// Token counts of one response (the Messages API `usage` object).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

/// What a response told about itself once it ended (or was cut).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metered {
    /// The usage seen; `None` when the response carried none (e.g. an error body).
    pub usage: Option<Usage>,
    /// The model the response names.
    pub model: Option<String>,
    /// The `error.type` of an error body or of an `event: error` after a 200.
    pub error: Option<String>,
    /// The response ended normally (`message_stop` for SSE, a whole JSON body otherwise).
    pub complete: bool,
}

/// Reads usage from a response body chunk by chunk.
#[derive(Debug)]
pub struct Meter {}

impl Meter {
    /// A meter for a response with this `content-type` (`text/event-stream` = SSE, else JSON).
    pub fn for_content_type(_content_type: Option<&str>) -> Self {
        Self {}
    }

    /// Looks at the next chunk of the body, in order.
    pub fn feed(&mut self, _chunk: &[u8]) {}

    /// What was seen; call after the last chunk, or when the stream was cut.
    pub fn finish(self) -> Metered {
        Metered::default()
    }
}
