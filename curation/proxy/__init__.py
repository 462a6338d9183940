"""The capture path: an OpenAI-compatible proxy that records chat completions."""
