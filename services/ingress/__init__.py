"""ingress: the public OpenAI-compatible HTTP API; turns NATS reply frames into SSE or one JSON body."""
