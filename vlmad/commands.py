"""Driving commands: VAD's three planning modes and CARLA's RoadOption, and the mapping between them."""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Command(IntEnum):
    """VAD planning mode index (order of the planning head's 3 modes)."""

    RIGHT = 0
    LEFT = 1
    STRAIGHT = 2


class RoadOption(IntEnum):
    """CARLA's `agents.navigation.local_planner.RoadOption` values (not shipped in the PyPI wheel)."""

    VOID = -1
    LEFT = 1
    RIGHT = 2
    STRAIGHT = 3
    LANEFOLLOW = 4
    CHANGELANELEFT = 5
    CHANGELANERIGHT = 6


LATERAL_THRESHOLD_M = 2.0  # |lateral offset| of the last future point that makes a turn command


def command_from_future(fut_xy: np.ndarray, mask: np.ndarray | None = None) -> Command:
    """VAD's command from the ego future (T, 2) in the ego frame (x fwd, y left).

    The last *valid* future point decides: y <= -2 m -> RIGHT, y >= 2 m -> LEFT, else STRAIGHT
    (VAD states it in its lidar frame: x >= 2 m right -> right). No valid point -> STRAIGHT.
    """
    fut_xy = np.asarray(fut_xy, dtype=np.float64)
    valid = np.ones(len(fut_xy), bool) if mask is None else np.asarray(mask, bool)
    if not valid.any():
        return Command.STRAIGHT
    lateral = fut_xy[np.nonzero(valid)[0][-1], 1]
    if lateral <= -LATERAL_THRESHOLD_M:
        return Command.RIGHT
    if lateral >= LATERAL_THRESHOLD_M:
        return Command.LEFT
    return Command.STRAIGHT


def command_from_road_option(option: int) -> Command:
    """Map a CARLA RoadOption to VAD's command (lane changes and lane-follow count as straight)."""
    if option == RoadOption.LEFT:
        return Command.LEFT
    if option == RoadOption.RIGHT:
        return Command.RIGHT
    return Command.STRAIGHT
