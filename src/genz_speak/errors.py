"""Errors a user fixes in their input (params, data files), as opposed to bugs: stages report them as one
line naming the file and line or the params key, and exit with status 2 (`genz_speak.stage.run`)."""


class InputError(ValueError):
    """Bad params or data; the message names the file and line, or the params key, and what is allowed."""


class MissingInput(InputError, FileNotFoundError):
    """An input file or folder that is not there."""
