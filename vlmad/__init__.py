"""Shared foundations of the project: config, frames, rig, commands, file I/O and user-facing errors.

Every other package (nusc, models, teacher, world, agent, carla_eval) imports its conventions from here,
so that each concept is owned by exactly one module.
"""
