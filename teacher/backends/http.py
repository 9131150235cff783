"""A small JSON-over-HTTP client (standard library only) with the teacher's retry policy.

Retry policy: 429, 5xx and timeouts are retried with exponential back-off (base x 2^attempt, jittered,
capped), honouring `Retry-After` (seconds or an HTTP date) and `retry-after-ms` when the server sends
them. Any other 4xx is final at once: retrying a bad request only costs money. 401/403 become a
`UserError` about the key; the key itself never appears in a message, a log or a file.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from vlmad.errors import UserError


class RequestError(Exception):
    """A final HTTP error, or retries exhausted. `status` 0: timeout, -1: connection dropped."""

    def __init__(self, status: int, body: str, transient: bool = False):
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body
        # True for a condition that may pass (retries exhausted on 429/5xx/timeout, dropped connection):
        # the runner then leaves the key unanswered for a later run instead of recording a failure
        self.transient = transient


class Stopped(Exception):
    """The run was asked to stop while this request was waiting to be (re)sent."""


@dataclass
class RetryPolicy:
    max_retries: int = 6  # retries after the first attempt
    base_s: float = 1.0  # first back-off delay
    max_s: float = 60.0  # cap of any single delay, Retry-After included


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (delta seconds or HTTP date), else None."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = headers.get("Retry-After")
    if ra is None:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HttpClient:
    """JSON requests against `base_url` with a bearer key and the retry policy. Thread-safe.

    `request_count` counts every HTTP request actually sent (retries included); the bench and the
    tests read it.
    """

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float = 120.0,
                 retry: RetryPolicy | None = None, stop: threading.Event | None = None):
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.stop = stop or threading.Event()
        self._lock = threading.Lock()
        self.request_count = 0
        self.retry_count = 0

    def __repr__(self) -> str:  # never show the key
        return f"HttpClient({self.base_url!r}, key={'set' if self._api_key else 'unset'})"

    def _headers(self, content_type: str | None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "vlmad-teacher/1"}
        if content_type:
            h["Content-Type"] = content_type
        if self._api_key:
            h["Authorization"] = f"Bearer {self._api_key}"
        return h

    def _once(self, method: str, path: str, data: bytes | None, content_type: str | None
              ) -> tuple[int, Any, bytes]:
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers=self._headers(content_type))
        with self._lock:
            self.request_count += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            body = e.read() if e.fp is not None else b""
            return e.code, e.headers, body
        except TimeoutError:
            return 0, None, b"timeout"
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                return 0, None, b"timeout"
            raise UserError(f"cannot reach {self.base_url} ({e.reason}); check --base-url") from None
        except (ConnectionError, http.client.HTTPException) as e:
            # A dropped connection is neither a timeout nor an HTTP status: not retried here (the
            # policy retries only 429/5xx/timeouts); the runner leaves the key unanswered for a re-run.
            return -1, None, f"connection error: {type(e).__name__}: {e}".encode()

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str | None = "application/json") -> bytes:
        """Send with retries; returns the 2xx body. Raises `RequestError`, `Stopped` or `UserError`."""
        attempt = 0
        while True:
            if self.stop.is_set():
                raise Stopped()
            status, headers, data = self._once(method, path, body, content_type)
            if 200 <= status < 300:
                return data
            text = data.decode("utf-8", "replace")
            if status in (401, 403):
                raise UserError(f"{self.base_url} refused the API key (HTTP {status}); check OPENAI_API_KEY")
            retryable = status == 0 or status == 429 or status >= 500
            if not retryable:
                raise RequestError(status, text, transient=status < 0)
            if attempt >= self.retry.max_retries:
                raise RequestError(status, text, transient=True)
            delay = parse_retry_after(headers)
            if delay is None:
                delay = self.retry.base_s * (2 ** attempt) * (0.5 + random.random() / 2)
            delay = min(delay, self.retry.max_s)
            attempt += 1
            with self._lock:
                self.retry_count += 1
            if self.stop.wait(delay):  # interruptible sleep
                raise Stopped()

    def post_json(self, path: str, obj: dict) -> dict:
        return _loads(self.request("POST", path, json.dumps(obj).encode()), path)

    def get_json(self, path: str) -> dict:
        return _loads(self.request("GET", path, None, None), path)


def _loads(data: bytes, path: str) -> dict:
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError(200, f"{path}: response is not JSON: {data[:200]!r}") from None
    if not isinstance(obj, dict):
        raise RequestError(200, f"{path}: response is not a JSON object")
    return obj
