"""Reading model files, safely: sniffing checkpoints (``sniff``), weights-only unpickling
(``loader``, ``pickle_scan``), TorchScript archives without their code (``torchscript``), ncnn
``.param``/``.bin`` graphs (``ncnn/``), spandrel's fallback (``spandrel_import``), the bundled
weights (``bundled``), weight-space interpolation (``interpolate``) and discriminator files
(``discriminator``). What a loaded network travels in is ``descriptor.OurModel``.

``from realesrgan_tiled.loading import load_model`` is the documented entry point."""
from __future__ import annotations

from .descriptor import OurModel, build_model
from .loader import SUPPORTED_SUFFIXES, build_descriptor, load_model, model_info, read_state_dict

__all__ = ["SUPPORTED_SUFFIXES", "OurModel", "build_descriptor", "build_model", "load_model", "model_info",
           "read_state_dict"]
