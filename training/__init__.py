"""Training of VAD with or without the VLM-AD heads (single process or torchrun DDP), and running a trained
model over a dataset for the open-loop evaluation. See docs/training.md."""
