"""The `genz-speak` command: tools around the pipeline (the pipeline itself runs with `dvc repro`)."""

from __future__ import annotations

import argparse

from genz_speak import serve


def main() -> None:
    parser = argparse.ArgumentParser(prog="genz-speak", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_arguments(sub.add_parser("serve", help="an OpenAI-compatible chat server over a model folder"))
    args = parser.parse_args()
    if args.command == "serve":
        serve.run(args)


if __name__ == "__main__":
    main()
