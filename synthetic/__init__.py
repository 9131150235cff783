"""Synthetic inputs for the tests and the benchmark scripts (scripts/bench_*.py): a procedural
nuScenes-format dataset (`nuscenes`), leaderboard routes and sensor ticks for the agent (`leaderboard`),
a local OpenAI-compatible VLM server (`vlm_server`) and random model batches (`batch`).

Not test-only, so not under tests/: the benchmarks, shipped CLIs, build their inputs from here. Nothing in
the pipeline (scripts.main, the trainer, the teacher, the deployed agent) imports this package.
"""
