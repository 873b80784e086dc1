mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_and_connect_reach_a_loopback_origin() {
    let origin = Origin::start().await;
    let gateway = TestGateway::start(&format!("auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}")).await;
    let request = format!("GET {} HTTP/1.1\r\nHost: ignored\r\nConnection: close\r\n\r\n", origin.url("/hi"));
    let response = exchange(gateway.proxy, request.as_bytes()).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, "origin saw /hi");
    let audit = gateway.audit().await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["decision"], "allow");
    assert_eq!(audit[0]["user"], "dev");
    assert_eq!(
        gateway
            .metric("tollgate_requests_total{decision=\"allow\",kind=\"http\",listener=\"proxy\",reason=\"ok\"}")
            .await,
        1.0
    );
}
