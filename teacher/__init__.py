"""The VLM teacher (training only): trajectory overlay, the paper's prompts, VLM backends (OpenAI-compatible
chat, Batch API, rule teacher), the resumable annotation store, answer parsing, and text-feature targets.

See docs/teacher.md. Training reads only `teacher.feature_store.FeatureStore`.
"""
