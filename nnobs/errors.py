"""The one family of errors nnobs raises, each with a message meant for the person who caused it."""


class NnobsError(Exception):
    """Base of every error nnobs raises on purpose."""


class RunNameError(NnobsError, ValueError):
    """A run name that could escape the runs root or is not a plain name."""


class CommandError(NnobsError, ValueError):
    """A command or value the worker would refuse."""


class ControlFileError(NnobsError):
    """The control file exists but cannot be read as commands."""
