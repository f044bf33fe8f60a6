"""User-facing errors: one line that names the thing and what to do.

The CLI prints these without a traceback; everything else is a bug and keeps its traceback.
"""


class SkylocError(Exception):
    """An error caused by the user's input or environment, with a one-line fix hint."""


class ModelMismatchError(SkylocError):
    """A cache, checkpoint or engine was made with a different model than the one given."""


class ConfigError(SkylocError):
    """The configuration does not fit the input (a lens calibration of another frame size): every
    frame would fail the same way, so the loop stops rather than report it frame after frame."""
