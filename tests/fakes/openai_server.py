"""A scripted OpenAI-compatible HTTP server on loopback, for tests and benchmarks.

Serves ``POST /v1/chat/completions`` and ``POST /v1/embeddings`` with the JSON the real API
returns. A ``responder(request_json) -> str`` decides each answer's text; embeddings are a
normalised hashed bag of words unless an ``embedder`` is given. Faults are scripted with
:meth:`FakeOpenAI.inject`: the next requests, in arrival order, answer 429 (with Retry-After),
an error status, slowly, never (a hang), or with a protocol-breaking text. The server counts
requests (in total and per distinct request body) and the most requests it had in flight.

    with FakeOpenAI(lambda req: "[[7]]") as server:
        server.inject(Fault.rate_limit(retry_after=1), times=3)
        client = LLMClient(base_url=server.url, model="m")
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import re
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[dict[str, Any]], str]
Embedder = Callable[[str], list[float]]


@dataclass(frozen=True)
class Fault:
    """What one request gets instead of a plain answer."""

    kind: str  # "status" | "slow" | "hang" | "text"
    status: int = 500
    retry_after: float | None = None
    seconds: float = 0.0
    text: str = ""
    message: str = ""   # an error's message; "{api_key}" echoes the caller's bearer token

    @classmethod
    def rate_limit(cls, retry_after: float | None = 1.0) -> Fault:
        return cls("status", 429, retry_after=retry_after)

    @classmethod
    def error(cls, status: int = 500, retry_after: float | None = None,
              message: str = "") -> Fault:
        return cls("status", status, retry_after=retry_after, message=message)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Answer normally after ``seconds``."""
        return cls("slow", seconds=seconds)

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Fault:
        """Say nothing for ``seconds`` (longer than the client's timeout), then hang up."""
        return cls("hang", seconds=seconds)

    @classmethod
    def bad_text(cls, text: str = "I would rather not give a score.") -> Fault:
        """A well-formed HTTP answer whose text breaks the judge protocol."""
        return cls("text", text=text)


def bag_of_words(text: str, dim: int = 64) -> list[float]:
    """Deterministic unit vector: signed hashed word counts (shared words = similar vectors)."""
    vec = [0.0] * dim
    for word in re.findall(r"\w+", text.lower()):
        h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        vec[h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vec))
    return [v / norm for v in vec] if norm else vec


def body_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _words(value: Any) -> int:
    return len((value if isinstance(value, str) else json.dumps(value)).split())


class FakeOpenAI:
    """The server; a context manager that starts it on a free port and stops it cleanly."""

    handler_class: type[BaseHTTPRequestHandler]  # set below the handler (_Handler)

    def __init__(self, responder: Responder | None = None, *, embedder: Embedder | None = None,
                 latency_s: float = 0.0, dim: int = 64, port: int = 0):
        self.requested_port = port  # 0: any free port
        self.responder = responder or (lambda request: "OK")
        self.embedder = embedder or (lambda text: bag_of_words(text, dim))
        self.latency_s = latency_s
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.reset_counts()

    # -- control ---------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        self._stop.clear()
        self._httpd = _Server(("127.0.0.1", self.requested_port), self.handler_class)
        self._httpd.fake = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-openai",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stop.set()  # wakes sleeping (slow / hanging) handlers
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()  # joins handler threads
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL for an OpenAI client (ends in ``/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def inject(self, fault: Fault, times: int = 1) -> None:
        """Queue ``fault`` for the next ``times`` requests (after those already queued)."""
        with self._lock:
            self._faults.extend([fault] * times)

    def clear_faults(self) -> None:
        """Drop the faults still queued (the endpoint recovers)."""
        with self._lock:
            self._faults.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests_total = 0
            self.by_body: Counter[str] = Counter()
            self.by_path: Counter[str] = Counter()
            self.statuses: Counter[int] = Counter()
            self.in_flight = 0
            self.max_in_flight = 0
            self.bodies: list[dict[str, Any]] = []
            self.answered: Counter[str] = Counter()
            self.last_headers: dict[str, str] = {}

    @property
    def repeated_requests(self) -> int:
        """Requests whose exact body had been seen before (0 = no call was paid twice)."""
        return sum(n - 1 for n in self.by_body.values())

    # -- used by the handler ---------------------------------------------------------------

    def _enter(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> Fault | None:
        with self._lock:
            self.requests_total += 1
            self.by_body[body_hash(body)] += 1
            self.by_path[path] += 1
            self.bodies.append(body)
            self.last_headers = headers
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self._faults.popleft() if self._faults else None

    def _leave(self, status: int | None, body: dict[str, Any] | None = None) -> None:
        with self._lock:
            self.in_flight -= 1
            if status is not None:
                self.statuses[status] += 1
            if status == 200 and body is not None:
                self.answered[body_hash(body)] += 1

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def chat_payload(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        finish = "stop"
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if limit is not None and len(text.split()) > int(limit):
            text, finish = " ".join(text.split()[: int(limit)]), "length"
        prompt_tokens = sum(_words(m.get("content", "")) for m in body.get("messages", []))
        completion_tokens = len(text.split())
        with self._lock:
            serial = self.requests_total
        return {
            "id": f"chatcmpl-fake-{serial}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", "fake"),
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def embeddings_payload(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = body.get("input", [])
        texts = [inputs] if isinstance(inputs, str) else [str(t) for t in inputs]
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(texts):
            vector = [float(v) for v in self.embedder(text)]
            if as_base64:  # what the openai package asks for by default: packed float32
                packed = struct.pack(f"<{len(vector)}f", *vector)
                data.append({"object": "embedding", "index": i,
                             "embedding": base64.b64encode(packed).decode()})
            else:
                data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = sum(_words(t) for t in texts)
        return {"object": "list", "data": data, "model": body.get("model", "fake"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default listen backlog (5) drops bursts of connections
    fake: FakeOpenAI

    def __init__(self, *args: Any, **kwargs: Any):
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End idle keep-alive connections so their handler threads return and can be joined."""
        with self._open_lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms stall
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet tests
        pass

    def do_POST(self) -> None:
        fake = self.server.fake
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send(400, _error("request body is not JSON", "invalid_request_error"))
            return
        fault = fake._enter(self.path, body, {k.lower(): v for k, v in self.headers.items()})
        status: int | None = None
        try:
            if fake.latency_s:
                fake._sleep(fake.latency_s)
            if fault is not None and fault.kind == "hang":
                fake._sleep(fault.seconds)
                self.close_connection = True  # hang up without a word
                return
            if fault is not None and fault.kind == "slow":
                fake._sleep(fault.seconds)
            if fault is not None and fault.kind == "status":
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = f"{fault.retry_after:g}"
                kind = "rate_limit_error" if fault.status == 429 else "server_error"
                key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                message = (fault.message or f"scripted {fault.status}").replace("{api_key}", key)
                status = self._send(fault.status, _error(message, kind), headers)
            elif self.path.rstrip("/").endswith("/chat/completions"):
                text = fault.text if fault is not None and fault.kind == "text" \
                    else fake.responder(body)
                status = self._send(200, fake.chat_payload(body, text))
            elif self.path.rstrip("/").endswith("/embeddings"):
                status = self._send(200, fake.embeddings_payload(body))
            else:
                status = self._send(404, _error(f"no route {self.path}", "not_found"))
        finally:
            fake._leave(status, body)

    def _send(self, status: int, payload: dict[str, Any],
              headers: dict[str, str] | None = None) -> int:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (its timeout): nothing to do
        return status


FakeOpenAI.handler_class = _Handler


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}
