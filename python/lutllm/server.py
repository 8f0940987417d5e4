"""`lutllm serve`: an OpenAI-compatible HTTP server (stdlib http.server) over one lutllm.Llama.
Requests are answered one at a time in arrival order; it is not a multi-model or batching server.

Routes: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions (SSE when
"stream"), POST /tokenize {"content"} and POST /detokenize {"tokens"}. As OpenAI's API, the default
temperature is 1.0; errors are {"error": {"message", "type", "param", "code"}} with a 4xx status.
"""
from __future__ import annotations

import hmac
import json
import math
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .api import Llama

MAX_BODY = 8 << 20  # bytes


class ApiError(Exception):
    """An error answered to the client as {"error": {...}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class FairLock:
    """A lock granted in request order (tickets), so no client waits behind later arrivals."""

    def __init__(self):
        self._cv = threading.Condition()
        self._next = 0
        self._serving = 0

    def __enter__(self):
        with self._cv:
            me = self._next
            self._next += 1
            while self._serving != me:
                self._cv.wait()

    def __exit__(self, *exc):
        with self._cv:
            self._serving += 1
            self._cv.notify_all()


# ---- request validation -------------------------------------------------------------------------
def _num(body: dict, name: str, default, lo=None, hi=None, integer=False, lo_open=False):
    v = body.get(name, default)
    if v is None:
        return default
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or (not integer and not math.isfinite(v)):
        raise ApiError(400, f"'{name}' must be {'an integer' if integer else 'a number'}, got {v!r}", name,
                       "invalid_type")
    if (lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and v > hi):
        rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ApiError(400, f"'{name}' must be in {rng}, got {v!r}", name, "invalid_value")
    return v


def _sampling(body: dict, default_temp: float) -> dict:
    out = {
        "temperature": _num(body, "temperature", default_temp, 0.0, 2.0),
        "top_p": _num(body, "top_p", 0.95, 0.0, 1.0, lo_open=True),
        "top_k": _num(body, "top_k", 40, 0, None, integer=True),
        "min_p": _num(body, "min_p", 0.05, 0.0, 1.0),
        "typical_p": _num(body, "typical_p", 1.0, 0.0, 1.0, lo_open=True),
        "presence_penalty": _num(body, "presence_penalty", 0.0, -2.0, 2.0),
        "frequency_penalty": _num(body, "frequency_penalty", 0.0, -2.0, 2.0),
        "repeat_penalty": _num(body, "repeat_penalty", 1.0, 0.0, None, lo_open=True),
        "seed": _num(body, "seed", None, 0, None, integer=True),
    }
    n = _num(body, "n", 1, 1, 1, integer=True)
    del n
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 16:
            raise ApiError(400, "'stop' must be a string or a list of up to 16 strings", "stop", "invalid_type")
    out["stop"] = stop
    bias = body.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict):
            raise ApiError(400, "'logit_bias' must be an object of token id -> bias", "logit_bias", "invalid_type")
        out["logit_bias"] = bias
    return out


class LutllmServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, llm: Llama, model_id: str, api_key: str | None = None, quiet: bool = True):
        self.llm = llm
        self.model_id = model_id
        self.api_key = api_key
        self.quiet = quiet
        self.gen_lock = FairLock()
        self.created = int(time.time())
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # seconds a silent client may hold a connection
    server: LutllmServer

    def log_message(self, fmt, *args):
        if not self.server.quiet:
            super().log_message(fmt, *args)

    # ---- plumbing ---------------------------------------------------------------------------
    def _send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status >= 400:  # the request body may be unread: do not reuse the connection
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _error(self, e: ApiError) -> None:
        try:
            self._send_json(e.status, e.body())
        except OSError:
            pass

    def _auth(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        got = self.headers.get("Authorization", "")
        if not got.startswith("Bearer ") or not hmac.compare_digest(got[7:].strip().encode(), key.encode()):
            raise ApiError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')", None,
                           "invalid_api_key")

    def _body(self) -> dict:
        n = self.headers.get("Content-Length")
        if n is None:
            raise ApiError(411, "a Content-Length header is required", None, "length_required")
        try:
            n = int(n)
        except ValueError:
            raise ApiError(400, "bad Content-Length header", None, "invalid_request") from None
        if n < 0 or n > MAX_BODY:
            raise ApiError(413, f"request body over {MAX_BODY} bytes", None, "body_too_large")
        raw = self.rfile.read(n)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"request body is not valid JSON: {e}", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object", None, "invalid_json")
        return body

    def _check_model(self, body: dict) -> None:
        m = body.get("model")
        if m is not None and m != self.server.model_id:
            raise ApiError(404, f"The model '{m}' does not exist; this server serves '{self.server.model_id}'",
                           "model", "model_not_found")

    def _client_gone(self) -> bool:
        """True when the client closed its connection (checked between tokens)."""
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            if not r:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # ---- routes -----------------------------------------------------------------------------
    def do_GET(self):
        try:
            if self.path == "/health":
                return self._send_json(200, {"status": "ok"})
            self._auth()
            if self.path == "/v1/models":
                return self._send_json(200, {"object": "list", "data": [{
                    "id": self.server.model_id, "object": "model", "created": self.server.created,
                    "owned_by": "lutllm"}]})
            raise ApiError(404, f"no route GET {self.path}", None, "not_found")
        except ApiError as e:
            self._error(e)

    def do_POST(self):
        stream_started = [False]
        try:
            self._auth()
            routes = {"/v1/completions": self._completions, "/v1/chat/completions": self._chat,
                      "/tokenize": self._tokenize, "/detokenize": self._detokenize}
            fn = routes.get(self.path)
            if fn is None:
                raise ApiError(404, f"no route POST {self.path}", None, "not_found")
            fn(self._body(), stream_started)
        except ApiError as e:
            if not stream_started[0]:
                self._error(e)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # a bug: answer 500 rather than drop the connection
            if not stream_started[0]:
                self._error(ApiError(500, f"internal error: {type(e).__name__}: {e}", None, "internal_error"))

    def _tokenize(self, body, _):
        content = body.get("content")
        if not isinstance(content, str):
            raise ApiError(400, "'content' must be a string", "content", "invalid_type")
        add = body.get("add_special", False)
        toks = self.server.llm.tokenize(content.encode(), add_bos=bool(add), special=True)
        self._send_json(200, {"tokens": toks})

    def _detokenize(self, body, _):
        toks = body.get("tokens")
        n = self.server.llm.n_vocab()
        if not isinstance(toks, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in toks):
            raise ApiError(400, "'tokens' must be a list of integers", "tokens", "invalid_type")
        if any(not 0 <= t < n for t in toks):
            raise ApiError(400, f"'tokens' holds an id outside the vocabulary (0..{n - 1})", "tokens", "invalid_value")
        text = self.server.llm.detokenize(toks).decode("utf-8", "replace")
        self._send_json(200, {"content": text})

    def _max_tokens(self, body, *names):
        for name in names:
            if body.get(name) is not None:
                return _num(body, name, None, 1, None, integer=True)
        return None

    def _check_fits(self, n_prompt: int):
        n_ctx = self.server.llm.n_ctx()
        if n_prompt >= n_ctx:
            raise ApiError(400, f"the prompt has {n_prompt} tokens; this model's context is {n_ctx} tokens "
                                f"(and at least one must be left to generate)", "messages", "context_length_exceeded")

    def _completions(self, body, stream_started):
        self._check_model(body)
        llm = self.server.llm
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, list):
            n = llm.n_vocab()
            if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < n for t in prompt):
                raise ApiError(400, "'prompt' must be a string or a non-empty list of token ids in the vocabulary",
                               "prompt", "invalid_value")
            toks = list(prompt)
        elif isinstance(prompt, str):
            toks = llm._prompt_tokens(prompt)
        else:
            raise ApiError(400, "'prompt' must be a string or a list of token ids", "prompt", "invalid_type")
        self._check_fits(len(toks))
        kw = _sampling(body, 1.0)
        kw["max_tokens"] = self._max_tokens(body, "max_tokens") or 16
        lp = body.get("logprobs")
        if lp is not None:
            kw["logprobs"] = _num(body, "logprobs", None, 0, 20, integer=True)
        kw["echo"] = bool(body.get("echo", False))
        self._generate(lambda cb: llm.create_completion(toks, stream=bool(body.get("stream")), token_callback=cb,
                                                        model=self.server.model_id, **kw),
                       bool(body.get("stream")), stream_started, body, len(toks))

    def _chat(self, body, stream_started):
        self._check_model(body)
        llm = self.server.llm
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list", "messages", "invalid_type")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise ApiError(400, f"messages[{i}] must be an object with a 'role'", "messages", "invalid_value")
            c = m.get("content")
            if isinstance(c, list):  # content parts: keep the text ones
                m["content"] = "".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
        try:
            toks = llm.chat_prompt_tokens(messages)
        except ValueError as e:
            raise ApiError(400, str(e), "messages", "invalid_value") from None
        self._check_fits(len(toks))
        kw = _sampling(body, 1.0)
        kw["max_tokens"] = self._max_tokens(body, "max_completion_tokens", "max_tokens")
        if body.get("logprobs"):
            kw["logprobs"] = True
            kw["top_logprobs"] = _num(body, "top_logprobs", 0, 0, 20, integer=True)
        stream = bool(body.get("stream"))
        self._generate(lambda cb: llm.create_chat_completion(messages, stream=stream, token_callback=cb,
                                                             model=self.server.model_id, **kw),
                       stream, stream_started, body, len(toks))

    def _generate(self, start, stream: bool, stream_started, body, n_prompt: int = 0):
        n_generated = [0]

        def cb(_tok):
            n_generated[0] += 1
            return False if self._client_gone() else None

        with self.server.gen_lock:
            try:
                result = start(cb)
            except ValueError as e:
                raise ApiError(400, str(e), None, "invalid_value") from None
            if not stream:
                try:
                    out = result
                except ValueError as e:
                    raise ApiError(400, str(e), None, "invalid_value") from None
                return self._send_json(200, out)
            try:
                first = next(result)
            except StopIteration:
                first = None
            except ValueError as e:
                raise ApiError(400, str(e), None, "invalid_value") from None
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            stream_started[0] = True
            self.close_connection = True
            opts = body.get("stream_options")
            include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            try:
                last = first
                if first is not None:
                    self._sse(first)
                for chunk in result:
                    self._sse(chunk)
                    last = chunk
                if include_usage and last is not None:
                    n = n_generated[0]
                    self._sse({**last, "choices": [], "usage": {
                        "prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, OSError):
                result.close()  # the client left: stop generating

    def _sse(self, obj) -> None:
        self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        self.wfile.flush()


def make_server(llm: Llama, host: str = "127.0.0.1", port: int = 8080, api_key: str | None = None,
                model_id: str | None = None, quiet: bool = True) -> LutllmServer:
    """A bound (not yet serving) server; call serve_forever() and later shutdown() + server_close()."""
    return LutllmServer((host, port), llm, model_id or Path(llm.model_path).stem, api_key=api_key, quiet=quiet)
