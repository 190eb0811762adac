"""The scripted OpenAI server with a Batch API: ``/v1/files`` and ``/v1/batches``.

Uploads (multipart, ``purpose=batch``) are kept in memory; a created batch goes
``validating`` -> ``in_progress`` -> its scripted end as it is retrieved (``polls`` retrieves
each). At its end every request line is answered with the same responder and payload as the
online ``/v1/chat/completions``, into an output file; lines it did not run (an expired batch),
lines a ``line_error`` hook refuses and every line of a failed batch go to the error file or
nowhere, as the real API does.

    with FakeBatchOpenAI(responder) as server:
        server.script(BatchScript("expired", answered=0.5))   # the next batch created
"""

from __future__ import annotations

import email.parser
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tests.fakes.openai_server import FakeOpenAI, Responder, _error, _Handler


@dataclass(frozen=True)
class BatchScript:
    """How one batch ends. ``answered``: the share of its lines run before it ends."""

    status: str = "completed"   # completed | expired | failed
    answered: float = 1.0
    polls: int | None = None    # retrieves in each of validating / in_progress (default: server's)


class FakeBatchOpenAI(FakeOpenAI):
    def __init__(self, responder: Responder | None = None, *, polls: int = 1,
                 line_error: Callable[[dict[str, Any]], int | None] | None = None, **kw: Any):
        super().__init__(responder, **kw)
        self._lock = threading.RLock()  # a batch's lines are answered under it, as one step
        self.polls = polls
        self.line_error = line_error or (lambda body: None)
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.submitted: list[list[str]] = []   # custom_ids of each batch created, in order
        self._scripts: deque[BatchScript] = deque()
        self._ids = itertools.count(1)

    def script(self, *outcomes: BatchScript) -> None:
        """How the next batches created end (then: completed)."""
        with self._lock:
            self._scripts.extend(outcomes)

    def release(self) -> None:
        """Let every open batch end at its next retrieves (as scripted, but no more waiting)."""
        with self._lock:
            for state in self.batches.values():
                state["script"] = replace(state["script"], polls=0)

    def finish(self) -> None:
        """End every open batch now, as scripted (a night has passed)."""
        with self._lock:
            for state in self.batches.values():
                if state["batch"]["status"] in ("validating", "in_progress"):
                    self._finish(state)
        self.release()

    # -- used by the handler ---------------------------------------------------------------

    def upload(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        with self._lock:
            file_id = f"file-{next(self._ids)}"
            self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data), "purpose": purpose,
                "created_at": int(time.time()), "filename": filename, "status": "processed"}

    def create(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            data = self.files.get(request.get("input_file_id", ""))
            if data is None:
                return {}
            script = self._scripts.popleft() if self._scripts else BatchScript()
            batch_id = f"batch-{next(self._ids)}"
            lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
            self.submitted.append([line["custom_id"] for line in lines])
            self.batches[batch_id] = {
                "batch": {"id": batch_id, "object": "batch", "endpoint": request["endpoint"],
                          "input_file_id": request["input_file_id"],
                          "completion_window": request["completion_window"],
                          "status": "validating", "created_at": int(time.time()),
                          "output_file_id": None, "error_file_id": None, "errors": None,
                          "request_counts": {"total": len(lines), "completed": 0,
                                             "failed": 0}},
                "lines": lines, "script": script, "retrieves": 0}
            return dict(self.batches[batch_id]["batch"])

    def retrieve(self, batch_id: str) -> dict[str, Any] | None:
        with self._lock:
            state = self.batches.get(batch_id)
            if state is None:
                return None
            batch, script = state["batch"], state["script"]
            state["retrieves"] += 1
            polls = self.polls if script.polls is None else script.polls
            if batch["status"] == "validating" and state["retrieves"] > polls:
                batch["status"] = "in_progress"
            elif batch["status"] == "in_progress" and state["retrieves"] > 2 * polls:
                self._finish(state)
            return dict(batch)

    def _finish(self, state: dict[str, Any]) -> None:
        """Answer the batch's lines (the lock is held)."""
        batch, script, lines = state["batch"], state["script"], state["lines"]
        batch["status"] = script.status
        if script.status == "failed":
            batch["errors"] = {"object": "list", "data": [
                {"code": "scripted_failure", "message": "the batch failed validation",
                 "param": None, "line": None}]}
            return
        run = round(len(lines) * script.answered)
        out, err = [], []
        for i, line in enumerate(lines):
            key, body = line["custom_id"], line["body"]
            if i >= run:
                err.append({"id": f"req-{i}", "custom_id": key, "response": None,
                            "error": {"code": "batch_expired",
                                      "message": "not run before the batch expired"}})
                continue
            status = self.line_error(body)
            if status is not None:
                err.append({"id": f"req-{i}", "custom_id": key, "error": None, "response": {
                    "status_code": status, "request_id": f"r{i}",
                    "body": _error(f"scripted {status}", "invalid_request_error")}})
                continue
            self.requests_total += 1
            payload = self.chat_payload(body, self.responder(body))
            out.append({"id": f"req-{i}", "custom_id": key, "error": None, "response": {
                "status_code": 200, "request_id": f"r{i}", "body": payload}})
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                file_id = f"file-{next(self._ids)}"
                self.files[file_id] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                batch[name] = file_id
        batch["request_counts"] = {"total": len(lines), "completed": len(out),
                                   "failed": len(err)}


class _BatchHandler(_Handler):
    def do_POST(self) -> None:
        fake: FakeBatchOpenAI = self.server.fake  # type: ignore[assignment]
        path = self.path.rstrip("/")
        if path.endswith("/v1/files"):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            head = f"Content-Type: {self.headers.get('Content-Type')}\r\n\r\n".encode()
            form = email.parser.BytesParser().parsebytes(head + raw)
            fields = {part.get_param("name", header="content-disposition"): part
                      for part in form.get_payload()}
            upload = fields["file"]
            purpose = fields["purpose"].get_payload(decode=True).decode()
            self._send(200, fake.upload(upload.get_payload(decode=True),
                                        upload.get_filename() or "upload", purpose))
        elif path.endswith("/v1/batches"):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            batch = fake.create(json.loads(raw))
            self._send(200, batch) if batch else self._send(
                400, _error("no such input file", "invalid_request_error"))
        else:
            super().do_POST()

    def do_GET(self) -> None:
        fake: FakeBatchOpenAI = self.server.fake  # type: ignore[assignment]
        parts = self.path.split("?")[0].rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == "batches":
            batch = fake.retrieve(parts[-1])
            self._send(200, batch) if batch else self._send(404, _error("no batch", "nf"))
        elif len(parts) >= 3 and parts[-3] == "files" and parts[-1] == "content":
            data = fake.files.get(parts[-2])
            if data is None:
                self._send(404, _error("no file", "not_found"))
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._send(404, _error(f"no route {self.path}", "not_found"))


FakeBatchOpenAI.handler_class = _BatchHandler
