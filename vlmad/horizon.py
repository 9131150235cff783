"""The time grid of the data contract: keyframes, plan points and motion forecasts share one step.

nuScenes keyframes are 2 Hz, and VAD's motion and planning heads predict 6 future positions at that spacing
(3 s); the ego history holds the 2 keyframes before the current one (docs/facts.md section 6,
docs/data_contract.md). Every module that turns steps into seconds (or back) uses these names: the record
builder, the model config's defaults, the open-loop metrics, the teacher's rule backend and the agent's
controller; the simulation tick (TICK_S) is here too.
"""

from __future__ import annotations

STEP_S = 0.5  # seconds between two keyframes, two plan points, two motion-forecast points
FUT_STEPS = 6  # future steps of motion and planning (6 x 0.5 s = 3 s)
HIS_STEPS = 2  # past ego positions (-1.0 s, -0.5 s)
# The simulation tick: the leaderboard runs CARLA synchronously at 20 Hz, and so does the offline world;
# agents, the expert and the ride-along diagnosis count ticks in these seconds.
TICK_S = 0.05
