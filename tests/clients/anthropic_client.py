#!/usr/bin/env python3
"""One call with the Python `anthropic` SDK, as a real client makes it, for tollgate's integration tests.

Usage: anthropic_client.py MODE [MODEL]
  MODE   create  (messages.create, not streamed)
         stream  (messages.stream: SSE, merged by the SDK)
         count   (messages.count_tokens)
  MODEL  default claude-sonnet-4-5 (the Messages stub picks its scenario by model name)

Reads the environment the way the SDK does:
  ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL (default https://api.anthropic.com),
  HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY (any case; httpx trust_env),
  SSL_CERT_FILE / SSL_CERT_DIR (replace the system trust store; httpx trust_env),
  TOLLGATE_CLIENT_AUTH: bearer (default: what the SDK does with ANTHROPIC_API_KEY, `Authorization: Bearer KEY`) or
    x-api-key (`X-Api-Key: KEY` and no Authorization, as Claude Code sends an API key),
  TOLLGATE_CLIENT_MAX_RETRIES (default 0: one request, so a test sees what one call does),
  TOLLGATE_CLIENT_TIMEOUT (seconds, default 20),
  TOLLGATE_CLIENT_BODY: a JSON object sent as the SDK's extra_body with create and stream (e.g. the Messages stub's
    {"stub_blocks": [...]}, whose tool_use blocks the answer carries),
  TOLLGATE_CLIENT_PROXY_CERT and TOLLGATE_CLIENT_PROXY_KEY: present this client certificate to the https:// proxy
    HTTPS_PROXY names (mTLS), trusting SSL_CERT_FILE for the proxy too: the SDK then gets an httpx client whose proxy
    has that SSL context, as an application configures one (httpx reads no client certificate from the environment).

The SDK's own default client is used, not one built here: with anthropic 2.14 (httpx2 2.16) it honours the proxy
variables (anthropic's _DefaultHttpxClient mounts get_environment_proxies()) and SSL_CERT_FILE (httpcore2's
default_ssl_context: ssl.create_default_context(cafile=$SSL_CERT_FILE)), which tests/messages_stub.rs checks.

Prints exactly one JSON line and exits 0:
  {"ok": true, "mode": ..., "status": 200, "request_id": ..., "id": ..., "model": ..., "text": ...,
   "stop_reason": ..., "usage": {"input_tokens", "output_tokens", "cache_creation_input_tokens",
   "cache_read_input_tokens"}, "tool_uses": [{"id", "name", "input"}], "events": [...] (stream)}
                                                                  or, for count, {"ok": true, "input_tokens": N}
  {"ok": false, "mode": ..., "error": {"kind": "status", "status": 429, "type": "rate_limit_error", "message": ...,
   "request_id": ..., "retry_after": "7"}, "partial": {...} (stream)}
  {"ok": false, "mode": ..., "error": {"kind": "connection", "exception": ..., "message": ...}, "partial": {...}}
"partial" holds what a stream delivered before it failed: events, text, the types of the content blocks and the usage
merged so far.
Any other exception is a bug here or in the SDK: the traceback goes to stderr and the exit code is 1.
"""

import json
import os
import sys

import anthropic

try:  # anthropic 2.x is built on httpx2; older versions on httpx.
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx


def usage_of(usage):
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": usage.cache_creation_input_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
    }


def text_of(message):
    return "".join(block.text for block in message.content if getattr(block, "type", None) == "text")


def describe_message(message):
    return {
        "id": message.id,
        "model": message.model,
        "text": text_of(message),
        "stop_reason": message.stop_reason,
        "usage": usage_of(message.usage),
        "tool_uses": [
            {"id": block.id, "name": block.name, "input": block.input}
            for block in message.content
            if getattr(block, "type", None) == "tool_use"
        ],
    }


