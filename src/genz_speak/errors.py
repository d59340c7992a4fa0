"""Errors a user fixes in their input (params, data files), as opposed to bugs: stages report them as one
line naming the file and line or the params key, and exit with status 2 (`genz_speak.stage.run`)."""

from __future__ import annotations


class InputError(ValueError):
    """Bad params or data; the message names the file and line, or the params key, and what is allowed."""


class MissingInput(InputError, FileNotFoundError):
    """An input file or folder that is not there."""


class ParamError(InputError):
    """A params value a stage finds it cannot use once running (a model without a chat template, a backend
    this machine lacks): the message names the params file the stage was given, not always params.yaml."""

    file = "params.yaml"  # genz_speak.params.load_params records the file it loaded here

    def __init__(self, key: str, message: str):
        super().__init__(key, message)
        self.key, self.message = key, message

    def __str__(self) -> str:
        return f"{ParamError.file}: {self.key}: {self.message}"


class StageFailed(RuntimeError):
    """The stage ran, but what it produced is unusable (too many rows rejected, too many judgements
    failed): it stops with one line saying so (exit status 1), its outputs left as they were."""
