"""A local OpenAI-compatible server for the tests and the annotation bench (never a stand-in at run time).

It binds 127.0.0.1 only, answers chat completions (optionally after a fixed delay, or with scripted
errors first), and implements the Batch API subset the batch backend uses (files, batches, content). It
records every request so tests can check the exact request shape and count.

    with FakeVLMServer(delay_s=0.05) as srv:
        base_url = srv.base_url  # http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from teacher.prompts import Q2_1


def default_answer(body: dict[str, Any]) -> str:
    """A valid answer to whichever prompt the request carries (JSON, like a structured-output model)."""
    text = json.dumps(body.get("messages", []))
    if "control action list" in text:
        return json.dumps({"control": "go straight", "turn": "none", "lane": "none"})
    return json.dumps({"current": "The ego vehicle drives forward.", "future": "It will keep its lane.",
                       "reasoning": "The road ahead is clear."})


def prompt_of(body: dict[str, Any]) -> str:
    """"P2" when the request asks the structured questionnaire, else "P1"."""
    return "P2" if Q2_1[:40] in json.dumps(body.get("messages", [])) else "P1"


class FakeVLMServer:
    """Threaded HTTP server on 127.0.0.1 with scripted behaviour. Thread-safe request log."""

    def __init__(self, delay_s: float = 0.0, answer_fn: Callable[[dict], str] = default_answer,
                 reject_structured: bool = False, max_requests: int = 100_000,
                 batch_polls_before_done: int = 1):
        self.delay_s = delay_s  # seconds before each chat answer
        self.answer_fn = answer_fn  # request body -> assistant text
        self.reject_structured = reject_structured  # 400 when the body has response_format
        self.max_requests = max_requests  # safety cap: every request beyond it gets 503
        # GET /batches/{id} answers "in_progress" this many times before "completed"
        self.batch_polls_before_done = batch_polls_before_done
        # responses served first, in order: (status, headers, body)
        self.script: list[tuple[int, dict[str, str], str]] = []
        self.requests: list[dict[str, Any]] = []  # {"method", "path", "headers", "body", "t"}
        self._lock = threading.Lock()
        self._files: dict[str, bytes] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    # ------------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeVLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def chat_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["path"].endswith("/chat/completions")]

    def count(self, path_suffix: str = "/chat/completions") -> int:
        with self._lock:
            return sum(r["path"].endswith(path_suffix) for r in self.requests)

    def batch_lines(self) -> int:
        """Request lines in all uploaded batch files."""
        with self._lock:
            return sum(len([x for x in d.splitlines() if x.strip()]) for d in self._files.values()
                       if not d.startswith(b"OUT"))

    # ------------------------------------------------------------------------------------------------
    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        text = self.answer_fn(body)
        return {"id": "chatcmpl-fake", "object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}

    def _handle(self, method: str, path: str, headers: dict[str, str], raw: bytes
                ) -> tuple[int, dict[str, str], bytes]:
        body: Any = None
        if raw and headers.get("content-type", "").startswith("application/json"):
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                return 400, {}, b'{"error": {"message": "invalid JSON"}}'
        with self._lock:
            self.requests.append({"method": method, "path": path, "headers": headers, "body": body,
                                  "t": time.time()})
            n = len(self.requests)
            scripted = self.script.pop(0) if self.script and path.endswith("/chat/completions") else None
        if n > self.max_requests:
            return 503, {}, b'{"error": {"message": "request cap reached"}}'
        if scripted is not None:
            status, hdrs, text = scripted
            return status, hdrs, text.encode()
        if method == "POST" and path.endswith("/chat/completions"):
            if self.reject_structured and isinstance(body, dict) and "response_format" in body:
                return 400, {}, b'{"error": {"message": "response_format json_schema is not supported"}}'
            if self.delay_s:
                time.sleep(self.delay_s)
            return 200, {}, json.dumps(self._completion(body)).encode()
        if method == "POST" and path.endswith("/files"):
            data = _multipart_file(raw, headers.get("content-type", ""))
            with self._lock:
                fid = f"file-{len(self._files)}"
                self._files[fid] = data
            return 200, {}, json.dumps({"id": fid, "object": "file", "purpose": "batch"}).encode()
        if method == "POST" and path.endswith("/batches"):
            with self._lock:
                bid = f"batch-{len(self._batches)}"
                self._batches[bid] = {"id": bid, "status": "validating", "polls": 0,
                                      "input_file_id": body["input_file_id"]}
            return 200, {}, json.dumps({"id": bid, "status": "validating"}).encode()
        if method == "GET" and "/batches/" in path:
            bid = path.rsplit("/", 1)[1]
            with self._lock:
                b = self._batches.get(bid)
                if b is None:
                    return 404, {}, b'{"error": {"message": "no such batch"}}'
                b["polls"] += 1
                if b["polls"] > self.batch_polls_before_done and b["status"] != "completed":
                    b["output_file_id"] = self._run_batch(self._files[b["input_file_id"]])
                    b["status"] = "completed"
                elif b["status"] != "completed":
                    b["status"] = "in_progress"
                out = {k: v for k, v in b.items() if k != "polls"}
            return 200, {}, json.dumps(out).encode()
        if method == "GET" and path.endswith("/content"):
            fid = path.split("/")[-2]
            with self._lock:
                data = self._files.get(fid)
            if data is None:
                return 404, {}, b'{"error": {"message": "no such file"}}'
            return 200, {"Content-Type": "application/jsonl"}, data[3:] if data.startswith(b"OUT") else data
        return 404, {}, b'{"error": {"message": "unknown route"}}'

    def _run_batch(self, data: bytes) -> str:
        """Answer every line of an input file; returns the output file id (called under the lock)."""
        out = []
        for line in data.decode().splitlines():
            if not line.strip():
                continue
            req = json.loads(line)
            out.append(json.dumps({"id": "batch_req", "custom_id": req["custom_id"],
                                   "response": {"status_code": 200, "body": self._completion(req["body"])},
                                   "error": None}))
        fid = f"file-{len(self._files)}"
        self._files[fid] = b"OUT" + ("\n".join(out) + "\n").encode()
        return fid

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self, method: str) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra, payload = server._handle(method, self.path, headers, raw)
                self.send_response(status)
                self.send_header("Content-Type", extra.pop("Content-Type", "application/json"))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                self._serve("POST")

            def do_GET(self) -> None:  # noqa: N802
                self._serve("GET")

        return Handler


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout test) closes the socket under us: not worth a traceback."""


def _multipart_file(raw: bytes, content_type: str) -> bytes:
    """The content of the file part of a multipart/form-data body."""
    boundary = content_type.split("boundary=", 1)[-1].encode()
    for part in raw.split(b"--" + boundary):
        head, _, content = part.partition(b"\r\n\r\n")
        if b"filename=" in head:
            return content[:-2] if content.endswith(b"\r\n") else content
    return b""
