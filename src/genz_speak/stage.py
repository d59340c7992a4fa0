"""What every stage script shares: logging, the params file, and its own validated section."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from genz_speak.config import Params, load_params


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params file")
    return p


def start(name: str, args: argparse.Namespace) -> Any:
    """Configure logging, load and validate the params file, log and return this stage's section."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params: Params = load_params(args.params)
    section = getattr(params, name)
    logging.getLogger(f"genz_speak.stages.{name}").info(
        "%s config: %s", name, json.dumps(dataclasses.asdict(section), default=str)
    )
    return section
