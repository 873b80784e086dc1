"""mitmproxy addon for the load harness (benches/load/, scenarios intercept and sse).

Requests for https://api.anthropic.com are sent to the harness's plain-HTTP Messages API stub instead
(`--set bench_stub=127.0.0.1:PORT`), as tollgate's `routing` sends them to its `stub` upstream; SSE responses
are streamed to the client as they arrive (mitmproxy buffers whole responses by default).

    mitmdump -q -s benches/mitm_stub.py --set bench_stub=127.0.0.1:PORT --set upstream_cert=false ...
"""

from mitmproxy import ctx, http

API_HOST = "api.anthropic.com"


class StubUpstream:
    def load(self, loader):
        loader.add_option(
            "bench_stub", str, "", "host:port of the plain-HTTP stub that answers for api.anthropic.com"
        )

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.host == API_HOST and ctx.options.bench_stub:
            host, port = ctx.options.bench_stub.rsplit(":", 1)
            flow.request.scheme = "http"
            flow.request.host = host
            flow.request.port = int(port)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and flow.response.headers.get("content-type", "").startswith("text/event-stream"):
            flow.response.stream = True


addons = [StubUpstream()]
