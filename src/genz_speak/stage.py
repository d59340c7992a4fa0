"""What every stage script shares: logging, the params file, and its own validated section."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from genz_speak.config import Params, load_params
from genz_speak.errors import InputError, StageFailed

log = logging.getLogger("genz_speak.stage")


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params file")
    return p


def start(name: str, args: argparse.Namespace) -> Any:
    """Configure logging, load and validate the params file, log and return this stage's section."""
    _configure_logging()
    params: Params = load_params(args.params)
    section = getattr(params, name)
    logging.getLogger(f"genz_speak.stages.{name}").info(
        "%s config: %s", name, json.dumps(dataclasses.asdict(section), default=str)
    )
    return section


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (dvc, a scheduler, `kill`) unwinds like Ctrl-C, so temporary files are removed on the way out.
    raise SystemExit(128 + signum)


def run(main: Callable[[], None]) -> None:
    """Run a stage script's `main`: bad params or data end it with one line naming the file and line or
    the params key, and exit status 2; a result too poor to keep (StageFailed) with one line and exit
    status 1. Either way outputs already written are left as they were."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        main()
    except InputError as err:
        _configure_logging()
        log.error("%s", err)
        sys.exit(2)
    except StageFailed as err:
        _configure_logging()
        log.error("%s", err)
        sys.exit(1)
