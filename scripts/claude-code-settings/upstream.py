#!/usr/bin/env python3
"""A minimal Messages API upstream for scripts/claude-code-settings/run.sh.

It stands where api.anthropic.com would, behind tollgate's interception: POST /v1/messages is answered with one
text block ("hello"), streamed or whole as asked, and the names of the tools the request offers are logged; any
other request gets 404 in the Anthropic error shape. One JSON line per request goes to the log.

    upstream.py PORT requests.jsonl
"""

import json
import sys

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
LOG = sys.argv[2]
def sse(e, d): return f"event: {e}\ndata: {json.dumps(d)}\n\n".encode()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def rec(self, **f):
        with open(LOG, "a") as l: l.write(json.dumps({"method": self.command, "path": self.path, **f}) + "\n")
    def nf(self):
        b = b'{"type":"error","error":{"type":"not_found_error","message":"nf"}}'
        self.send_response(404); self.send_header("content-type","application/json"); self.send_header("content-length",str(len(b))); self.end_headers(); self.wfile.write(b)
    def do_GET(self): self.rec(); self.nf()
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        if not self.path.startswith("/v1/messages") or "count_tokens" in self.path:
            self.rec(); return self.nf()
        tools = [t.get("name") for t in body.get("tools") or []]
        self.rec(tools=tools, stream=body.get("stream"))
        model = body.get("model", "claude-sonnet-4-5")
        msg = {"id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": None, "usage": {"input_tokens": 5, "output_tokens": 1}}
        if body.get("stream"):
            out = sse("message_start", {"type": "message_start", "message": msg})
            out += sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            out += sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hello"}})
            out += sse("content_block_stop", {"type": "content_block_stop", "index": 0})
            out += sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}})
            out += sse("message_stop", {"type": "message_stop"})
            self.send_response(200); self.send_header("content-type", "text/event-stream"); self.send_header("content-length", str(len(out))); self.end_headers(); self.wfile.write(out)
        else:
            msg.update(content=[{"type": "text", "text": "hello"}], stop_reason="end_turn")
            b = json.dumps(msg).encode()
            self.send_response(200); self.send_header("content-type", "application/json"); self.send_header("content-length", str(len(b))); self.end_headers(); self.wfile.write(b)
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
