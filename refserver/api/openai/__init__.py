"""The OpenAI wire format: chat and text completion requests, replies and SSE chunks."""
