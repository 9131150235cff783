#!/usr/bin/env bash
# One prepared GPU benchmark (issue 18): vad_tiny and vad_base at their native image sizes, one frame +
# previous BEV state per forward, in fp32, bf16 autocast, torch.compile (fp32) and CUDA graphs
# (torch.compile mode="reduce-overhead", fp32), plus one training step (fp32 and bf16), printed as one
# table (ms per forward, peak CUDA memory). Installs nothing: it runs the project's .venv (else python3) and
# reuses scripts/bench_model.py for every number. Budget: under 8 minutes on one H100/H200 (each run is
# also capped by `timeout`, so a hung compile cannot eat the budget; a capped run shows as "-").
#
#     bash scripts/bench_gpu.sh [OUT_DIR]      # OUT_DIR (default runs/bench_gpu) keeps the JSON files
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3  # an environment without the project venv (torch installed already)
OUT="${1:-runs/bench_gpu}"
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "bench_gpu: no .venv/bin/python and no python3 (run scripts/setup_env.sh first)" >&2; exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "bench_gpu: torch sees no CUDA GPU on this machine; nothing to benchmark (CPU: scripts/bench_model.py)" >&2
  exit 2
fi
mkdir -p "$OUT"
ITERS=20
run() {  # run NAME CONFIG SECONDS ARGS...: one bench_model call, JSON to $OUT/NAME_CONFIG.json; a failure
  # or a run past its cap is reported and left out of the table, never fatal
  local name=$1 config=$2 secs=$3; shift 3
  echo "== $name $config: bench_model $*"
  if ! timeout "$secs" "$PY" -m scripts.bench_model --device cuda --configs "$config" \
      --iters "$ITERS" --warmup 3 --json "$OUT/${name}_$config.json" "$@"; then
    echo "bench_gpu: run $name $config failed or passed ${secs}s (left out of the table)" >&2
    rm -f "$OUT/${name}_$config.json"
  fi
}
rm -f "$OUT"/*.json
# caps sum to 460 s (7.7 min): the whole script stays under 8 minutes even if every run hits its cap
run fp32 vad_tiny 35 --train
run fp32 vad_base 45 --train
run bf16 vad_tiny 35 --amp bf16 --train
run bf16 vad_base 45 --amp bf16 --train
run compiled vad_tiny 70 --compile
run compiled vad_base 80 --compile
run cuda_graphs vad_tiny 70 --cuda-graphs
run cuda_graphs vad_base 80 --cuda-graphs
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = []
for run, config in [(r, c) for r in ("fp32", "bf16", "compiled", "cuda_graphs") for c in ("vad_tiny", "vad_base")]:
    f = out / f"{run}_{config}.json"
    if not f.exists():
        rows.append((run, config, "-", "-", "-", "failed or over its time cap")); continue
    for r in json.loads(f.read_text()):
        c = r.get("compiled")
        ms, mem = (c["latency_ms_median"], c["peak_mem_mib"]) if c else (r["latency_ms_median"], r["peak_mem_mib"])
        extra = f"x{c['speedup']:.2f} vs eager, compile {c['compile_s']:.0f} s" if c else ""
        train = f"{r['train_step_ms_median']:.1f} ({r['train_peak_mem_mib']:.0f} MiB)" if "train_step_ms_median" in r else ""
        rows.append((run, r["config"], f"{ms:.1f}", f"{mem:.0f}", train, extra))
head = ("mode", "config", "ms/forward", "peak MiB", "train step ms (peak)", "notes")
w = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
for x in [head, tuple("-" * n for n in w)] + rows:
    print(" | ".join(str(v).ljust(n) for v, n in zip(x, w)))
PYEOF
