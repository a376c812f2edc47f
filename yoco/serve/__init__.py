"""`yoco serve`: OpenAI-compatible serving with continuous batching (engine: the loop that owns
the model; app: the HTTP endpoints; command: the command line)."""
