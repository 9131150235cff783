"""Offline world: CARLA road networks without a server (maps, routes, traffic, cameras, sensors, criteria)."""
