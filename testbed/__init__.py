"""The embedded ComfyUI host and small real-class models, for tests, demo and benchmarks."""
