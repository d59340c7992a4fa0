"""Errors a user fixes in their input (params, data files), as opposed to bugs: stages report them as one
line naming the file and line or the params key, and exit with status 2 (`genz_speak.stage.run`)."""


class InputError(ValueError):
    """Bad params or data; the message names the file and line, or the params key, and what is allowed."""


class MissingInput(InputError, FileNotFoundError):
    """An input file or folder that is not there."""


class StageFailed(RuntimeError):
    """The stage ran, but what it produced is unusable (too many rows rejected, too many judgements
    failed): it stops with one line saying so (exit status 1), its outputs left as they were."""
