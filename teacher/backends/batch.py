"""OpenAI Batch API backend for bulk annotation: write the batch JSONL, upload it, create the batch, poll,
ingest the results - resumable, with all state in the annotation store.

One run of `python -m scripts.annotate --teacher batch ...`:
1. polls every batch the store lists as open and ingests the finished ones (a killed or timed-out run
   left them there);
2. renders the frames whose keys have no answer and are not in an open batch, writes them as JSONL
   files (split by `batch_max_requests` / `batch_max_bytes`), uploads each (POST /files, purpose=batch),
   creates a batch (POST /batches) and records it with its items in the store in one transaction;
3. polls until every batch ended or `batch_wait_s` passed (then: "re-run to resume");
4. ingests outputs: answers parsed and stored like chat answers; unreadable ones become status "retry"
   and go into the next round (at most 1 + parse_retries rounds); per-line HTTP errors are stored as
   failed (4xx) or left pending (429/5xx); expired / cancelled batches give back what they finished.

A batch line's body is exactly the chat-completions body of `openai_chat.chat_body`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from teacher.backends.http import HttpClient, RequestError, RetryPolicy
from teacher.backends.openai_chat import api_key_from_env, chat_body, reply_from_completion
from teacher.config import TeacherConfig
from teacher.overlay import encode_jpeg, image_hash
from teacher.prompts import PROMPT_VERSION, prompt_hash
from teacher.runner import RunStats, _store_reply, plan_frames, render
from teacher.store import Annotation, AnnotationStore, Key
from vlmad.errors import UserError
from vlmad.io import atomic_write_bytes

TEACHER_NAME = "openai-batch"
FINAL_STATES = ("completed", "failed", "expired", "cancelled")


def custom_id(key: Key, attempt: int) -> str:
    """Short unique id of one request line (the API echoes it back)."""
    text = f"{key.sample_token}|{key.prompt_hash}|{key.model}|{key.image_hash}|{attempt}"
    h = hashlib.sha256(text.encode())
    return "r" + h.hexdigest()[:40]


def multipart(fields: dict[str, str], file_field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    """multipart/form-data body and its content type (standard library has no encoder)."""
    boundary = "vlmad" + uuid.uuid4().hex
    out = []
    for k, v in fields.items():
        out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    out.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
               f'filename="{filename}"\r\n'
               f"Content-Type: application/jsonl\r\n\r\n".encode())
    out.append(data)
    out.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


class BatchClient:
    """The four Batch API calls the backend needs."""

    def __init__(self, http: HttpClient):
        self.http = http

    def upload(self, data: bytes, filename: str) -> str:
        body, ctype = multipart({"purpose": "batch"}, "file", filename, data)
        obj = json.loads(self.http.request("POST", "/files", body, ctype))
        return obj["id"]

    def create(self, input_file_id: str) -> dict:
        body = {"input_file_id": input_file_id, "endpoint": "/v1/chat/completions",
                "completion_window": "24h"}
        return self.http.post_json("/batches", body)

    def get(self, batch_id: str) -> dict:
        return self.http.get_json(f"/batches/{batch_id}")

    def content(self, file_id: str) -> bytes:
        return self.http.request("GET", f"/files/{file_id}/content", None, None)


@contextlib.contextmanager
def _defer_sigint():
    """Hold Ctrl-C until the block ends: a batch created on the server but not recorded in the store would
    be submitted again on resume (duplicate requests). Only possible in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if caught:
        raise KeyboardInterrupt


def _ingest_lines(store: AnnotationStore, data: bytes, items: Mapping[str, tuple[Key, str]],
                  cfg: TeacherConfig) -> tuple[int, int]:
    """Store the answers of one output / error file. Returns (rows written, bad rows)."""
    rows = bad = 0
    for line in data.decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        cid = obj.get("custom_id")
        if cid not in items:
            continue
        key, name = items[cid]
        if store.status(key) == "ok":
            continue  # already answered (a line ingested twice changes nothing)
        prev = store.get(key)
        attempts = (prev.attempts if prev is not None and prev.status == "retry" else 0) + 1
        resp = obj.get("response") or {}
        code = int(resp.get("status_code") or 0)
        if code == 200 and isinstance(resp.get("body"), dict):
            try:
                reply = reply_from_completion(resp["body"], "batch")
            except RequestError as e:
                store.put(Annotation(key, name, PROMPT_VERSION, TEACHER_NAME, "failed", e.body, {}, "batch",
                                     attempts, "unexpected response shape", None))
                rows, bad = rows + 1, bad + 1
                continue
            st = _store_reply(store, key, name, TEACHER_NAME, reply.text, "batch", attempts, reply.usage,
                              final=attempts >= 1 + cfg.parse_retries)
            rows += 1
            bad += st not in ("ok", "retry")
        elif 400 <= code < 500 and code != 429:
            store.put(Annotation(key, name, PROMPT_VERSION, TEACHER_NAME, "failed",
                                 json.dumps(resp.get("body")), {}, "batch", attempts, f"HTTP {code}", None))
            rows, bad = rows + 1, bad + 1
        # 429 / 5xx / missing response: no row, the key goes into the next batch
    return rows, bad


