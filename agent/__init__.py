"""The CARLA leaderboard agent: VAD driving from any exported driving checkpoint (docs/agent.md).

    leaderboard_evaluator.py --agent agent/vad_agent.py --agent-config runs/export/vad_base ...

Modules: `vad_agent` (the leaderboard entry point), `options` (AgentConfig and the agent YAML), `sensing`
(input_data -> images, ego state, CAN bus), `route` (global plan -> target point and command),
`controller` (plan -> steer / throttle / brake), `debug_video` (optional per-route video), `compat` (the
leaderboard base class, or a stand-in with the same interface when the leaderboard is not installed).
Nothing heavy is imported here, so `import agent` stays cheap.
"""
