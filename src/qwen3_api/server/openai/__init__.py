"""The OpenAI-compatible API: one router, protocol models, and a serving module per endpoint family."""
