"""VAD in pure PyTorch (no mmcv / mmdet3d / compiled ops): backbone, BEV encoder, heads, losses, presets.

Entry points: `models.vad.VAD`, `models.vad.VADConfig`, `models.vad.BEVState`, `models.configs.get_config`,
`models.features` (the model-input contract), `models.checkpoint_formats` (driving and training
checkpoints). See docs/models.md.
"""
