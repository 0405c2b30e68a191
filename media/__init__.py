"""Image (and video) files: reading every image users have into pixels, writing PNGs, and the
folders the CLI and the trainer walk. Below the engine's adapters; imports nothing of ours but
``errors``."""
