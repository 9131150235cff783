"""Agent bridge: the benchmark's CARLA 0.9.10.1 leaderboard (Python 3.7) driving the project's agent.

`py37_agent` is the 3.7-side leaderboard agent (standard library + numpy only), `server` the driving
server in the project's Python, `protocol` the wire format both share (3.7-compatible), `launch` what
`carla_eval/run_evaluation.sh --carla-version 0.9.10.1` needs per shard, `probe_agent` a deterministic
stand-in agent for checks. docs/bridge.md has the set-up. Nothing is imported here: the 3.7 side loads
its two files by path.
"""
