"""Open-loop planning evaluation on nuScenes: L2 and collision rate under both metric conventions.

- `openloop.metrics`: the one module that owns the metric definitions (docs/metrics.md).
- `openloop.gt`: ground truth read through nuscenes-devkit (13 core tables only).
- `openloop.evaluate`: predictions file I/O and `evaluate_predictions(gt, preds)`.
"""
