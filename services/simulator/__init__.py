"""The simulator: an OpenAI-compatible hoster with deterministic replies, tunable latency and injected faults.

It runs as its own process for development, tests, load benchmarks and demos.
"""
