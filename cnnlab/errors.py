"""The one exception family cnnlab raises for bad input.

Every error a user can cause (a corrupt file, a bad option, a checkpoint of
another model) is a subclass of :class:`CnnlabError`. Its message is one line
that says what was wrong and how to fix it; the command line prints it and exits
with status 2, never with a traceback.
"""


class CnnlabError(Exception):
    """Base class of every error cnnlab raises for bad input or bad state."""


class ConfigError(CnnlabError, ValueError):
    """An option, a model spec or a config file is invalid."""


class ShapeError(CnnlabError, ValueError):
    """Arrays or layers whose shapes do not fit together."""


class DataError(CnnlabError):
    """A dataset file is missing, corrupt or inconsistent."""


class DownloadError(DataError):
    """A download failed on every mirror, or delivered a file with a bad checksum."""


class CheckpointError(CnnlabError):
    """A checkpoint is unreadable, unsafe (pickled objects) or from another model."""


class ImageError(CnnlabError):
    """An image given to ``cnnlab predict`` cannot be read or used."""


class TrainingError(CnnlabError):
    """Training cannot go on (for example, the loss became NaN or infinite)."""
