//! The load harness's parameters: body sizes, connection and worker counts, caps, timeouts, and the hosts and
//! rates of the interception scenarios.

use std::time::Duration;

/// Body size of `GET /` on the origin.
pub const SMALL_BODY_LENGTH: usize = 100;
/// Body size of `GET /bulk` on the origin (1 GiB).
pub const BULK_LENGTH: u64 = 1 << 30;
/// Read buffer of the bulk download.
pub const BULK_READ_BUFFER: usize = 256 * 1024;
/// Read buffer of the request/response scenarios.
pub const SMALL_READ_BUFFER: usize = 16 * 1024;
/// Scenario a: concurrent keep-alive connections.
pub const KEEP_ALIVE_CONNECTIONS: usize = 32;
/// Scenario b: concurrent CONNECT + GET + close workers.
pub const CONNECT_WORKERS: usize = 16;
/// Scenario d: concurrent openers.
pub const TUNNEL_OPENERS: usize = 64;
/// Hard cap on requests in one round of scenario a (the time bound normally ends it first).
pub const KEEP_ALIVE_MAX_REQUESTS: u64 = 5_000_000;
/// Scenario a, paced: requests/s over the same connections, in evenly spaced slots: below what every target
/// serves back to back, so that latency is the proxy's own and not a queue (with connections saturated, latency
/// is connections / throughput for any proxy).
pub const KEEP_ALIVE_PACED_RATE: u32 = 5_000;
/// Hard cap on operations in one round of scenario b.
pub const CONNECT_MAX_OPERATIONS: u64 = 1_000_000;
/// Hard cap on recorded latencies per worker (memory bound).
pub const MAX_SAMPLES_PER_WORKER: usize = 1_000_000;
/// A worker gives up after this many errors in one round.
pub const MAX_ERRORS_PER_WORKER: u64 = 200;
/// Timeout of one request/response exchange (including connect).
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of one 1 GiB download.
pub const BULK_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed to open all idle tunnels of scenario d.
pub const TUNNELS_OPEN_TIMEOUT: Duration = Duration::from_secs(90);
/// Readiness: connect attempts, 100 ms apart.
pub const READY_ATTEMPTS: u32 = 150;
/// RLIMIT_NOFILE the harness asks for (5,000 tunnels need ~10,000 descriptors on each side).
pub const WANTED_OPEN_FILES: u64 = 65536;
/// Pause between rounds, so closing sockets of one round do not load the next.
pub const ROUND_PAUSE: Duration = Duration::from_millis(500);
/// Largest request body the in-process servers read.
pub const MAX_REQUEST_BODY: u64 = 1 << 20;
/// Scenarios intercept and sse: the host tollgate and mitmproxy intercept, and the domain whose names scenario
/// intercept uses to make tollgate and mitmproxy mint a leaf.
pub const API_HOST: &str = "api.anthropic.com";
pub const MINT_DOMAIN: &str = "mint.example.com";
/// Scenarios intercept and sse: the model the client asks for and the stub answers as.
pub const MODEL: &str = "claude-sonnet-4-5";
/// Scenario intercept: keep-alive tunnels sending requests back to back.
pub const INTERCEPT_TUNNELS: usize = 32;
/// Scenario intercept, paced: requests/s, evenly spaced, over this many keep-alive tunnels.
pub const PACED_RATE: u32 = 500;
pub const PACED_TUNNELS: usize = 8;
/// Scenario gateway, paced: requests/s, evenly spaced over `PACED_TUNNELS` keep-alive connections.
pub const GATEWAY_PACED_RATES: [u32; 2] = [15, 200];
/// A paced request sent later than this after its slot is counted as late (tokio's timer has 1 ms ticks).
pub const PACE_SLACK: Duration = Duration::from_millis(2);
/// Scenario intercept: new hosts per round, each opened twice (CONNECT + TLS handshake): minted, then cached.
pub const MINT_HOSTS: usize = 20;
/// Scenario sse: concurrent keep-alive connections, each asking for one streamed response after the other.
pub const SSE_CONNECTIONS: usize = 4;
/// Scenario sse: `content_block_delta` events per response, and the stub's gap between events.
pub const SSE_DELTAS: usize = 20;
pub const SSE_GAP: Duration = Duration::from_millis(2);
/// Hard cap on streamed responses in one round of scenario sse.
pub const SSE_MAX_STREAMS: u64 = 100_000;
