"""train.resume's checkpoints: kept only for the very run that wrote them, resumed only when complete."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from genz_speak.config import OPERATIONAL_KEYS, TrainConfig

log = logging.getLogger(__name__)


def prepare_work_dir(
    cfg: TrainConfig, rows: list[dict[str, Any]], base_dir: Path, work_dir: Path
) -> str | None:
    """The checkpoint to resume from, if `train.resume` is on and `work_dir` holds one of this very run
    (same train params, dataset and base); anything else there is stale and removed."""
    from genz_speak.models import model_fingerprint

    # How the run goes (threads, resume, checkpoint cadence) never changes what it learns: changing one
    # must not discard the checkpoints.
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if f"train.{k}" not in OPERATIONAL_KEYS}
    state = [settings, rows, model_fingerprint(base_dir)]
    blob = json.dumps(state, sort_keys=True, default=str)
    fingerprint = hashlib.sha256(blob.encode()).hexdigest()
    stamp = work_dir / "fingerprint.txt"
    if not cfg.resume or not stamp.is_file() or stamp.read_text() != fingerprint:
        shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)
    return _last_complete_checkpoint(work_dir) if cfg.resume else None


def _last_complete_checkpoint(work_dir: Path) -> str | None:
    """The newest checkpoint that was written to the end: the Trainer writes trainer_state.json last, so a
    kill mid-save leaves a folder without a readable one (removed here, never resumed from)."""
    steps = sorted(work_dir.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[-1]), reverse=True)
    for ckpt in steps:
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            return str(ckpt)
        except (OSError, ValueError):
            log.warning("train.resume: %s is incomplete (killed while saving); removed", ckpt)
            shutil.rmtree(ckpt, ignore_errors=True)
    return None
