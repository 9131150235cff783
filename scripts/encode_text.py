"""Embed the teacher's freeform answers (A_c, A_f, A_r) and collect its action labels into a feature store.

Writes one safetensors file per split (`teacher.feature_store.FeatureStore`): text (N, 3, C), text_mask,
actions (N, 3) with -1 where the label is missing, plus the encoder name, dimension, teacher and prompt
version. Only answers stored as ok (or partial: the parts that were read) are used; failed ones are masked.

Examples:
  python -m scripts.encode_text --store ann.sqlite --encoder minilm --out-dir features/
  python -m scripts.encode_text --store ann.sqlite --encoder clip-vit-b-32 --model-path ~/models/clip-b32 \\
      --dataroot data/nuscenes --version v1.0-trainval --split train val
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from teacher.encoders import ENCODERS, TextEncoder
from teacher.feature_store import FeatureStore
from teacher.prompts import ACTION_KINDS, ACTION_LABELS, TEXT_KINDS
from teacher.store import AnnotationStore
from vlmad.cli import script_parser
from vlmad.errors import UserError, cli_main

SPLITS = ("all", "train", "val")


def collect_targets(store: AnnotationStore, model: str | None = None, tokens: Iterable[str] | None = None
                    ) -> tuple[list[str], dict[str, dict[str, str | None]], dict[str, str]]:
    """Per sample token: the latest usable P1 texts and P2 labels of `model`.

    Returns (tokens, answers token -> {current, future, reasoning, control, turn, lane}, info) where info
    has the teacher and prompt version. With `tokens`, only those (in that order; unknown ones get an
    all-None entry so the store masks them). Raises a UserError when the store mixes models and no
    `model` is named.
    """
    models = store.models()
    if model is None:
        if len(models) != 1:
            raise UserError(f"the store has answers of {len(models)} models {models}; pick one with --model")
        model = models[0]
    elif model not in models:
        raise UserError(f"the store has no answers of model {model!r}; it has {models}")
    answers: dict[str, dict[str, str | None]] = {}
    teachers, versions = set(), set()
    for row in store.all(model=model):  # oldest first: later rows win
        if row.status not in ("ok", "partial"):
            continue
        entry = answers.setdefault(row.key.sample_token, {k: None for k in TEXT_KINDS + ACTION_KINDS})
        keys = TEXT_KINDS if row.prompt_name == "P1" else ACTION_KINDS
        for k in keys:
            v = row.parsed.get(k)
            entry[k] = v if isinstance(v, str) and v.strip() else None
        teachers.add(row.teacher)
        versions.add(row.prompt_version)
    order = list(tokens) if tokens is not None else sorted(answers)
    empty = {k: None for k in TEXT_KINDS + ACTION_KINDS}
    return order, {t: answers.get(t, empty) for t in order}, {
        "teacher": ",".join(sorted(teachers)), "prompt_version": ",".join(sorted(versions)), "model": model}


def build_features(tokens: list[str], answers: dict[str, dict], encoder: TextEncoder, batch_size: int = 64,
                   progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """text (N, 3, C), text_mask (N, 3), actions (N, 3): unique texts embedded once, batched."""
    n = len(tokens)
    uniq: dict[str, int] = {}
    for t in tokens:
        for k in TEXT_KINDS:
            s = answers[t][k]
            if s is not None and s not in uniq:
                uniq[s] = len(uniq)
    emb = encoder.encode(list(uniq), batch_size=batch_size, progress=progress)
    text = torch.zeros(n, 3, encoder.dim)
    mask = torch.zeros(n, 3, dtype=torch.bool)
    actions = torch.full((n, 3), -1, dtype=torch.long)
    for i, t in enumerate(tokens):
        a = answers[t]
        for j, k in enumerate(TEXT_KINDS):
            if a[k] is not None:
                text[i, j] = emb[uniq[a[k]]]
                mask[i, j] = True
        for j, k in enumerate(ACTION_KINDS):
            if a[k] is not None:
                actions[i, j] = ACTION_LABELS[k].index(a[k])
    return text, mask, actions


def split_tokens(dataroot: str, version: str, split: str) -> list[str]:
    """Sample tokens of an official nuScenes split (train/val of trainval, mini_train/mini_val of mini)."""
    from nuscenes.utils.splits import create_splits_scenes

    from teacher.runner import load_records

    records = load_records(dataroot, version)
    name = {"v1.0-mini": f"mini_{split}"}.get(version, split)
    scenes = set(create_splits_scenes().get(name, []))
    toks = [r["token"] for r in records if r.get("scene_name") in scenes]
    if not toks:
        raise UserError(f"no sample of {dataroot} ({version}) is in the official {name!r} split (its scenes "
                        f"are {sorted({r.get('scene_name') for r in records})[:5]}...); use --split all")
    return toks


def main(argv: list[str] | None = None) -> int:
    p = script_parser("scripts.encode_text", __doc__)
    p.add_argument("--store", required=True, type=Path, help="annotation store written by scripts.annotate")
    p.add_argument("--encoder", required=True, choices=sorted(ENCODERS), help="text encoder")
    p.add_argument("--model-path", type=Path, help="local folder of the encoder (else the local HF cache)")
    p.add_argument("--out-dir", type=Path, help="where <split>.safetensors go (default <store>.features/)")
    p.add_argument("--split", nargs="+", default=["all"], choices=SPLITS, help="splits to write")
    p.add_argument("--dataroot", help="dataset root (needed for train/val splits)")
    p.add_argument("--version", default="v1.0-trainval", help="dataset version (for train/val splits)")
    p.add_argument("--model", help="which annotation model's answers (when the store has several)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per encoder batch")
    p.add_argument("--device", default="cpu", help="torch device for the encoder")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if any(s != "all" for s in args.split) and not args.dataroot:
        raise UserError("--split train/val needs --dataroot (and --version) to know which samples are in it")
    store = AnnotationStore(args.store, readonly=True)
    encoder = TextEncoder(args.encoder, args.model_path, device=args.device)
    out_dir = args.out_dir or Path(str(args.store) + ".features")
    for split in args.split:
        toks = None if split == "all" else split_tokens(args.dataroot, args.version, split)
        tokens, answers, info = collect_targets(store, args.model, toks)
        text, mask, actions = build_features(tokens, answers, encoder, args.batch_size, not args.no_progress)
        path = FeatureStore.save(out_dir / f"{split}.safetensors", tokens, text, mask, actions, {
            "encoder": encoder.name, "encoder_source": encoder.source, "split": split,
            "annotation_store": str(args.store), **info})
        print(f"{path}: {len(tokens)} samples, dim {encoder.dim}, "
              f"text targets {int(mask.sum())}/{mask.numel()}, "
              f"action labels {int((actions >= 0).sum())}/{actions.numel()}, teacher {info['teacher']}")
    store.close()
    return 0


if __name__ == "__main__":
    cli_main(main)
