"""The Anthropic Messages API (`/v1/messages`), translated into the chat-completions machinery."""
