"""The annotation runner: which (frame, prompt) keys still need an answer, asking for them with bounded
concurrency, and writing every answer to the store the moment it arrives.

Guarantees (tested in tests/test_teacher_runner.py against a real local HTTP server):
- a finished run repeated sends zero requests (every key has a row);
- an interrupted run (Ctrl-C / SIGINT / --limit) resumes with no lost and no duplicated request: on
  interrupt no new request starts, requests in flight finish and are stored, then the run exits. Only a
  hard kill (SIGKILL, power loss) can lose the answers in flight (at most `concurrency` frames);
- a readable answer is stored as "ok"; an unreadable one is asked again up to `parse_retries` times and
  then stored as "partial" (some parts read) or "failed" (none), with the raw text; a non-retryable HTTP
  error (400, ...) is stored as "failed" with the error body. Transient failures that outlast the retry
  policy are not stored (the key stays pending for the next run) and are counted in the progress bar.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from teacher.answers import is_complete, parse_answer
from teacher.backends.http import RequestError, Stopped
from teacher.backends.rule import RuleTeacher, rule_input_hash
from teacher.config import TeacherConfig
from teacher.overlay import (
    FRONT,
    OVERLAY_VERSION,
    SIX_VIEW_GRID,
    OverlayConfig,
    encode_jpeg,
    front_overlay,
    image_hash,
    sequence_composite,
    six_view_composite,
)
from teacher.prompts import PROMPT_VERSION, PROMPTS, prompt_hash, prompt_text
from teacher.store import Annotation, AnnotationStore, Key
from vlmad.errors import UserError
from vlmad.io import sha256_bytes

PROMPT_NAMES = tuple(PROMPTS)  # ("P1", "P2"): two requests per frame
VIEWS = ("front", "six", "sequence")


# ----------------------------------------------------------------------------------------------------
# Images and keys
# ----------------------------------------------------------------------------------------------------
def render(record: Mapping[str, Any], dataroot: str | Path, cfg: TeacherConfig,
           by_token: Mapping[str, Mapping] | None = None) -> tuple[np.ndarray, bool]:
    """The image the teacher sees for `record` under `cfg.view`: (H, W, 3) RGB, line drawn."""
    ocfg = OverlayConfig(still_threshold_m=cfg.still_threshold_m)
    if cfg.view == "front":
        return front_overlay(dataroot, record, ocfg)
    if cfg.view == "six":
        return six_view_composite(dataroot, record, ocfg)
    if cfg.view == "sequence":
        return sequence_composite(dataroot, record, by_token or {}, ocfg)
    raise UserError(f"unknown view {cfg.view!r}; choose one of {VIEWS}")


def _view_cams(record: Mapping[str, Any], view: str, by_token: Mapping[str, Mapping]) -> list[Mapping]:
    if view == "six":
        return [record["cams"][n] for row in SIX_VIEW_GRID for n in row if n in record["cams"]]
    cams = [record["cams"][FRONT]] if FRONT in record.get("cams", {}) else []
    if view == "sequence":
        rec = record
        for _ in range(6):
            rec = by_token.get(rec.get("next", "")) or {}
            if FRONT in rec.get("cams", {}):
                cams.append(rec["cams"][FRONT])
    return cams


def fingerprint(record: Mapping[str, Any], dataroot: str | Path, cfg: TeacherConfig,
                by_token: Mapping[str, Mapping] | None = None) -> str:
    """Cheap hash of everything the rendered image depends on (files by size + mtime, no decoding)."""
    ocfg = asdict(OverlayConfig(still_threshold_m=cfg.still_threshold_m))
    parts: list[Any] = [OVERLAY_VERSION, cfg.view, ocfg,
                        np.round(np.asarray(record.get("ego_fut", []), float), 4).tolist(),
                        np.asarray(record.get("ego_fut_mask", []), bool).tolist()]
    for cam in _view_cams(record, cfg.view, by_token or {}):
        p = Path(dataroot) / cam["path"]
        try:
            st = p.stat()
            stat = (st.st_size, st.st_mtime_ns)
        except OSError:
            stat = None
        parts += [cam["path"], stat, np.round(np.asarray(cam["intrinsics"], float), 5).tolist(),
                  np.round(np.asarray(cam["ego_from_cam"], float), 6).tolist()]
    return sha256_bytes(json.dumps(parts, default=str).encode())[:24]


def view_size(record: Mapping[str, Any], view: str) -> tuple[int, int]:
    """(width, height) of the image sent, from the record's camera sizes (no image is read)."""
    def wh(name: str) -> tuple[int, int]:
        cam = record["cams"][name]
        return int(cam["width"]), int(cam["height"])

    if view == "front":
        return wh(FRONT)
    if view == "six":
        heights = [max(round(wh(n)[1] * 640 / wh(n)[0]) for n in row) for row in SIX_VIEW_GRID]
        return 3 * 640, sum(heights)
    w, h = wh(FRONT)
    return 4 * 480, 2 * round(h * 480 / w)


