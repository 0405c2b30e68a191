"""Video files through the engine: the `video` command's pipeline (pipeline.py), its resumable
segments (segments.py) and its flags (cli.py). PyAV is imported only when a video runs."""
