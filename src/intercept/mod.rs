//! TLS interception: an allowed CONNECT to an intercepted host is answered by tollgate itself, with a leaf
//! minted from its own CA, and every request inside is checked and served like a gateway request.

pub mod ca;