def image_tokens(width: int, height: int, detail: str = "high") -> int:
    """OpenAI's image input tokens (GPT-4o): 85 + 170 per 512-px tile after the API's resizing.

    The API first fits the image inside 2048 x 2048, then scales it so that the shortest side is at most
    768 px, then counts 512-px tiles. detail="low" is a flat 85. "auto" is counted as "high" (the API
    picks high for images of this size), so the estimate is an upper bound.
    """
    if detail == "low":
        return 85
    w, h = float(width), float(height)
    s = min(1.0, 2048.0 / max(w, h))
    w, h = w * s, h * s
    s = min(1.0, 768.0 / min(w, h))
    w, h = w * s, h * s
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def text_tokens(text: str) -> int:
    """Rough token count of English text (~4 characters per token) plus message overhead."""
    return math.ceil(len(text) / 4) + 10


# ----------------------------------------------------------------------------------------------------
# Planning: what still needs a request
# ----------------------------------------------------------------------------------------------------
@dataclass
class FramePlan:
    """One frame and the prompts it still needs (None: unknown until its image is rendered)."""

    record: Mapping[str, Any]
    fingerprint: str
    image_hash: str | None
    prompts: list[str] | None = None


def needs_request(store: AnnotationStore, key: Key, retry_failed: bool) -> bool:
    st = store.status(key)
    return st is None or st == "retry" or (retry_failed and st in ("failed", "partial"))


def pending_prompts(store: AnnotationStore, token: str, model: str, ihash: str, retry_failed: bool,
                    skip: set[Key] | None = None) -> list[str]:
    out = []
    for name in PROMPT_NAMES:
        key = Key(token, prompt_hash(name), model, ihash)
        if (skip is None or key not in skip) and needs_request(store, key, retry_failed):
            out.append(name)
    return out


def plan_frames(records: Sequence[Mapping[str, Any]], store: AnnotationStore, model: str, cfg: TeacherConfig,
                dataroot: str | Path, by_token: Mapping[str, Mapping], retry_failed: bool = False,
                skip: set[Key] | None = None) -> list[FramePlan]:
    """Frames with at least one prompt left to ask (frames whose image is not hashed yet included)."""
    plans = []
    for rec in records:
        if cfg.teacher == "rule":
            ih = rule_input_hash(rec)
            todo = pending_prompts(store, rec["token"], model, ih, retry_failed, skip)
            if todo:
                plans.append(FramePlan(rec, "", ih, todo))
            continue
        fp = fingerprint(rec, dataroot, cfg, by_token)
        ih = store.image_hash_for(fp)
        todo = None if ih is None else pending_prompts(store, rec["token"], model, ih, retry_failed, skip)
        if todo is None or todo:
            plans.append(FramePlan(rec, fp, ih, todo))
    return plans


# ----------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------
@dataclass
class RunStats:
    """What a run did (printed by the CLI, read by the tests and the bench)."""

    frames: int = 0  # frames in the dataset selection
    planned: int = 0  # frames with work left at the start
    done: int = 0  # frames finished in this run
    answers: int = 0  # rows written in this run
    failed: int = 0  # rows written as failed/partial + frames left pending after transient errors
    requests: int = 0  # HTTP requests sent (retries included)
    elapsed_s: float = 0.0
    interrupted: bool = False
    status_counts: dict[str, int] = field(default_factory=dict)


def _store_reply(store: AnnotationStore, key: Key, name: str, teacher: str, text: str, mode: str,
                 attempts: int, usage: dict | None, final: bool) -> str:
    """Parse and store one answer; returns the status written."""
    parsed = parse_answer(name, text)
    if is_complete(name, parsed):
        status = "ok"
    elif not final:
        status = "retry"
    else:
        status = "partial" if any(v is not None for v in parsed.values()) else "failed"
    store.put(Annotation(key, name, PROMPT_VERSION, teacher, status, text, parsed, mode, attempts,
                         None if status == "ok" else "answer could not be fully read", usage))
    return status


