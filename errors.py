"""The project's own error types: everything a user can cause ends in one of these,
with a message that names the file or input and what is wrong."""


class RealESRGANTiledError(Exception):
    """Base class for all errors this package raises on purpose."""


class ModelLoadError(RealESRGANTiledError):
    """A model file could not be read, is unsafe, or is not a model we can build."""


class InputImageError(RealESRGANTiledError):
    """An input image is empty, unreadable or of a shape we cannot process."""


class UpscaleCancelled(RealESRGANTiledError):
    """Raised by a cancel check (the CLI's Ctrl-C, a host's interrupt) between tiles."""
