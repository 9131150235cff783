"""Annotation runner against a real local HTTP server: exact request counts through limit, kill (SIGINT)
and resume, repeated runs, unreadable answers, HTTP errors, and the Batch API backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from synthetic.vlm_server import FakeVLMServer, default_answer, prompt_of
from teacher.backends.batch import run_batch
from teacher.backends.http import HttpClient, RetryPolicy
from teacher.backends.openai_chat import ChatTeacher
from teacher.config import TeacherConfig
from teacher.prompts import PROMPT_VERSION
from teacher.runner import annotate, dry_run_estimate, image_tokens
from teacher.store import AnnotationStore

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-runner"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from nusc.infos import build_or_load_infos
    from synthetic.nuscenes import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path_factory.mktemp("nusc"), num_scenes=2, keyframes_per_scene=6)
    return root, build_or_load_infos(root, "v1.0-mini")


def chat(srv: FakeVLMServer, **kw) -> tuple[TeacherConfig, ChatTeacher]:
    cfg = TeacherConfig(teacher="openai", base_url=srv.base_url, concurrency=kw.pop("concurrency", 4), **kw)
    retry = RetryPolicy(cfg.max_retries, cfg.backoff_base_s, cfg.backoff_max_s)
    http = HttpClient(cfg.base_url, KEY, 5.0, retry)
    return cfg, ChatTeacher(cfg, http=http)


def test_limit_resume_and_repeat_exact_counts(dataset, tmp_path):
    root, recs = dataset
    n = len(recs)
    with FakeVLMServer() as srv, AnnotationStore(tmp_path / "a.sqlite") as store:
        cfg, t = chat(srv)
        s1 = annotate(recs, root, store, cfg, teacher=t, limit=3, progress=False)
        assert srv.count() == 6 and s1.answers == 6 and s1.done == 3
        s2 = annotate(recs, root, store, cfg, teacher=t, progress=False)
        assert s2.planned == n - 3 and srv.count() == 2 * n
        s3 = annotate(recs, root, store, cfg, teacher=t, progress=False)
        assert s3.planned == 0 and s3.requests == 0 and srv.count() == 2 * n
        rows = store.all()
    assert len(rows) == 2 * n and {r.status for r in rows} == {"ok"}
    assert {r.teacher for r in rows} == {"openai-chat"} and {r.key.model for r in rows} == {"gpt-4o"}
    assert {r.prompt_version for r in rows} == {PROMPT_VERSION}
    assert {r.key.sample_token for r in rows} == {r["token"] for r in recs}
    p2 = [r for r in rows if r.prompt_name == "P2"]
    assert all(r.parsed == {"control": "go straight", "turn": "none", "lane": "none"} for r in p2)


def test_sigint_kill_and_resume(dataset, tmp_path, monkeypatch):
    """Interrupt a real CLI process mid-run, resume it: every frame asked exactly twice in total."""
    root, recs = dataset
    n = len(recs)
    store = tmp_path / "kill.sqlite"
    args = [sys.executable, "-m", "scripts.annotate", "--dataroot", str(root), "--version", "v1.0-mini",
            "--teacher", "openai", "--store", str(store), "-j", "2", "--no-progress"]
    # Requests after the 6th are held until the SIGINT is sent, so the run cannot finish before it
    # (a fixed server delay raced the signal on a loaded CI machine: the run once ended first, exit 0).
    gate = threading.Event()

    def gated(body: dict) -> str:
        if srv.count() > 6:
            gate.wait(30)
        return default_answer(body)

    with FakeVLMServer(delay_s=0.05, answer_fn=gated) as srv:
        env = {**os.environ, "OPENAI_API_KEY": KEY}
        # A shell runs background jobs (`pytest ... &`, nohup, some CI runners) with SIGINT ignored, and
        # a Python child keeps an inherited SIG_IGN: Ctrl-C would never reach it and the run would end
        # normally (exit 0). Restore the terminal's default so the child gets KeyboardInterrupt.
        proc = subprocess.Popen(args + ["--base-url", srv.base_url], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 60
        while srv.count() < 7 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)  # the signal lands while requests are held in flight
        gate.set()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err.decode()[-2000:]
        first = srv.count()
        assert 6 <= first < 2 * n
        with AnnotationStore(store) as st:
            assert len(st.all()) == first  # every request sent was answered and stored
        assert KEY not in (out + err).decode()
        # resume in-process through the same CLI
        from scripts.annotate import main

        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        main(args[3:] + ["--base-url", srv.base_url])
        assert srv.count() == 2 * n
        main(args[3:] + ["--base-url", srv.base_url])  # finished: repeat sends nothing
        assert srv.count() == 2 * n
    assert KEY not in store.with_name(store.name + ".config.yaml").read_text()


def test_unreadable_answers_retried_then_failed(dataset, tmp_path):
    root, recs = dataset
    recs = recs[:3]
    def answer(b):
        return "I am not sure." if prompt_of(b) == "P2" else default_answer(b)

    with FakeVLMServer(answer_fn=answer) as srv, AnnotationStore(tmp_path / "u.sqlite") as store:
        cfg, t = chat(srv, parse_retries=2, concurrency=1)
        stats = annotate(recs, root, store, cfg, teacher=t, progress=False)
        assert srv.count() == 3 * (1 + 3)  # P1 once, P2 1 + 2 retries, per frame
        failed = [r for r in store.all() if r.status != "ok"]
        assert len(failed) == 3 and stats.failed == 3
        assert all(r.status == "failed" and r.raw_text == "I am not sure." and r.attempts == 3
                   for r in failed)
        assert all(r.parsed == {"control": None, "turn": None, "lane": None} for r in failed)
        annotate(recs, root, store, cfg, teacher=t, progress=False)
        assert srv.count() == 12  # failed answers are not asked again by default
        srv.answer_fn = default_answer
        annotate(recs, root, store, cfg, teacher=t, progress=False, retry_failed=True)
        assert srv.count() == 15 and store.counts() == {"ok": 6}


def test_unreadable_then_readable_and_partial(dataset, tmp_path):
    root, recs = dataset
    state = {"n": 0, "always_partial": False}

    def answer(body):
        if prompt_of(body) == "P2":
            state["n"] += 1
            if state["always_partial"] or state["n"] == 1:
                return "Control: stop"  # turn and lane missing: unreadable as a whole
            return "1. stop 2. none 3. none"
        return default_answer(body)

    with FakeVLMServer(answer_fn=answer) as srv, AnnotationStore(tmp_path / "p.sqlite") as store:
        cfg, t = chat(srv, parse_retries=1, concurrency=1)
        annotate(recs[:1], root, store, cfg, teacher=t, progress=False)
        (p2,) = store.all(prompt_name="P2")
        assert p2.status == "ok" and p2.attempts == 2 and p2.parsed["control"] == "stop"
        assert srv.count() == 3
        state["always_partial"] = True
        annotate(recs[1:2], root, store, cfg, teacher=t, progress=False)
        p2 = [r for r in store.all(prompt_name="P2") if r.key.sample_token == recs[1]["token"]][0]
        assert p2.status == "partial" and p2.parsed == {"control": "stop", "turn": None, "lane": None}
        assert p2.raw_text == "Control: stop" and srv.count() == 3 + 3


def test_http_400_recorded_and_transient_left_pending(dataset, tmp_path):
    root, recs = dataset
    recs = recs[:2]
    with FakeVLMServer() as srv, AnnotationStore(tmp_path / "e.sqlite") as store:
        cfg, t = chat(srv, concurrency=1, max_retries=1, backoff_base_s=0.01)
        srv.script = [(400, {}, '{"error": {"message": "image too small"}}')]
        annotate(recs, root, store, cfg, teacher=t, progress=False)
        assert srv.count() == 4
        bad = [r for r in store.all() if r.status == "failed"]
        assert len(bad) == 1 and bad[0].error == "HTTP 400" and "image too small" in bad[0].raw_text
    with FakeVLMServer() as srv, AnnotationStore(tmp_path / "t.sqlite") as store:
        cfg, t = chat(srv, concurrency=1, max_retries=1, backoff_base_s=0.01)
        srv.script = [(503, {}, "busy")] * 2  # the first request and its one retry
        stats = annotate(recs, root, store, cfg, teacher=t, progress=False)
        assert stats.failed == 1 and srv.count() == 2 + 2 and len(store.all()) == 2  # frame 0 left pending
        annotate(recs, root, store, cfg, teacher=t, progress=False)
        assert srv.count() == 6 and store.counts() == {"ok": 4}


def test_server_down_aborts_after_consecutive_failures(dataset, tmp_path):
    from vlmad.errors import UserError

    root, recs = dataset
    with FakeVLMServer() as srv, AnnotationStore(tmp_path / "d.sqlite") as store:
        cfg, t = chat(srv, concurrency=1, max_retries=0, max_consecutive_failures=3)
        srv.script = [(500, {}, "down")] * 100
        with pytest.raises(UserError, match="seems down"):
            annotate(recs, root, store, cfg, teacher=t, progress=False)
        # the worker may have started the next frame before the main thread counted 3 failures
        assert 3 <= srv.count() <= 3 + cfg.concurrency and store.all() == []


def test_batch_backend_submit_poll_resume(dataset, tmp_path):
    root, recs = dataset
    n = len(recs)
    with FakeVLMServer(batch_polls_before_done=1) as srv, AnnotationStore(tmp_path / "b.sqlite") as store:
        cfg = TeacherConfig(teacher="batch", base_url=srv.base_url, batch_poll_s=0.05, batch_wait_s=0.0,
                            batch_max_requests=15)
        http = HttpClient(cfg.base_url, KEY, 5.0)
        s1 = run_batch(recs, root, store, cfg, http=http, progress=False)
        # submitted in 2 files (15 + 9 lines), polled once (in progress), deadline reached: state kept
        assert s1.interrupted and s1.planned == 2 * n
        assert srv.count("/files") == 2 and srv.count("/batches") == 2 and len(store.open_batches()) == 2
        assert store.all() == []
        cfg.batch_wait_s = 30.0
        s2 = run_batch(recs, root, store, cfg, http=HttpClient(cfg.base_url, KEY, 5.0), progress=False)
        assert not s2.interrupted and s2.planned == 0  # nothing re-submitted
        assert srv.count("/files") == 2 and srv.batch_lines() == 2 * n
        rows = store.all()
        assert len(rows) == 2 * n and {r.status for r in rows} == {"ok"} and {r.teacher for r in rows} == {
            "openai-batch"}
        before = len(srv.requests)
        s3 = run_batch(recs, root, store, cfg, http=HttpClient(cfg.base_url, KEY, 5.0), progress=False)
        assert s3.requests == 0 and len(srv.requests) == before
        uploaded = next(r for r in srv.requests if r["path"].endswith("/files"))
        assert uploaded["headers"]["content-type"].startswith("multipart/form-data")
    batch_files = sorted((tmp_path / "b.sqlite.batches").glob("*.jsonl"))
    line = json.loads(batch_files[0].read_text().splitlines()[0])
    assert line["url"] == "/v1/chat/completions" and line["body"]["model"] == "gpt-4o"


def test_dry_run_estimate(dataset, tmp_path):
    root, recs = dataset
    assert image_tokens(1600, 900) == 85 + 170 * 6  # 1600x900 -> 1365x768 -> 3 x 2 tiles
    assert image_tokens(400, 225) == 85 + 170 * 1
    assert image_tokens(1024, 1024) == 765  # OpenAI's documented examples: -> 768x768, 4 tiles
    assert image_tokens(2048, 4096) == 1105  # -> 1024x2048 -> 768x1536, 6 tiles
    assert image_tokens(4096, 1024) == 85 + 170 * 4  # -> 2048x512, shortest side already < 768
    assert image_tokens(1600, 900, "low") == 85
    with AnnotationStore(tmp_path / "dry.sqlite") as store:
        cfg = TeacherConfig(teacher="openai", price_input_per_mtok=2.5, price_output_per_mtok=10.0)
        est = dry_run_estimate(recs, store, cfg, root, cfg.model)
        assert est["requests"] == 2 * len(recs) and est["image_tokens"] == 2 * len(recs) * 255
        expect = (est["input_tokens"] * 2.5 + est["output_tokens"] * 10.0) / 1e6
        assert est["cost_usd"] == pytest.approx(expect, abs=1e-4)
        assert dry_run_estimate(recs, store, cfg, root, cfg.model, limit=2)["requests"] == 4
        assert store.all() == []


def test_cli_errors_missing_key_and_bad_dataroot(dataset, tmp_path, monkeypatch):
    from scripts.annotate import main
    from vlmad.errors import UserError

    root, _ = dataset
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    args = ["--dataroot", str(root), "--version", "v1.0-mini", "--store", str(tmp_path / "s.sqlite"),
            "--no-progress"]
    with pytest.raises(UserError, match="OPENAI_API_KEY is not set"):
        main(args + ["--teacher", "openai"])
    with pytest.raises(UserError, match="OPENAI_API_KEY is not set"):
        main(args + ["--teacher", "batch"])
    with pytest.raises(UserError, match="does not exist"):
        main(["--dataroot", str(tmp_path / "nope"), "--store", str(tmp_path / "s.sqlite"),
              "--teacher", "rule"])
    with pytest.raises(UserError, match="unknown field"):
        main(args + ["--set", "no_such_field=1"])


@pytest.mark.parametrize("view", ["front", "six", "sequence"])
def test_views_render_at_the_estimated_size(dataset, view):
    from teacher.runner import fingerprint, render, view_size

    root, recs = dataset
    by_token = {r["token"]: r for r in recs}
    cfg = TeacherConfig(view=view)
    img, drawn = render(recs[0], root, cfg, by_token)
    assert drawn and img.dtype.name == "uint8"
    assert (img.shape[1], img.shape[0]) == view_size(recs[0], view)  # the dry-run cost uses this size
    assert fingerprint(recs[0], root, cfg, by_token) != fingerprint(recs[1], root, cfg, by_token)
