"""The tiled inference engine: seam-free, memory-bounded, mixed precision with a NaN guard.

Host-neutral: ``upscale(images, model, choices, host)`` takes a ComfyUI-layout batch
``[B, H, W, C]`` (float, 0..1), a spandrel ``ImageModelDescriptor`` (ours or any spandrel one),
the user's ``Choices`` and the caller's ``Host``, and returns the result with a ``RunReport``
of what ran. It knows no network: our architectures state their cost and overlap through
their profile, any other model is measured (``memory.py``).
"""
from .device import call_model, is_out_of_memory
from .interface import Choices, Host, RunReport, Upscaled
from .memory import available_memory
from .run import upscale
from .settings import PRECISIONS
from .stream import upscale_stream

__all__ = ["PRECISIONS", "Choices", "Host", "RunReport", "Upscaled", "available_memory", "call_model",
           "is_out_of_memory", "upscale", "upscale_stream"]