def poll_and_ingest(store: AnnotationStore, client: BatchClient, cfg: TeacherConfig, deadline: float,
                    stop: threading.Event, stats: RunStats) -> bool:
    """Poll open batches until all ended (True) or the deadline / a stop (False); ingest the ended ones."""
    while True:
        open_batches = store.open_batches()
        if not open_batches:
            return True
        for b in open_batches:
            info = client.get(b["batch_id"])
            status = str(info.get("status", "unknown"))
            store.update_batch(b["batch_id"], status, info.get("output_file_id"), info.get("error_file_id"))
            if status not in FINAL_STATES:
                continue
            items = store.batch_items(b["batch_id"])
            for fid in (info.get("output_file_id"), info.get("error_file_id")):
                if fid:
                    rows, bad = _ingest_lines(store, client.content(fid), items, cfg)
                    stats.answers += rows
                    stats.failed += bad
            store.update_batch(b["batch_id"], "ingested" if status == "completed" else status)
        if not store.open_batches():
            return True
        if time.time() >= deadline or stop.wait(min(cfg.batch_poll_s, max(0.0, deadline - time.time()))):
            return False


def submit(store: AnnotationStore, client: BatchClient, cfg: TeacherConfig,
           records: Sequence[Mapping[str, Any]], dataroot: str | Path, by_token: Mapping[str, Mapping],
           limit: int | None, work_dir: Path, retry_failed: bool, progress: bool) -> int:
    """Render pending frames, write and submit batch files. Returns the number of request lines."""
    skip = store.keys_in_open_batches()
    plans = plan_frames(records, store, cfg.model, cfg, dataroot, by_token, retry_failed, skip)
    if limit is not None:
        plans = plans[:max(0, limit)]
    lines: list[bytes] = []
    items: list[tuple[str, Key, str]] = []
    size = n_total = 0

    def flush() -> None:
        nonlocal lines, items, size
        if not lines:
            return
        data = b"".join(lines)
        name = f"batch-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.jsonl"
        atomic_write_bytes(work_dir / name, data)  # kept for auditing; the API gets the same bytes
        with _defer_sigint():
            file_id = client.upload(data, name)
            info = client.create(file_id)
            store.add_batch(info["id"], file_id, str(info.get("status", "validating")), items)
        lines, items, size = [], [], 0

    for plan in tqdm(plans, unit="frame", disable=not progress, desc="batch: render + write"):
        img, _ = render(plan.record, dataroot, cfg, by_token)
        ih = image_hash(img)
        store.remember_image_hash(plan.fingerprint, ih)
        jpeg = None
        for name in ("P1", "P2"):
            key = Key(plan.record["token"], prompt_hash(name), cfg.model, ih)
            if key in skip:
                continue
            st = store.get(key)
            if st is not None and not (st.status == "retry"
                                       or (retry_failed and st.status in ("failed", "partial"))):
                continue
            jpeg = jpeg or encode_jpeg(img, cfg.jpeg_quality)
            attempt = st.attempts if st is not None else 0
            cid = custom_id(key, attempt)
            line = json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                               "body": chat_body(cfg, name, jpeg, cfg.structured)}).encode() + b"\n"
            if lines and (len(lines) >= cfg.batch_max_requests or size + len(line) > cfg.batch_max_bytes):
                flush()
            lines.append(line)
            items.append((cid, key, name))
            size += len(line)
            n_total += 1
    flush()
    return n_total


def run_batch(records: Sequence[Mapping[str, Any]], dataroot: str | Path, store: AnnotationStore,
              cfg: TeacherConfig, http: HttpClient | None = None, limit: int | None = None,
              retry_failed: bool = False, progress: bool = True, stop: threading.Event | None = None
              ) -> RunStats:
    """The whole batch workflow (see the module docstring). Re-running it resumes where it stopped."""
    t0 = time.time()
    stop = stop or threading.Event()
    http = http or HttpClient(cfg.base_url, api_key_from_env(), cfg.timeout_s,
                              RetryPolicy(cfg.max_retries, cfg.backoff_base_s, cfg.backoff_max_s), stop=stop)
    client = BatchClient(http)
    by_token = {r["token"]: r for r in records}
    work_dir = Path(str(store.path) + ".batches")
    stats = RunStats(frames=len(records))
    deadline = t0 + cfg.batch_wait_s
    finished = poll_and_ingest(store, client, cfg, deadline, stop, stats)  # leftovers of an earlier run
    for round_ in range(1 + cfg.parse_retries):
        if not finished:
            break
        # round 0: every pending frame (up to --limit); later rounds: only answers that could not be read
        again = store.tokens_with_status("retry")
        todo = records if round_ == 0 else [r for r in records if r["token"] in again]
        sent = submit(store, client, cfg, todo, dataroot, by_token, limit if round_ == 0 else None, work_dir,
                      retry_failed and round_ == 0, progress)
        stats.planned += sent
        if sent == 0:
            break
        finished = poll_and_ingest(store, client, cfg, deadline, stop, stats)
    if not finished:
        print(f"batches still running on the server; re-run the same command to resume "
              f"(state in {store.path})")
    stats.interrupted = not finished
    stats.elapsed_s = time.time() - t0
    stats.requests = http.request_count
    stats.status_counts = store.counts()
    return stats


def check_batch_config(cfg: TeacherConfig) -> None:
    if cfg.batch_max_requests > 50000 or cfg.batch_max_bytes > 200_000_000:
        raise UserError("the Batch API takes at most 50,000 requests and 200 MB per file; lower "
                        "batch_max_requests / batch_max_bytes")
