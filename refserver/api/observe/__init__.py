"""What the API shows of the server without steering it: /metrics and the status page."""
