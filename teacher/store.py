"""The annotation store: one SQLite file, one row per (sample token, prompt hash, model, image hash).

Every answer is committed the moment it arrives (WAL journal, one transaction per answer), so a run that
is killed loses nothing it has received, and a new run asks only for the keys that have no row. A run
repeated after it finished makes zero requests. Failed answers are rows too (status "failed" or
"partial", with the raw text and the error), so they are never silently re-read as "none"; they are asked
again only with `--retry-failed`.

`image_hash` is the hash of the exact pixels sent. For the rule teacher, which reads no image, it is the
hash of the ground-truth fields it read. The `fingerprints` table caches image hashes by a cheap
fingerprint of the inputs (image file size/mtime, trajectory, calibration, overlay settings), so resuming
a large run does not have to redraw every overlay just to find out that it is already annotated.

The Batch API backend keeps its state here as well (tables `batches`, `batch_items`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmad.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS annotations (
    sample_token TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    model TEXT NOT NULL,
    image_hash TEXT NOT NULL,
    prompt_name TEXT NOT NULL,      -- P1 (freeform) or P2 (structured)
    prompt_version TEXT NOT NULL,
    teacher TEXT NOT NULL,          -- which teacher wrote it (rule teacher says so in plain words)
    status TEXT NOT NULL,           -- ok | partial | failed
    raw_text TEXT,                  -- the answer as received (or the error body)
    parsed TEXT,                    -- JSON of the parsed parts (labels or A_c/A_f/A_r)
    mode TEXT,                      -- structured | free | rule | batch
    attempts INTEGER NOT NULL,      -- requests spent on this key
    error TEXT,
    usage TEXT,                     -- JSON token usage reported by the server
    created REAL NOT NULL,
    PRIMARY KEY (sample_token, prompt_hash, model, image_hash)
);
CREATE TABLE IF NOT EXISTS fingerprints (
    fingerprint TEXT PRIMARY KEY,
    image_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    input_file_id TEXT,
    status TEXT NOT NULL,           -- the API's status; "ingested" once its results are in annotations
    output_file_id TEXT,
    error_file_id TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_items (
    custom_id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    sample_token TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    model TEXT NOT NULL,
    image_hash TEXT NOT NULL,
    prompt_name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


@dataclass(frozen=True)
class Key:
    """Cache key of one request."""

    sample_token: str
    prompt_hash: str
    model: str
    image_hash: str


@dataclass
class Annotation:
    """One stored answer."""

    key: Key
    prompt_name: str
    prompt_version: str
    teacher: str
    status: str
    raw_text: str | None
    parsed: dict[str, Any]
    mode: str
    attempts: int
    error: str | None = None
    usage: dict[str, Any] | None = None


class AnnotationStore:
    """Thread-safe SQLite store (one connection, a lock, a commit per write)."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise UserError(f"annotation store {self.path} does not exist; "
                            "run `python -m scripts.annotate` first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            uri = f"file:{self.path}?mode=ro" if readonly else str(self.path)
            self._db = sqlite3.connect(uri, uri=readonly, check_same_thread=False, timeout=30.0)
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(SCHEMA)
                self._db.commit()
            self._db.execute("SELECT count(*) FROM annotations").fetchone()
        except sqlite3.DatabaseError as e:
            raise UserError(f"annotation store {self.path} is not a readable SQLite store ({e})") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> AnnotationStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------
    def get(self, key: Key) -> Annotation | None:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM annotations WHERE sample_token=? AND prompt_hash=? AND model=? "
                "AND image_hash=?",
                (key.sample_token, key.prompt_hash, key.model, key.image_hash)).fetchone()
        return None if row is None else _row_to_annotation(row)

    def status(self, key: Key) -> str | None:
        """"ok" / "partial" / "failed", or None when the key has no row."""
        with self._lock:
            row = self._db.execute(
                "SELECT status FROM annotations WHERE sample_token=? AND prompt_hash=? AND model=? "
                "AND image_hash=?", (key.sample_token, key.prompt_hash, key.model, key.image_hash)).fetchone()
        return None if row is None else row[0]

    def put(self, ann: Annotation) -> None:
        """Insert or replace one answer and commit it immediately."""
        k = ann.key
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO annotations VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (k.sample_token, k.prompt_hash, k.model, k.image_hash, ann.prompt_name, ann.prompt_version,
                 ann.teacher, ann.status, ann.raw_text, json.dumps(ann.parsed), ann.mode, ann.attempts,
                 ann.error, json.dumps(ann.usage) if ann.usage is not None else None, time.time()))
            self._db.commit()

    def all(self, model: str | None = None, prompt_name: str | None = None) -> list[Annotation]:
        """Every row (optionally of one model / prompt), oldest first."""
        q, args = "SELECT * FROM annotations WHERE 1=1", []
        if model is not None:
            q += " AND model=?"
            args.append(model)
        if prompt_name is not None:
            q += " AND prompt_name=?"
            args.append(prompt_name)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY created", args).fetchall()
        return [_row_to_annotation(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Rows per status."""
        with self._lock:
            rows = self._db.execute("SELECT status, count(*) FROM annotations GROUP BY status").fetchall()
        return {s: n for s, n in rows}

    def tokens_with_status(self, status: str) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT sample_token FROM annotations WHERE status=?", (status,))
            return {r[0] for r in rows}

    def models(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT model FROM annotations ORDER BY model")]

    # ------------------------------------------------------------------------------------------------
    def image_hash_for(self, fingerprint: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT image_hash FROM fingerprints WHERE fingerprint=?",
                                   (fingerprint,)).fetchone()
        return None if row is None else row[0]

    def remember_image_hash(self, fingerprint: str, image_hash: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO fingerprints VALUES (?, ?)", (fingerprint, image_hash))
            self._db.commit()

    # ------------------------------------------------------------------------------------------------
    # Batch API state
    def add_batch(self, batch_id: str, input_file_id: str, status: str,
                  items: Iterable[tuple[str, Key, str]]) -> None:
        """Record a submitted batch and its items (custom_id, key, prompt name) in one transaction."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO batches VALUES (?,?,?,?,?,?)",
                             (batch_id, input_file_id, status, None, None, time.time()))
            self._db.executemany(
                "INSERT OR REPLACE INTO batch_items VALUES (?,?,?,?,?,?,?)",
                [(cid, batch_id, k.sample_token, k.prompt_hash, k.model, k.image_hash, name)
                 for cid, k, name in items])
            self._db.commit()

    def update_batch(self, batch_id: str, status: str, output_file_id: str | None = None,
                     error_file_id: str | None = None) -> None:
        with self._lock:
            self._db.execute("UPDATE batches SET status=?, output_file_id=coalesce(?, output_file_id), "
                             "error_file_id=coalesce(?, error_file_id) WHERE batch_id=?",
                             (status, output_file_id, error_file_id, batch_id))
            self._db.commit()

    def open_batches(self) -> list[dict[str, Any]]:
        """Batches whose results are not ingested yet (and that did not end without results)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT batch_id, input_file_id, status, output_file_id, error_file_id FROM batches "
                "WHERE status NOT IN ('ingested', 'failed', 'expired', 'cancelled')").fetchall()
        return [dict(zip(("batch_id", "input_file_id", "status", "output_file_id", "error_file_id"), r))
                for r in rows]

    def batch_items(self, batch_id: str) -> dict[str, tuple[Key, str]]:
        """custom_id -> (key, prompt name) of one batch."""
        with self._lock:
            rows = self._db.execute("SELECT custom_id, sample_token, prompt_hash, model, image_hash, "
                                    "prompt_name FROM batch_items WHERE batch_id=?", (batch_id,)).fetchall()
        return {r[0]: (Key(r[1], r[2], r[3], r[4]), r[5]) for r in rows}

    def keys_in_open_batches(self) -> set[Key]:
        open_ids = [b["batch_id"] for b in self.open_batches()]
        out: set[Key] = set()
        for bid in open_ids:
            out |= {k for k, _ in self.batch_items(bid).values()}
        return out


def _row_to_annotation(row: tuple) -> Annotation:
    (tok, ph, model, ih, name, version, teacher, status, raw, parsed, mode, attempts, error, usage,
     _created) = row
    return Annotation(Key(tok, ph, model, ih), name, version, teacher, status, raw,
                      json.loads(parsed) if parsed else {}, mode or "", attempts, error,
                      json.loads(usage) if usage else None)
