"""`genz-speak push REPO_ID`: the merged model, with the export's model card as README.md (and, with
--gguf, the GGUF files and the Modelfile), uploaded to a Hugging Face Hub model repository in one commit.

    HF_TOKEN=hf_... genz-speak push you/genz-speak-smollm2 --gguf
    genz-speak push you/genz-speak-smollm2 --dry-run     # the file list and the card; no token, no network

The token is read from the environment variable --token-env names (HF_TOKEN), never from a file or a flag.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from genz_speak.errors import InputError, MissingInput

CARD = "README.md"


def upload_plan(merged_dir: Path, export_dir: Path, gguf: bool) -> dict[str, Path]:
    """What goes where in the repository: every file of the merged folder, the card from the export,
    and with `gguf` the export's GGUF files and Modelfile."""
    if not (merged_dir / "config.json").is_file():
        raise MissingInput(f"{merged_dir}: no merged model here (run `dvc repro merge`)")
    card = export_dir / CARD
    if not card.is_file():
        raise MissingInput(f"{card}: no model card (run `dvc repro export`)")
    plan = {p.name: p for p in sorted(merged_dir.iterdir()) if p.is_file() and not p.name.startswith(".")}
    plan[CARD] = card
    if gguf:
        extra = sorted(export_dir.glob("*.gguf"))
        if not extra:
            raise MissingInput(f"{export_dir}: no GGUF files (export.formats is empty?); push without --gguf")
        plan.update({p.name: p for p in [*extra, export_dir / "Modelfile"] if p.is_file()})
    return plan


def push(repo_id: str, plan: dict[str, Path], token: str, private: bool, message: str) -> str:
    """Create the repository if needed and upload `plan` in one commit; returns the commit's URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.create_commit(
        repo_id,
        operations=[
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in plan.items()
        ],
        commit_message=message,
    )
    return str(info.commit_url)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "repo_id", help="the Hub model repository, e.g. you/genz-speak-smollm2 (created if missing)"
    )
    p.add_argument("--merged", type=Path, default=Path("models/merge"), help="the merged model folder")
    p.add_argument("--export", type=Path, default=Path("models/export"), help="the export stage's folder")
    p.add_argument("--gguf", action="store_true", help="also upload the GGUF files and the Modelfile")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--token-env", default="HF_TOKEN", help="the NAME of the variable holding a write token")
    p.add_argument("--message", default="genz-speak: merged model and model card", help="commit message")
    p.add_argument("--dry-run", action="store_true", help="print the file list and the card; upload nothing")


def _fail(message: str) -> NoReturn:
    print(f"genz-speak push: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(args: argparse.Namespace) -> None:
    import httpx2  # huggingface_hub's HTTP client: its connection errors are its own classes
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(args.repo_id)
        plan = upload_plan(args.merged, args.export, args.gguf)
    except (HFValidationError, InputError) as err:
        _fail(str(err))
    width = max(map(len, plan))
    for name, path in plan.items():
        print(f"{name:<{width}}  {path.stat().st_size / 1e6:9.1f} MB  {path}")
    if args.dry_run:
        print("\n" + plan[CARD].read_text(encoding="utf-8"))
        return
    token = os.environ.get(args.token_env)
    if not token:
        _fail(
            f"${args.token_env} is not set: create a write token at https://huggingface.co/settings/tokens "
            f"and `export {args.token_env}=...` (or pass --dry-run to see what would be uploaded)"
        )
    try:
        url = push(args.repo_id, plan, token, args.private, args.message)
    except HfHubHTTPError as err:
        _fail(f"the Hub refused the upload to {args.repo_id}: {err}")
    except (httpx2.HTTPError, ConnectionError, OSError) as err:
        _fail(f"could not reach the Hub ({type(err).__name__}: {err}); the upload did not complete")
    print(f"uploaded {len(plan)} files: {url}")
