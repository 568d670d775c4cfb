"""The request path both wire formats share: request fields, the prompt, the engine
request, the generation's events turned into text and messages, and SSE framing."""
