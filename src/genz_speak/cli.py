"""The `genz-speak` command: tools around the pipeline (the pipeline itself runs with `dvc repro`)."""

from __future__ import annotations

import argparse

from genz_speak import chat, profiles, serve
from genz_speak.export import hub
from genz_speak.judges import check


def main() -> None:
    parser = argparse.ArgumentParser(prog="genz-speak", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_arguments(sub.add_parser("serve", help="an OpenAI-compatible chat server over a model folder"))
    chat.add_arguments(sub.add_parser("chat", help="a terminal chat with a model folder (streamed tokens)"))
    hub.add_arguments(
        sub.add_parser("push", help="upload the merged model and its card to the Hugging Face Hub")
    )
    check.add_arguments(
        sub.add_parser(
            "judge-check",
            help="how well a judge (offline, or an LLM at any OpenAI-compatible server) agrees with the "
            "labelled calibration set",
        )
    )
    profiles.add_arguments(
        sub.add_parser(
            "profile", help="apply a profile (configs/NAME.yaml, the keys it changes) to params.yaml"
        )
    )
    args = parser.parse_args()
    commands = {
        "serve": serve.run,
        "chat": chat.run,
        "push": hub.run,
        "judge-check": check.run,
        "profile": profiles.run,
    }
    commands[args.command](args)


if __name__ == "__main__":
    main()
