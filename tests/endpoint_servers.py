"""HTTP servers on 127.0.0.1 for the OpenAI engine's tests: a fault-injecting proxy in front of a real
OpenAI-compatible server, and a tiny scripted OpenAI-shaped server for the pure retry logic. Both run in
a daemon thread of the test process (stdlib http.server, one thread per connection) and stop with
`close()`; every request they see is kept in `.seen` (path, headers, body, what was answered).

Example:
    with FaultProxy("http://127.0.0.1:8000", faults=["429", "ok", "500", "slow"]) as proxy:
        OpenAIEngine(EngineSpec(backend="openai", base_url=proxy.url + "/v1", model="smol"))
    # faults are taken in order, one per chat/completions request, then cycled; "ok" forwards it

`free_port()` and `stop_group(process)` serve the tests that start a real server in a subprocess
(`vllm serve`, `datagen serve-model`).

Faults: "ok" (forward), "429" (Retry-After: `retry_after` seconds), "500", "slow" (forward after
`slow_s` seconds: longer than the client's timeout, it is a timeout; the server still did the work).
"""
from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(process: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM the process group a server was started in (start_new_session=True), SIGKILL after `timeout`."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class _Server:
    def __init__(self, handler_factory):
        self.seen: list[dict] = []
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_factory(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def record(self, entry: dict) -> None:
        with self._lock:
            self.seen.append(entry)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _handler(server, answer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                pass

        def do_GET(self):
            status, body, headers = answer(self, "GET", b"")
            self._send(status, body, headers)

        def do_POST(self):
            status, body, headers = answer(self, "POST", self._body())
            self._send(status, body, headers)

    return Handler


class FaultProxy(_Server):
    """Forwards to `upstream` (a real server), answering chat/completions requests with scripted faults."""

    def __init__(self, upstream: str, faults=("ok",), retry_after: float = 1.0, slow_s: float = 3.0):
        self.upstream = upstream.rstrip("/")
        self._faults = itertools.cycle(faults)
        self._fault_lock = threading.Lock()
        self.retry_after, self.slow_s = retry_after, slow_s
        super().__init__(lambda srv: _handler(srv, self._answer))

    def _next_fault(self, path: str) -> str:
        if not path.endswith("/completions"):
            return "ok"
        with self._fault_lock:
            return next(self._faults)

    def _answer(self, handler, method: str, body: bytes):
        fault = self._next_fault(handler.path)
        self.record({"path": handler.path, "fault": fault, "headers": dict(handler.headers), "body": body,
                     "at": time.monotonic()})
        if fault == "429":
            return 429, b'{"error": {"message": "rate limited"}}', {"Retry-After": f"{self.retry_after:g}"}
        if fault == "500":
            return 500, b'{"error": {"message": "injected"}}', {}
        if fault == "slow":
            time.sleep(self.slow_s)
        request = urllib.request.Request(self.upstream + handler.path, data=body if method == "POST" else None,
                                         method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                return response.status, response.read(), {}
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), {}


class ScriptedServer(_Server):
    """An OpenAI-shaped server whose chat answers are scripted: `script(request_json, call_index) ->
    (status, body_dict, headers)`. `/v1/models` lists `models`."""

    def __init__(self, script, models=("m",)):
        self._script, self._models = script, models
        self._calls = itertools.count()
        super().__init__(lambda srv: _handler(srv, self._answer))

    def _answer(self, handler, method: str, body: bytes):
        self.record({"path": handler.path, "headers": dict(handler.headers), "body": body, "at": time.monotonic()})
        if handler.path.endswith("/models"):
            return 200, json.dumps({"data": [{"id": m} for m in self._models]}).encode(), {}
        if not handler.path.endswith("/completions"):
            return 404, b'{"error": {"message": "not found"}}', {}
        status, answer, headers = self._script(json.loads(body or b"{}"), next(self._calls))
        return status, json.dumps(answer).encode(), headers or {}


def chat_answer(texts, prompt_tokens: int = 5) -> dict:
    """An OpenAI chat completion holding `texts` as its choices (one token per word, logprob -0.5)."""
    choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop",
                "logprobs": {"content": [{"token": w, "logprob": -0.5, "top_logprobs": []} for w in t.split()]}}
               for i, t in enumerate(texts)]
    return {"choices": choices, "usage": {"prompt_tokens": prompt_tokens,
                                          "completion_tokens": sum(len(t.split()) for t in texts)}}
