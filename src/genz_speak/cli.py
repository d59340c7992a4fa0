"""The `genz-speak` command: tools around the pipeline (the pipeline itself runs with `dvc repro`).

Each command's module is imported only when that command runs: `genz-speak profile --help` must not pay
for torch, pydantic or the test server's fastapi.
"""

from __future__ import annotations

import argparse
import importlib

# name -> (module with add_arguments and run, help)
COMMANDS = {
    "chat": ("genz_speak.chat", "a terminal chat with a model folder (streamed tokens)"),
    "push": ("genz_speak.export.hub", "upload the merged model and its card to the Hugging Face Hub"),
    "judge-check": (
        "genz_speak.judges.check",
        "how well a judge (offline, or an LLM at any OpenAI-compatible server) agrees with the labelled "
        "calibration set",
    ),
    "profile": (
        "genz_speak.profiles",
        "apply a profile (configs/NAME.yaml, the keys it changes) to params.yaml",
    ),
    "serve": (
        "genz_speak.testing.serve",
        "the test fixture: an OpenAI-compatible server over a model folder or a stand-in "
        "(needs the serve extra)",
    ),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="genz-speak", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    command = argparse.ArgumentParser(prog=f"genz-speak {args.command}", description=module.__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    module.add_arguments(command)
    module.run(command.parse_args(rest))


if __name__ == "__main__":
    main()
