//! What tollgate knows of the Messages API, with no I/O: the fields of a request body (`request.rs`), the DLP
//! detectors (`dlp.rs`), the usage a response reports as JSON or SSE (`usage.rs`) and its price (`pricing.rs`).

pub mod dlp;
pub mod pricing;
pub mod request;
pub mod usage;
