"""What every stage script shares: its command line, logging, its validated params section, and the
engine contract (`genz_speak.pipeline`): paths and config in, outputs written by the engine, metrics out.

A stage script is one call: ``stage.main(__doc__, "train", train.Paths, train.run)``. The fields of the
engine's `Paths` dataclass become the script's path flags (`out_dir` -> `--out-dir`), as `dvc.yaml`'s
`cmd` passes them; every script also takes `--params`, `--metrics`, where the engine's metrics go, and
`--run-info`, where the part of them under "run" goes: how the run went (times, rates, memory, versions,
requests and cache hits), which differs between runs of the same result and so stays out of the metrics
that later stages depend on.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import signal
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from genz_speak.errors import InputError, StageFailed

log = logging.getLogger("genz_speak.stage")

P = TypeVar("P")
RUN_INFO = "run"  # the key of an engine's metrics that goes to --run-info


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parser(doc: str | None, paths: type[Any]) -> argparse.ArgumentParser:
    """The stage's command line: a flag per field of `paths` (a list of paths for `list[Path]` fields;
    a field named `params` is the params file itself), then --params and --metrics."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(paths)
    for field in dataclasses.fields(paths):
        if field.name == "params":
            continue
        many = typing.get_origin(hints[field.name]) is list
        p.add_argument(_flag(field.name), type=Path, required=True, nargs="+" if many else None)
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params file")
    p.add_argument("--metrics", type=Path, required=True, help="where the stage's metrics go (JSON)")
    p.add_argument(
        "--run-info", type=Path, help="where how the run went goes (JSON: times, requests); else logged"
    )
    return p


def load_section(name: str, params_file: Path) -> Any:
    """Load and validate the params file; log and return the section `name`."""
    from genz_speak.params import load_params

    section = getattr(load_params(params_file), name)
    log.info("%s config: %s", name, json.dumps(dataclasses.asdict(section), default=str))
    return section


def main(
    doc: str | None,
    name: str,
    paths: type[P],
    engine: Callable[[Any, P], dict[str, Any] | None],
    after: Callable[[], None] | None = None,
) -> None:
    """Run stage `name`: parse its paths, load its section, run the engine, write the metrics it returns
    (an engine returns None in processes that write nothing, such as data-parallel ranks other than 0),
    then `after`. Errors end it as `run` says."""

    def stage() -> None:
        from genz_speak.io import write_json

        args = parser(doc, paths).parse_args()
        _configure_logging()
        cfg = load_section(name, args.params)
        values = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(paths)}  # type: ignore[arg-type]
        if "params" in values:
            values["params"] = args.params
        metrics = engine(cfg, paths(**values))
        if metrics is not None:
            info = metrics.pop(RUN_INFO, None)
            write_json(args.metrics, metrics)
            if info is not None and args.run_info is not None:
                write_json(args.run_info, info)
            elif info is not None:
                log.info("%s run: %s", name, json.dumps(info, default=str))
        if after is not None:
            after()

    run(stage)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM (dvc, a scheduler, `kill`) unwinds like Ctrl-C, so temporary files are removed on the way out.
    raise SystemExit(128 + signum)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full(err: BaseException) -> OSError | None:
    """The full-disk error behind `err`, if any: libraries wrap it (safetensors, torch's savers), so the
    chain of causes is searched, and the text too where a library kept only that."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL:
            return current
        if "No space left on device" in str(current) or "Disk quota exceeded" in str(current):
            return OSError(errno.ENOSPC, str(current))
        current = current.__cause__ or current.__context__
    return None


def run(main: Callable[[], None]) -> None:
    """Run a stage: bad params or data end it with one line naming the file and line or the params key,
    and exit status 2; a result too poor to keep (StageFailed) or a full disk with one line and exit
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
    except Exception as err:
        full = disk_full(err)
        if full is None:
            raise
        _configure_logging()
        where = f" writing {full.filename}" if full.filename else ""
        log.error(
            "no space left on the disk%s (%s); outputs left as they were: free some space "
            "(or point $GENZ_SPEAK_CACHE elsewhere) and rerun",
            where,
            full.strerror or full,
        )
        sys.exit(1)
