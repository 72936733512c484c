"""hoster_adapter: fronts hosters' OpenAI-compatible servers and streams their tokens to the ingress."""
