"""Closed-loop evaluation on the CARLA leaderboard: scoring, launcher, reports.

`carla_eval.scoring` is the one module that owns leaderboard scoring and the results-file layout;
`carla_eval.launcher` runs servers and evaluator shards; `carla_eval.report` merges and reports.
"""
