"""Annotate a nuScenes-format dataset with the VLM teacher (Q1 freeform + Q2 structured per frame).

Examples:
  # the embedded default: rule teacher from privileged ground truth (no network, labelled as such)
  python -m scripts.annotate --dataroot data/nuscenes --version v1.0-mini --teacher rule --store ann.sqlite
  # what would GPT-4o cost? (no request is sent; prices are yours to give, USD per 1M tokens)
  python -m scripts.annotate --dataroot ... --teacher openai --store ann.sqlite --dry-run \\
      --price-input 2.5 --price-output 10
  # GPT-4o, 16 frames in flight; Ctrl-C and re-run to resume
  OPENAI_API_KEY=... python -m scripts.annotate --dataroot ... --teacher openai --store ann.sqlite -j 16
  # a local vLLM / Ollama server
  OPENAI_API_KEY=EMPTY python -m scripts.annotate ... --teacher openai --base-url http://127.0.0.1:8000/v1 \\
      --model Qwen/Qwen2-VL-7B-Instruct
  # bulk: OpenAI Batch API (re-run the same command to poll and ingest)
  python -m scripts.annotate --dataroot ... --teacher batch --store ann.sqlite
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from teacher.config import TeacherConfig
from teacher.runner import VIEWS, annotate, dry_run_estimate, load_records
from teacher.store import AnnotationStore
from vlmad.cli import script_parser
from vlmad.config import load_config, save_resolved
from vlmad.errors import UserError, cli_main

# flag -> TeacherConfig field (flags left unset keep the config / YAML value)
FLAG_FIELDS = {
    "teacher": "teacher", "model": "model", "base_url": "base_url", "view": "view", "detail": "detail",
    "concurrency": "concurrency", "timeout": "timeout_s", "max_retries": "max_retries",
    "parse_retries": "parse_retries", "price_input": "price_input_per_mtok",
    "price_output": "price_output_per_mtok", "still_threshold": "still_threshold_m",
    "batch_wait": "batch_wait_s", "batch_poll": "batch_poll_s",
}


def build_parser() -> argparse.ArgumentParser:
    p = script_parser("scripts.annotate", __doc__)
    p.add_argument("--dataroot", required=True, help="nuScenes-format dataset root")
    p.add_argument("--version", default="v1.0-trainval", help="dataset version folder")
    p.add_argument("--store", required=True, type=Path, help="SQLite annotation store (created / resumed)")
    p.add_argument("--teacher", choices=("openai", "batch", "rule"), help="backend (default: rule)")
    p.add_argument("--model", help="model name (default gpt-4o; ignored by the rule teacher)")
    p.add_argument("--base-url", help="OpenAI-compatible API base URL (default https://api.openai.com/v1)")
    p.add_argument("--view", choices=VIEWS,
                   help="front (paper) | six (6-view composite) | sequence (7 frames)")
    p.add_argument("--detail", choices=("high", "low", "auto"), help="image detail sent to the API")
    p.add_argument("--no-structured", action="store_true", help="never ask for JSON-schema outputs")
    p.add_argument("-j", "--concurrency", type=int, help="frames in flight (threads), default 8")
    p.add_argument("--timeout", type=float, help="per-request timeout in seconds")
    p.add_argument("--max-retries", type=int, help="retries on 429/5xx/timeouts")
    p.add_argument("--parse-retries", type=int, help="extra requests for an unreadable answer")
    p.add_argument("--still-threshold", type=float, help="no trajectory line below this displacement (m)")
    p.add_argument("--limit", type=int, help="annotate at most this many frames that still need requests")
    p.add_argument("--retry-failed", action="store_true", help="re-ask answers stored as failed/partial")
    p.add_argument("--dry-run", action="store_true", help="print requests, tokens and cost; send nothing")
    p.add_argument("--price-input", type=float, help="USD per 1M input tokens (for the --dry-run cost)")
    p.add_argument("--price-output", type=float, help="USD per 1M output tokens (for the --dry-run cost)")
    p.add_argument("--batch-wait", type=float, help="batch: seconds to keep polling before exiting")
    p.add_argument("--batch-poll", type=float, help="batch: seconds between polls")
    p.add_argument("--config", type=Path, help="YAML with TeacherConfig fields")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TeacherConfig overrides")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def resolve_config(args: argparse.Namespace) -> TeacherConfig:
    overrides = list(args.set)
    for flag, fld in FLAG_FIELDS.items():
        v = getattr(args, flag)
        if v is not None:
            overrides.append(f"{fld}={json.dumps(v)}")
    if args.no_structured:
        overrides.append("structured=false")
    cfg = load_config(TeacherConfig, yaml_path=args.config, overrides=overrides)
    if cfg.teacher not in ("openai", "batch", "rule"):
        raise UserError(f"teacher must be openai, batch or rule, not {cfg.teacher!r}")
    if cfg.concurrency < 1:
        raise UserError("--concurrency must be at least 1")
    if cfg.teacher == "rule":
        from teacher.backends.rule import RULE_MODEL

        cfg.model = RULE_MODEL
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    records = load_records(args.dataroot, args.version)
    if not records:
        raise UserError(f"{args.dataroot} ({args.version}) has no samples")
    with AnnotationStore(args.store) as store:
        if args.dry_run:
            est = dry_run_estimate(records, store, cfg, args.dataroot, cfg.model, args.limit,
                                   args.retry_failed)
            print(json.dumps(est, indent=2))
            if est["cost_usd"] is None and cfg.teacher != "rule":
                print("cost: give --price-input and --price-output (USD per 1M tokens; the Batch API is "
                      "usually half the chat price) to get an estimate. Image tokens use OpenAI's tile "
                      "formula; "
                      "text tokens are approximate (4 chars/token).", file=sys.stderr)
            return 0
        save_resolved(cfg, args.store.parent, name=args.store.name + ".config.yaml")
        if cfg.teacher == "batch":
            from teacher.backends.batch import check_batch_config, run_batch

            check_batch_config(cfg)
            stats = run_batch(records, args.dataroot, store, cfg, limit=args.limit,
                              retry_failed=args.retry_failed, progress=not args.no_progress)
        else:
            stats = annotate(records, args.dataroot, store, cfg, limit=args.limit,
                             retry_failed=args.retry_failed, progress=not args.no_progress)
    teacher = "rule-teacher (privileged ground truth, not a VLM)" if cfg.teacher == "rule" else cfg.teacher
    print(f"teacher={teacher} model={cfg.model} frames={stats.frames} to_ask={stats.planned} "
          f"answers_written={stats.answers} failed={stats.failed} requests={stats.requests} "
          f"elapsed={stats.elapsed_s:.1f}s store={args.store} rows={stats.status_counts}")
    return 0


if __name__ == "__main__":
    cli_main(main)