def status_error(error):
    body = error.body if isinstance(error.body, dict) else {}
    inner = body.get("error") if isinstance(body.get("error"), dict) else {}
    return {
        "kind": "status",
        "status": error.status_code,
        "type": inner.get("type"),
        "message": inner.get("message", str(error)),
        "request_id": error.response.headers.get("request-id"),
        "retry_after": error.response.headers.get("retry-after"),
        "should_retry": error.response.headers.get("x-should-retry"),
    }


def connection_error(error):
    return {"kind": "connection", "exception": type(error).__name__, "message": str(error)}


def proxy_client():
    """An httpx client for an https:// proxy with a client certificate, or None (the SDK's default client)."""
    cert = os.environ.get("TOLLGATE_CLIENT_PROXY_CERT")
    if not cert:
        return None
    import ssl

    context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE"))
    context.load_cert_chain(cert, os.environ["TOLLGATE_CLIENT_PROXY_KEY"])
    proxy = httpx.Proxy(os.environ["HTTPS_PROXY"], ssl_context=context)
    return anthropic.DefaultHttpxClient(proxy=proxy)


def main():
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in ("create", "stream", "count"):
        print(__doc__, file=sys.stderr)
        return 2
    mode = sys.argv[1]
    model = sys.argv[2] if len(sys.argv) == 3 else "claude-sonnet-4-5"
    auth = os.environ.get("TOLLGATE_CLIENT_AUTH", "bearer")
    if auth == "bearer":
        headers = None
    elif auth == "x-api-key":
        headers = {"X-Api-Key": os.environ.get("ANTHROPIC_API_KEY", ""), "Authorization": anthropic.omit}
    else:
        print(f"TOLLGATE_CLIENT_AUTH={auth!r}: bearer or x-api-key", file=sys.stderr)
        return 2
    client = anthropic.Anthropic(
        max_retries=int(os.environ.get("TOLLGATE_CLIENT_MAX_RETRIES", "0")),
        timeout=float(os.environ.get("TOLLGATE_CLIENT_TIMEOUT", "20")),
        default_headers=headers,
        http_client=proxy_client(),
    )
    messages = [{"role": "user", "content": "Say hello"}]
    extra_body = json.loads(os.environ.get("TOLLGATE_CLIENT_BODY", "null"))
    result = {"mode": mode}
    partial = None
    try:
        if mode == "create":
            raw = client.messages.with_raw_response.create(
                model=model, max_tokens=64, messages=messages, extra_body=extra_body
            )
            message = raw.parse()
            result.update(ok=True, status=raw.status_code, request_id=raw.headers.get("request-id"))
            result.update(describe_message(message))
        elif mode == "count":
            raw = client.messages.with_raw_response.count_tokens(model=model, messages=messages)
            count = raw.parse()
            result.update(ok=True, status=raw.status_code, request_id=raw.headers.get("request-id"))
            result.update(input_tokens=count.input_tokens)
        else:
            partial = {"events": [], "text": "", "blocks": [], "usage": None}
            with client.messages.stream(
                model=model, max_tokens=64, messages=messages, extra_body=extra_body
            ) as stream:
                result.update(status=stream.response.status_code, request_id=stream.response.headers.get("request-id"))
                for event in stream:
                    partial["events"].append(event.type)
                    snapshot = stream.current_message_snapshot
                    partial["text"] = text_of(snapshot)
                    partial["blocks"] = [block.type for block in snapshot.content]
                    partial["usage"] = usage_of(snapshot.usage)
                message = stream.get_final_message()
            result.update(ok=True, events=partial["events"])
            result.update(describe_message(message))
    except anthropic.APIStatusError as error:
        result.update(ok=False, error=status_error(error))
    except (anthropic.APIConnectionError, httpx.TransportError) as error:
        # APIConnectionError: before the response; a TransportError (e.g. RemoteProtocolError on a cut chunked body,
        # ReadError on a reset) comes straight from httpx while a stream is read.
        result.update(ok=False, error=connection_error(error))
    if not result["ok"] and partial is not None:
        result["partial"] = partial
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
