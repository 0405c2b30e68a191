"""Ray Data adapter (the ``ray`` extra): folders, datasets and videos past one machine.

``Upscaler`` is the callable class for ``ds.map_batches`` in your own pipeline; ``upscale … --ray``
and ``video … --ray`` run on it. The package is named ``on_ray``, not ``ray``: the repository
root is our package, and a root folder named ``ray`` would shadow the real Ray wherever the root
is on ``sys.path`` (``python -m`` from a checkout puts it first). Nothing here imports Ray until
a job runs.
"""
from .actor import Upscaler

__all__ = ["Upscaler"]
