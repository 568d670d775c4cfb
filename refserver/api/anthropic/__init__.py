"""The Anthropic Messages wire format: requests, content-block replies and their stream."""