def _ask_frame(plan: FramePlan, teacher: Any, store: AnnotationStore, cfg: TeacherConfig,
               dataroot: str | Path, by_token: Mapping[str, Mapping], stop: threading.Event,
               retry_failed: bool) -> tuple[int, int, bool]:
    """Render (if needed) and ask every pending prompt of one frame. Returns (rows, bad rows, transient)."""
    rec = plan.record
    img, _ = render(rec, dataroot, cfg, by_token)
    ih = image_hash(img)
    if ih != plan.image_hash:
        store.remember_image_hash(plan.fingerprint, ih)
    todo = pending_prompts(store, rec["token"], teacher.model, ih, retry_failed)
    jpeg = encode_jpeg(img, cfg.jpeg_quality) if todo else b""
    rows = bad = 0
    for name in todo:
        key = Key(rec["token"], prompt_hash(name), teacher.model, ih)
        prev = store.get(key)
        attempts = prev.attempts if prev is not None and prev.status == "retry" else 0
        for _ in range(1 + cfg.parse_retries):
            if stop.is_set():
                return rows, bad, False
            try:
                reply = teacher.ask(name, jpeg)
            except Stopped:
                return rows, bad, False
            except RequestError as e:
                if e.transient or e.status <= 0:
                    return rows, bad, True  # transient: leave the key pending for a later run
                store.put(Annotation(key, name, PROMPT_VERSION, teacher.teacher_name, "failed", e.body, {},
                                     "structured" if teacher.structured else "free", attempts + 1,
                                     f"HTTP {e.status}", None))
                rows, bad = rows + 1, bad + 1
                break
            attempts += 1
            final = attempts >= 1 + cfg.parse_retries
            status = _store_reply(store, key, name, teacher.teacher_name, reply.text, reply.mode, attempts,
                                  reply.usage, final)
            if status != "retry":
                rows += 1
                bad += status != "ok"
                break
    return rows, bad, False


def annotate(records: Sequence[Mapping[str, Any]], dataroot: str | Path, store: AnnotationStore,
             cfg: TeacherConfig, teacher: Any = None, limit: int | None = None, retry_failed: bool = False,
             progress: bool = True, stop: threading.Event | None = None) -> RunStats:
    """Annotate `records` into `store` with the openai (chat) or rule teacher. See the module docstring.

    `teacher` defaults to `RuleTeacher` / `ChatTeacher(cfg)`; tests and the bench pass their own client.
    `limit` caps the number of frames that get new requests in this run.
    """
    t0 = time.time()
    stop = stop or threading.Event()
    by_token = {r["token"]: r for r in records}
    if teacher is None:
        if cfg.teacher == "rule":
            teacher = RuleTeacher(cfg.still_threshold_m)
        elif cfg.teacher == "openai":
            from teacher.backends.openai_chat import ChatTeacher

            teacher = ChatTeacher(cfg, stop=stop)
        else:
            raise UserError(f"annotate() runs the rule or openai teacher, not {cfg.teacher!r}")
    plans = plan_frames(records, store, teacher.model, cfg, dataroot, by_token, retry_failed)
    stats = RunStats(frames=len(records), planned=len(plans))
    if limit is not None:
        plans = plans[:max(0, limit)]
    http = getattr(teacher, "http", None)
    req0 = http.request_count if http is not None else 0
    bar = tqdm(total=len(plans), unit="frame", disable=not progress, dynamic_ncols=True,
               desc=f"annotate[{cfg.teacher}]")

    def tick(rows: int, bad: int, transient: bool) -> None:
        stats.done += 1
        stats.answers += rows
        stats.failed += bad + int(transient)
        bar.update(1)
        post = {"failed": stats.failed}
        if http is not None:
            post["requests"] = http.request_count - req0
        bar.set_postfix(post, refresh=False)

    try:
        if cfg.teacher == "rule":
            for plan in plans:
                if stop.is_set():
                    break
                rows = bad = 0
                for name in plan.prompts or []:
                    key = Key(plan.record["token"], prompt_hash(name), teacher.model, plan.image_hash)
                    reply = teacher.answer(name, plan.record)
                    st = _store_reply(store, key, name, teacher.teacher_name, reply.text, reply.mode, 1, None,
                                      True)
                    rows, bad = rows + 1, bad + (st != "ok")
                tick(rows, bad, False)
        else:
            _run_threads(plans, teacher, store, cfg, dataroot, by_token, stop, retry_failed, tick)
    except KeyboardInterrupt:
        stats.interrupted = True
        raise
    finally:
        bar.close()
        stats.elapsed_s = time.time() - t0
        stats.requests = (http.request_count - req0) if http is not None else 0
        stats.status_counts = store.counts()
    return stats


