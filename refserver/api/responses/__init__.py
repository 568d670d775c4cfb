"""The OpenAI Responses wire format (/v1/responses): input items, output items and their stream."""
