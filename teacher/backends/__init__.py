"""Teacher backends: `openai_chat` (any OpenAI-compatible chat endpoint), `batch` (OpenAI Batch API),
`rule` (privileged ground truth, no network; the embedded default). `http` holds the retry policy."""
