//! HTTP/1.1 as the forward proxy speaks it: message heads read with limits and parsed strictly (`head.rs`), and
//! bodies relayed as they arrive, by length, chunk by chunk or until close (`body.rs`). Also used to read a parent
//! proxy's answer to CONNECT.

pub mod body;
pub mod head;
