"""The teacher's one config: which backend, how requests are made, retried and priced, how images look.

Loaded with `vlmad.config.load_config(TeacherConfig, yaml_path=..., overrides=[...])`; the annotate CLI
also maps its flags onto these fields and saves the resolved config beside the store.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TeacherConfig:
    """Annotation run settings (the API key is never part of a config: it comes from OPENAI_API_KEY)."""

    teacher: str = "rule"  # openai | batch | rule
    model: str = "gpt-4o"  # model name sent to the server (cache key part); rule teacher: "rule-teacher-v1"
    base_url: str = "https://api.openai.com/v1"  # any OpenAI-compatible server (vLLM, Ollama: .../v1)
    structured: bool = True  # ask for JSON-schema structured outputs; falls back to free text if rejected
    view: str = "front"  # front (the paper) | six (6-view composite) | sequence (7 front frames)
    detail: str = "high"  # image detail sent to the API: high | low | auto (also used by the estimate)
    jpeg_quality: int = 90  # JPEG quality of the image sent
    max_tokens: int = 512  # completion token cap per request
    temperature: float = 0.0  # sampling temperature (0: as repeatable as the server allows)
    concurrency: int = 8  # frames in flight at once (threads)
    timeout_s: float = 120.0  # per-request socket timeout, seconds
    max_retries: int = 6  # retries of one request on 429 / 5xx / timeout (never on other 4xx)
    backoff_base_s: float = 1.0  # first back-off delay; doubles every retry (with jitter)
    backoff_max_s: float = 60.0  # cap of one back-off delay and of an honoured Retry-After
    parse_retries: int = 2  # extra requests for an answer that cannot be read, then recorded as failed
    max_consecutive_failures: int = 20  # abort the run after this many frames in a row could not be asked
    still_threshold_m: float = 1.0  # no trajectory line when the ego moves less than this in 3 s
    batch_max_requests: int = 10000  # requests per Batch API file (API limit 50,000)
    batch_max_bytes: int = 150_000_000  # bytes per Batch API file (API limit 200 MB)
    batch_poll_s: float = 60.0  # seconds between batch status polls
    batch_wait_s: float = 86400.0  # stop polling after this long (re-run the command to resume)
    est_output_tokens_p1: int = 150  # dry-run estimate of completion tokens of a P1 answer
    est_output_tokens_p2: int = 40  # dry-run estimate of completion tokens of a P2 answer
    price_input_per_mtok: float | None = None  # USD per 1M input tokens (user-given, for --dry-run)
    price_output_per_mtok: float | None = None  # USD per 1M output tokens (user-given, for --dry-run)
