"""`llamalocal serve`: OpenAI- and ollama-compatible HTTP APIs over the engine's slots."""
