"""OpenAI-compatible backend against a real HTTP server on 127.0.0.1 (request shape, retries, fallbacks)."""

from __future__ import annotations

import base64
import json
import time

import pytest

from synthetic.vlm_server import FakeVLMServer
from teacher.backends.http import HttpClient, RequestError, RetryPolicy, parse_retry_after
from teacher.backends.openai_chat import ChatTeacher, api_key_from_env
from teacher.config import TeacherConfig
from teacher.prompts import ACTION_LABELS, prompt_text
from vlmad.errors import UserError

JPEG = b"\xff\xd8\xff\xe0fake-jpeg-bytes\xff\xd9"
KEY = "sk-test-secret-123"


def teacher(srv: FakeVLMServer, **kw) -> ChatTeacher:
    cfg = TeacherConfig(teacher="openai", base_url=srv.base_url, **kw)
    http = HttpClient(cfg.base_url, KEY, timeout_s=5.0,
                      retry=RetryPolicy(cfg.max_retries, cfg.backoff_base_s, cfg.backoff_max_s))
    return ChatTeacher(cfg, http=http)


def test_request_shape_and_structured_output():
    with FakeVLMServer() as srv:
        t = teacher(srv)
        reply = t.ask("P2", JPEG)
        assert reply.mode == "structured" and json.loads(reply.text)["control"] == "go straight"
        assert reply.usage["total_tokens"] == 120
        (req,) = srv.chat_requests()
    assert req["path"] == "/v1/chat/completions" and req["method"] == "POST"
    assert req["headers"]["authorization"] == f"Bearer {KEY}"
    assert req["headers"]["content-type"] == "application/json"
    body = req["body"]
    assert body["model"] == "gpt-4o"
    (msg,) = body["messages"]
    assert msg["role"] == "user"
    text_part, image_part = msg["content"]
    assert text_part == {"type": "text", "text": prompt_text("P2")}
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == JPEG
    schema = body["response_format"]["json_schema"]["schema"]
    assert body["response_format"]["type"] == "json_schema"
    for kind, labels in ACTION_LABELS.items():
        assert schema["properties"][kind]["enum"] == list(labels)


def test_retry_on_429_honours_retry_after():
    with FakeVLMServer() as srv:
        srv.script = [(429, {"Retry-After": "0.3"}, '{"error": "slow down"}')]
        # a back-off of 20 s would make this test slow: only Retry-After keeps it fast
        t = teacher(srv, backoff_base_s=20.0, backoff_max_s=30.0)
        t0 = time.time()
        t.ask("P1", JPEG)
        reqs = srv.chat_requests()
    assert len(reqs) == 2
    gap = reqs[1]["t"] - reqs[0]["t"]
    assert 0.25 <= gap < 5.0 and time.time() - t0 < 10


def test_retry_on_5xx_with_backoff_then_give_up():
    with FakeVLMServer() as srv:
        srv.script = [(500, {}, "boom"), (503, {}, "busy")]
        t = teacher(srv, backoff_base_s=0.01, max_retries=3)
        t.ask("P1", JPEG)
        assert srv.count() == 3
        srv.script = [(502, {}, "bad gateway")] * 10
        with pytest.raises(RequestError) as e:
            t.ask("P1", JPEG)
        assert e.value.transient and e.value.status == 502
        assert srv.count() == 3 + 4  # first try + 3 retries, then stop


def test_no_retry_on_400_and_key_errors():
    with FakeVLMServer() as srv:
        srv.script = [(400, {}, '{"error": {"message": "bad image"}}')]
        t = teacher(srv, backoff_base_s=0.01)
        with pytest.raises(RequestError) as e:
            t.ask("P1", JPEG)
        assert e.value.status == 400 and not e.value.transient and "bad image" in e.value.body
        assert srv.count() == 1
        srv.script = [(401, {}, '{"error": "invalid key"}')]
        with pytest.raises(UserError) as e:
            t.ask("P1", JPEG)
        assert KEY not in str(e.value) and "OPENAI_API_KEY" in str(e.value)
        assert srv.count() == 2
        srv.script = [(404, {}, '{"error": "model not found"}')]
        with pytest.raises(UserError, match="404"):
            t.ask("P1", JPEG)
    assert KEY not in repr(t.http)


def test_structured_outputs_rejected_falls_back_to_free_text():
    with FakeVLMServer(reject_structured=True) as srv:
        t = teacher(srv)
        r1 = t.ask("P2", JPEG)
        r2 = t.ask("P1", JPEG)
        bodies = [r["body"] for r in srv.chat_requests()]
    assert r1.mode == "free" and r2.mode == "free" and not t.structured
    # 1st: structured rejected, 2nd: same prompt in free text, 3rd: free text straight away
    assert ["response_format" in b for b in bodies] == [True, False, False]


def test_timeout_is_retried():
    with FakeVLMServer(delay_s=0.6) as srv:
        cfg = TeacherConfig(teacher="openai", base_url=srv.base_url)
        http = HttpClient(cfg.base_url, KEY, timeout_s=0.2, retry=RetryPolicy(1, 0.01, 0.05))
        with pytest.raises(RequestError) as e:
            ChatTeacher(cfg, http=http).ask("P1", JPEG)
        assert e.value.status == 0 and e.value.transient
        assert http.request_count == 2


def test_retry_after_parsing_and_missing_key(monkeypatch):
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < parse_retry_after({"Retry-After": future}) <= 31
    assert parse_retry_after({"Retry-After": "soon"}) is None and parse_retry_after({}) is None
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserError, match="OPENAI_API_KEY is not set"):
        api_key_from_env()
    monkeypatch.setenv("OPENAI_API_KEY", "abc")
    assert api_key_from_env() == "abc"


def test_unreachable_server_is_one_clear_error():
    http = HttpClient("http://127.0.0.1:9/v1", KEY, timeout_s=2.0, retry=RetryPolicy(0, 0.01, 0.01))
    with pytest.raises(UserError, match="cannot reach"):
        http.post_json("/chat/completions", {})
