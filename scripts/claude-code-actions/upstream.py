#!/usr/bin/env python3
"""A scripted Messages API upstream for scripts/claude-code-actions/run.sh.

It stands where api.anthropic.com would, behind a tollgate gateway listener, and answers Claude Code:

- POST /v1/messages: when the request offers the script's tool and its last message carries no tool_result,
  the answer is a call of that tool (one tool_use block, after a text block when the script has "text"; streamed
  as content_block_start, input_json_delta pieces and content_block_stop, or whole when the request does not
  stream); once the last message carries a tool_result, or for any other request, the answer is plain text. With "stream_404" in the script, a streamed
  request gets 404, which makes Claude Code fall back to a non-streamed request.
- POST /v1/messages/count_tokens: an estimate; anything else: 404 in the Anthropic error shape.

The script is a JSON file re-read on every request, so the driver changes it between runs:
    {"tool": {"name": "Bash", "input": {"command": "…", "description": "…"}}, "text": "…", "stream_404": false}
Every request is appended to the log (one JSON object per line): method, path, whether it streamed, Claude Code's
session id, how many messages the conversation has, the tool_use_ids of the results its last message carries, and
what was answered.

    upstream.py --port PORT --script script.json --log requests.jsonl
"""

import argparse
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL_FALLBACK = "claude-sonnet-4-5"


def sse(event, data):
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def last_results(body):
    """The tool_use_ids of the tool_result blocks in the request's last message."""
    messages = body.get("messages") or []
    if not messages or not isinstance(messages[-1].get("content"), list):
        return []
    return [block.get("tool_use_id") for block in messages[-1]["content"] if block.get("type") == "tool_result"]


def offers(body, name):
    return any(isinstance(tool, dict) and tool.get("name") == name for tool in body.get("tools") or [])


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script_path = ""
    log_path = ""
    log_lock = threading.Lock()

    def log_message(self, format, *args):  # the request log below replaces http.server's stderr lines
        pass

    def record(self, **fields):
        line = {"method": self.command, "path": self.path, **fields}
        with self.log_lock, open(self.log_path, "a", encoding="utf-8") as log:
            log.write(json.dumps(line) + "\n")

    def script(self):
        with open(self.script_path, encoding="utf-8") as file:
            return json.load(file)

    def read_body(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {}

    def send_json(self, status, value):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("request-id", "req_stub" + uuid.uuid4().hex[:16])
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def not_found(self):
        self.send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": f"{self.path} not found"}})

    def do_GET(self):
        self.record(answer="404")
        self.not_found()

    def do_HEAD(self):
        self.record(answer="404")
        self.send_response(404)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_POST(self):
        body = self.read_body()
        path = self.path.split("?", 1)[0]
        if path == "/v1/messages/count_tokens":
            self.record(answer="count")
            return self.send_json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
        if path != "/v1/messages":
            self.record(answer="404")
            return self.not_found()
        script = self.script()
        stream = bool(body.get("stream"))
        results = last_results(body)
        common = {
            "stream": stream,
            "session": self.headers.get("x-claude-code-session-id"),
            "messages": len(body.get("messages") or []),
            "tool_results": results,
        }
        tool = script.get("tool")
        if stream and script.get("stream_404"):
            self.record(answer="404", **common)
            return self.not_found()
        if tool and not results and offers(body, tool["name"]):
            block = {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": tool["name"],
                     "input": tool["input"]}
            before = [{"type": "text", "text": script["text"]}] if script.get("text") else []
            self.record(answer="tool_use", tool_use_id=block["id"], **common)
            return self.answer(body, [*before, block], "tool_use", stream)
        text = "The tool's result came back; nothing more to do." if results else "Hello from the scripted upstream."
        self.record(answer="text", **common)
        return self.answer(body, [{"type": "text", "text": text}], "end_turn", stream)

    def answer(self, body, blocks, stop_reason, stream):
        message = {
            "id": "msg_stub" + uuid.uuid4().hex[:16], "type": "message", "role": "assistant",
            "model": body.get("model") or MODEL_FALLBACK, "content": blocks, "stop_reason": stop_reason,
            "stop_sequence": None, "usage": {"input_tokens": 120, "output_tokens": 30},
        }
        if not stream:
            return self.send_json(200, message)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", "req_stub" + uuid.uuid4().hex[:16])
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        start = dict(message, content=[], stop_reason=None, usage={"input_tokens": 120, "output_tokens": 1})
        self.chunk(sse("message_start", {"type": "message_start", "message": start}))
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                self.chunk(sse("content_block_start", {"type": "content_block_start", "index": index,
                                                       "content_block": {"type": "text", "text": ""}}))
                self.chunk(sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                       "delta": {"type": "text_delta", "text": block["text"]}}))
            else:
                opening = dict(block, input={})
                self.chunk(sse("content_block_start", {"type": "content_block_start", "index": index,
                                                       "content_block": opening}))
                text = json.dumps(block["input"])
                for piece in (text[: len(text) // 2], text[len(text) // 2 :]):
                    self.chunk(sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                           "delta": {"type": "input_json_delta",
                                                                     "partial_json": piece}}))
            self.chunk(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        self.chunk(sse("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                         "usage": {"output_tokens": 30}}))
        self.chunk(sse("message_stop", {"type": "message_stop"}))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def chunk(self, data):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--script", required=True, help="the JSON script, re-read on every request")
    parser.add_argument("--log", required=True, help="where each request is appended as a JSON line")
    arguments = parser.parse_args()
    Upstream.script_path = arguments.script
    Upstream.log_path = arguments.log
    server = ThreadingHTTPServer(("127.0.0.1", arguments.port), Upstream)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
