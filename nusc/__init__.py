"""nuScenes-format data layer: writer, synthetic drives, per-keyframe records (infos) and the torch dataset.

Everything reads and writes through the real `nuscenes-devkit` (`NuScenes`, `NuScenesCanBus`,
`NuScenesMap`); the record/batch layout is specified in docs/data_contract.md.
"""