def _run_threads(plans: list[FramePlan], teacher: Any, store: AnnotationStore, cfg: TeacherConfig,
                 dataroot: str | Path, by_token: Mapping[str, Mapping], stop: threading.Event,
                 retry_failed: bool, tick: Callable[[int, int, bool], None]) -> None:
    """Bounded concurrency: `cfg.concurrency` frames in flight; on any exit, drain in-flight requests."""
    consecutive = 0
    ex = ThreadPoolExecutor(max_workers=max(1, cfg.concurrency), thread_name_prefix="annotate")
    futures = [ex.submit(_ask_frame, p, teacher, store, cfg, dataroot, by_token, stop, retry_failed)
               for p in plans]
    ok = False
    try:
        for fut in as_completed(futures):
            rows, bad, transient = fut.result()
            tick(rows, bad, transient)
            consecutive = consecutive + 1 if transient else 0
            if consecutive >= cfg.max_consecutive_failures:
                raise UserError(f"{consecutive} frames in a row failed with timeouts / 429 / 5xx after "
                                f"{cfg.max_retries} retries each; the server at {cfg.base_url} seems down. "
                                "Re-run later: answers so far are stored and will not be asked again")
        ok = True
    finally:
        # On an error or Ctrl-C: start no new request, let the ones in flight finish and be stored.
        if not ok:
            stop.set()
        for f in futures:
            f.cancel()
        ex.shutdown(wait=True)


def dry_run_estimate(records: Sequence[Mapping[str, Any]], store: AnnotationStore, cfg: TeacherConfig,
                     dataroot: str | Path, model: str, limit: int | None = None,
                     retry_failed: bool = False) -> dict[str, Any]:
    """Requests, tokens and (with user-given prices) cost of what a run would send. Sends nothing."""
    by_token = {r["token"]: r for r in records}
    plans = plan_frames(records, store, model, cfg, dataroot, by_token, retry_failed)
    if limit is not None:
        plans = plans[:max(0, limit)]
    n_req = {name: 0 for name in PROMPT_NAMES}
    img_tok = 0
    for p in plans:
        names = p.prompts if p.prompts is not None else list(PROMPT_NAMES)
        w, h = view_size(p.record, cfg.view)
        for name in names:
            n_req[name] += 1
            if cfg.teacher != "rule":
                img_tok += image_tokens(w, h, cfg.detail)
    txt_tok = sum(n * text_tokens(prompt_text(name)) for name, n in n_req.items())
    out_tok = n_req["P1"] * cfg.est_output_tokens_p1 + n_req["P2"] * cfg.est_output_tokens_p2
    est: dict[str, Any] = {
        "frames": len(records), "frames_to_ask": len(plans), "requests": sum(n_req.values()),
        "requests_per_prompt": n_req, "image_tokens": img_tok, "text_tokens": txt_tok,
        "input_tokens": img_tok + txt_tok, "output_tokens": out_tok, "cost_usd": None,
    }
    if cfg.teacher == "rule":
        est["note"] = "rule teacher: no network requests, no cost"
        est["input_tokens"] = est["image_tokens"] = est["text_tokens"] = est["output_tokens"] = 0
    elif cfg.price_input_per_mtok is not None and cfg.price_output_per_mtok is not None:
        est["cost_usd"] = round((est["input_tokens"] * cfg.price_input_per_mtok
                                 + out_tok * cfg.price_output_per_mtok) / 1e6, 4)
    return est


def load_records(dataroot: str | Path, version: str) -> list[dict]:
    """The dataset's sample records (nusc.infos), as the data layer builds and caches them."""
    from nusc.infos import build_or_load_infos

    return build_or_load_infos(dataroot, version)

