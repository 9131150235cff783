"""VLM teacher over any OpenAI-compatible chat-completions endpoint (GPT-4o, vLLM, Ollama, ...).

One request per prompt: a user message with the prompt text and the overlay image as a base64 JPEG data
URL. With `structured=True` the request carries `response_format = {"type": "json_schema", ...}` (an
enum per action for P2, three strings for P1). A server that rejects that field (HTTP 400/422 naming
response_format / json_schema) is asked again without it, once, and the client stays in free-text mode
from then on; free-text answers go through the same parser.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass
from typing import Any

from teacher.backends.http import HttpClient, RequestError, RetryPolicy
from teacher.config import TeacherConfig
from teacher.prompts import prompt_text, response_schema
from vlmad.errors import UserError

_STRUCTURED_HINTS = ("response_format", "json_schema", "structured", "guided", "schema")


@dataclass
class Reply:
    """One answer as received."""

    text: str  # the assistant message content
    mode: str  # structured | free | rule
    usage: dict[str, Any] | None = None  # token usage as the server reported it


def api_key_from_env(required: bool = True) -> str | None:
    """OPENAI_API_KEY, or a `UserError` when it is required and missing. Never printed."""
    key = os.environ.get("OPENAI_API_KEY", "").strip()
    if not key and required:
        raise UserError("OPENAI_API_KEY is not set. Export your key (for a local server that needs none, "
                        "any placeholder such as OPENAI_API_KEY=EMPTY works), or use --teacher rule")
    return key or None


def image_data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def chat_body(cfg: TeacherConfig, prompt_name: str, jpeg: bytes, structured: bool) -> dict[str, Any]:
    """The chat-completions request body of one prompt (also the Batch API line body)."""
    body: dict[str, Any] = {
        "model": cfg.model,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": prompt_text(prompt_name)},
            {"type": "image_url", "image_url": {"url": image_data_url(jpeg), "detail": cfg.detail}},
        ]}],
        "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature,
    }
    if structured:
        body["response_format"] = {"type": "json_schema", "json_schema": response_schema(prompt_name)}
    return body


def reply_from_completion(obj: dict[str, Any], mode: str) -> Reply:
    """The assistant text of a chat-completions response object (refusals kept as text)."""
    try:
        msg = obj["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        raise RequestError(200, f"unexpected response shape: {json.dumps(obj)[:300]}") from None
    text = msg.get("content") or msg.get("refusal") or ""
    if isinstance(text, list):  # some servers return content parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    return Reply(str(text), mode, obj.get("usage"))


class ChatTeacher:
    """Asks one prompt about one image; retries per the HTTP policy; thread-safe."""

    teacher_name = "openai-chat"

    def __init__(self, cfg: TeacherConfig, http: HttpClient | None = None,
                 stop: threading.Event | None = None):
        self.cfg = cfg
        self.model = cfg.model
        self.http = http or HttpClient(cfg.base_url, api_key_from_env(), cfg.timeout_s,
                                       RetryPolicy(cfg.max_retries, cfg.backoff_base_s, cfg.backoff_max_s),
                                       stop=stop)
        self._structured = cfg.structured
        self._lock = threading.Lock()

    @property
    def structured(self) -> bool:
        return self._structured

    def ask(self, prompt_name: str, jpeg: bytes) -> Reply:
        structured = self._structured
        try:
            obj = self.http.post_json("/chat/completions", chat_body(self.cfg, prompt_name, jpeg, structured))
        except RequestError as e:
            if not (structured and e.status in (400, 422) and
                    any(h in e.body.lower() for h in _STRUCTURED_HINTS)):
                if e.status == 404:
                    raise UserError(f"{self.cfg.base_url}/chat/completions answered 404 ({e.body[:200]}); "
                                    f"check --base-url and --model") from None
                raise
            with self._lock:
                self._structured = False  # this server does not do structured outputs: free text from now
            structured = False
            obj = self.http.post_json("/chat/completions", chat_body(self.cfg, prompt_name, jpeg, False))
        return reply_from_completion(obj, "structured" if structured else "free")
