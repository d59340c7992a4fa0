"""Models in real remote storage: the tiny pipeline's outputs through a real S3 API (issue 27).

moto's S3 server runs on 127.0.0.1 for the session (tests/pipeline/moto_s3.py). The publisher (the session
template with an `s3` remote, endpoint included, in its committed .dvc/config) pushes its outputs to a
bucket there and its git history to a bare repo, `origin`; everyone else starts from `origin` and the
bucket alone. The credentials are dummies in the subprocesses' environment, never in a file. The commands
are README's "Sharing" ones, its placeholders replaced by local values.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.conftest import ROOT, python_env
from tests.pipeline.dvcrepo import pushed_objects, ran, sh

if TYPE_CHECKING:
    from tests.pipeline.moto_s3 import S3Server

_MISSING = [m for m in ("dvc_s3", "moto", "flask", "boto3") if importlib.util.find_spec(m) is None]
if _MISSING:
    _REASON = f"needs {', '.join(_MISSING)}: the test-s3 extra (`bash scripts/setup.sh tests` installs it)"
    if os.environ.get("CI"):  # CI's set-up installs them: a skip there would hide a broken set-up
        pytest.fail(_REASON, pytrace=False)
    pytest.skip(_REASON, allow_module_level=True)

pytestmark = pytest.mark.slow

ACCESS_KEY = "GENZTESTACCESSKEY"
SECRET_KEY = f"genz-test-secret-{uuid.uuid4().hex}"  # looked for in every file the tests leave

# README's "Sharing" shows these commands with its placeholders; the tests run them with local values.
README_VALUES = {
    "bucket": "s3://my-bucket/genz-speak",
    "endpoint": "https://s3.example.com",
    "repo": "https://github.com/you/genz-speak",
}
PUBLISH = (
    "dvc remote add -d s3 {bucket}",
    "dvc remote modify s3 endpointurl {endpoint}",
    "git add .dvc/config",
    'git commit -m "the s3 remote"',
    "dvc push",
    'git tag -a genz-speak@v0.1.0 -m "genz-speak v0.1.0"',
    'git tag -a genz-speak-gguf@v0.1.0 -m "genz-speak-gguf v0.1.0"',
    "git push origin main --tags",
)
GET_MERGED = "dvc artifacts get {repo} genz-speak"  # into ./merge, the artifact's folder name
GET_GGUF = "dvc artifacts get {repo} genz-speak-gguf"  # into ./export
GET_BY_PATH = "dvc get {repo} models/merge -o genz-speak"
CLONE = ("git clone {repo}", "dvc pull", "dvc repro", "dvc status -c")
EXPERIMENT = (
    "dvc exp run -S plot.dpi=100 -n dpi100",
    "dvc exp push origin dpi100",
    "dvc exp pull origin dpi100",
    "dvc exp show",
    "dvc exp apply dpi100",
)
HELD_AFTER = 10  # uploads an interrupted push gets through


def run(cwd: Path, command: str, env: dict[str, str], values: dict[str, str]) -> str:
    return sh(cwd, *shlex.split(command.format(**values)), env=env)


@dataclass(frozen=True)
class Published:
    repo: Path  # the publisher's checkout
    origin: Path  # its bare git remote, what everyone else clones
    bucket: str
    values: dict[str, str]  # README's placeholders, here


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    from tests.pipeline.moto_s3 import S3Server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("dvc-home")
    env = {k: v for k, v in python_env().items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION="us-east-1",
        # no ~/.aws file can stand in for the environment's credentials
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
        AWS_CONFIG_FILE=str(home / "no-aws-config"),
        # DVC's per-user and per-machine folders, here, where the credentials test searches them too
        DVC_GLOBAL_CONFIG_DIR=str(home / "global"),
        DVC_SITE_CACHE_DIR=str(home / "site"),
        # no reporter process per command: it has no network to reach, and the 2 cores have other work
        DVC_NO_ANALYTICS="1",
    )
    return env


def new_bucket(s3: S3Server) -> str:
    name = f"genz-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    return name


def bucket_keys(s3: S3Server, bucket: str) -> set[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def digests(root: Path, paths: Iterable[str] = (".",)) -> dict[str, str]:
    """sha256 of every file under `root`'s `paths`, by path relative to `root`."""
    found = {}
    for path in paths:
        top = root / path
        for f in [top] if top.is_file() else sorted(top.rglob("*")):
            if f.is_file():
                found[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return found


def holding_the_secret(*places: Path) -> list[Path]:
    """The files under `places` (git and DVC folders, caches included) whose bytes hold SECRET_KEY."""
    files = [f for place in places for f in place.rglob("*") if f.is_file() and not f.is_symlink()]
    assert files
    return [f for f in files if SECRET_KEY.encode() in f.read_bytes()]


def outputs(repo: Path) -> list[str]:
    """Every output dvc.lock records (DVC-cached or kept in git)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return sorted(o["path"] for stage in lock.values() for o in stage.get("outs", []))


@pytest.fixture(scope="session")
def published(
    template: Path, s3: S3Server, s3_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Published:
    base = tmp_path_factory.mktemp("published")
    repo, origin = base / "repo", base / "genz-speak.git"
    shutil.copytree(template, repo, symlinks=True)
    sh(base, "git", "init", "-q", "--bare", "-b", "main", str(origin))
    sh(repo, "git", "remote", "add", "origin", str(origin))
    bucket = new_bucket(s3)
    values = {"bucket": f"s3://{bucket}/genz-speak", "endpoint": s3.url, "repo": str(origin)}
    out = "".join(run(repo, command, s3_env, values) for command in PUBLISH)
    expected = pushed_objects(repo)
    assert f"{len(expected)} files pushed" in out
    assert bucket_keys(s3, bucket) == expected
    return Published(repo, origin, bucket, values)


def test_readme_sharing_shows_the_tested_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Sharing.**") : readme.index("**Comparing runs.**")]
    commands = (*PUBLISH, GET_MERGED, GET_GGUF, GET_BY_PATH, *CLONE, *EXPERIMENT)
    missing = [c.format(**README_VALUES) for c in commands if c.format(**README_VALUES) not in section]
    assert missing == []


def test_a_fresh_clone_pulls_everything_and_repro_has_nothing_to_do(
    published: Published, s3: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    clone_cmd, pull, repro, status = CLONE
    run(tmp_path, clone_cmd, s3_env, published.values)
    clone = tmp_path / "genz-speak"  # git's folder for a clone of .../genz-speak.git
    gets = s3.requests["GET"]
    pulled = run(clone, pull, s3_env, published.values)
    assert f"{len(pushed_objects(published.repo))} files fetched" in pulled
    assert s3.requests["GET"] > gets
    out = run(clone, repro, s3_env, published.values)
    assert ran(out) == [] and "Data and pipelines are up to date" in out
    assert "Cache and remote 's3' are in sync" in run(clone, status, s3_env, published.values)
    # the models and data, byte for byte as the publisher has them
    paths = outputs(published.repo)
    assert "models/merge" in paths
    assert digests(clone, paths) == digests(published.repo, paths)
    assert holding_the_secret(clone) == []  # .git, .dvc, the cache the pull filled, the workspace


def test_artifacts_and_dvc_get_fetch_the_models_through_s3(
    published: Published, s3: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """`origin` is a bare repo (no DVC cache): what lands here came from the bucket."""
    for command, folder, source in (
        (GET_MERGED, "merge", "models/merge"),
        (GET_GGUF, "export", "models/export"),
        (GET_BY_PATH, "genz-speak", "models/merge"),
    ):
        gets = s3.requests["GET"]
        run(tmp_path, command, s3_env, published.values)
        assert s3.requests["GET"] > gets, command
        assert digests(tmp_path / folder) == digests(published.repo / source), command
    assert {p.name for p in (tmp_path / "merge").iterdir()} >= {"model.safetensors", "config.json"}
    assert {p.suffix for p in (tmp_path / "export").iterdir()} >= {".gguf"}
    assert holding_the_secret(tmp_path) == []


def interrupted_push(repo: Path, s3: S3Server, env: dict[str, str], outage: bool) -> str:
    """`dvc push -j 1` in `repo`, stopped while the server holds its upload after HELD_AFTER more: by an
    outage of the server (stopped, then started again with its buckets) or by killing `dvc push`. Its
    output."""
    s3.hold_puts_after(HELD_AFTER)
    # AWS_MAX_ATTEMPTS=1: in an outage the client gives up at once, not after ~40 s of retries for each
    # file still to go; the final push runs with the defaults.
    push = subprocess.Popen(
        ["dvc", "push", "-j", "1"],
        cwd=repo,
        env={**env, "AWS_MAX_ATTEMPTS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert s3.held.wait(timeout=120), "dvc push never got as far as the held upload"
        if outage:
            s3.stop()
            try:
                out, _ = push.communicate(timeout=120)
            finally:
                s3.start()
            assert push.returncode != 0 and "Could not connect to the endpoint URL" in out, out[-2000:]
        else:
            os.killpg(push.pid, signal.SIGKILL)
            out, _ = push.communicate(timeout=60)
            assert push.returncode == -signal.SIGKILL
    finally:
        if push.poll() is None:
            os.killpg(push.pid, signal.SIGKILL)
            push.wait()
        s3.release()
    return out


def test_an_interrupted_push_resumes(
    repo: Path, s3: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """A push killed mid-transfer, then one cut off by an outage of the server (listener closed, its
    connections cut; the buckets stay, as a real S3 endpoint's do): each next push uploads only what
    is missing, and after the last one the bucket holds every object and a fresh clone pulls them all."""
    bucket = new_bucket(s3)
    sh(repo, "dvc", "remote", "add", "-d", "s3", f"s3://{bucket}/genz-speak", env=s3_env)
    sh(repo, "dvc", "remote", "modify", "s3", "endpointurl", s3.url, env=s3_env)
    expected = pushed_objects(repo)
    assert len(expected) > 2 * HELD_AFTER
    for n, outage in enumerate((False, True), start=1):
        puts = s3.requests["PUT"]
        interrupted_push(repo, s3, s3_env, outage)
        # HELD_AFTER new objects stored, none sent twice: the held upload is the only other PUT
        assert s3.requests["PUT"] - puts == HELD_AFTER + 1
        stored = bucket_keys(s3, bucket)
        assert len(stored) == n * HELD_AFTER and stored < expected

    out = sh(repo, "dvc", "push", env=s3_env)
    assert f"{len(expected) - 2 * HELD_AFTER} files pushed" in out  # only the missing ones
    assert bucket_keys(s3, bucket) == expected
    assert "Cache and remote 's3' are in sync" in sh(repo, "dvc", "status", "-c", env=s3_env)

    sh(repo, "git", "commit", "-qm", "the s3 remote", ".dvc/config")
    sh(tmp_path, "git", "clone", "-q", str(repo), "clone")
    clone = tmp_path / "clone"
    sh(clone, "dvc", "pull", env=s3_env)
    paths = outputs(repo)
    assert digests(clone, paths) == digests(repo, paths)
    assert holding_the_secret(repo, clone) == []


def _experiment(shown: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """An experiment's data in `dvc exp show --json`, by name."""
    runs = {r["name"]: r["data"] for rev in shown for e in rev.get("experiments") or [] for r in e["revs"]}
    assert name in runs, sorted(runs)
    data: dict[str, Any] = runs[name]
    return data


def test_an_experiment_travels_through_git_and_s3(
    published: Published, s3: S3Server, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """`dvc exp push` sends the experiment's git ref to origin (its outputs' objects to the bucket: this
    one's new outputs are git-kept plots, so none are new there); `dvc exp pull` on a fresh clone brings
    the ref and, from the bucket, every output the experiment's commit names."""
    run_exp, push_exp, pull_exp, show, apply = EXPERIMENT
    publisher, origin = tmp_path / "publisher", tmp_path / "genz-speak.git"
    shutil.copytree(published.repo, publisher, symlinks=True)
    sh(tmp_path, "git", "clone", "-q", "--bare", str(published.origin), str(origin))  # this test's own
    sh(publisher, "git", "remote", "set-url", "origin", str(origin))
    values = {**published.values, "repo": str(origin)}

    assert ran(run(publisher, run_exp, s3_env, values)) == ["plot"]
    assert "Pushed experiment dpi100 to Git remote 'origin'" in run(publisher, push_exp, s3_env, values)

    mate = tmp_path / "mate"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(mate))
    gets = s3.requests["GET"]
    assert "dpi100" in run(mate, pull_exp, s3_env, values)
    assert s3.requests["GET"] > gets
    data = _experiment(json.loads(run(mate, f"{show} --json", s3_env, values)), "dpi100")
    assert data["params"]["params.yaml"]["data"]["plot"]["dpi"] == 100
    metrics = {name: m["data"] for name, m in data["metrics"].items()}
    assert metrics["metrics/train.json"] == json.loads((publisher / "metrics/train.json").read_text())
    assert metrics["metrics/evaluate.json"]["offline"]["groups"]["gen"]["genz_style"]["n"] == 12

    run(mate, apply, s3_env, values)
    # every output, byte for byte, from the cache that `dvc exp pull` filled from the bucket
    paths = outputs(publisher)
    assert digests(mate, paths) == digests(publisher, paths)


def test_credentials_come_from_the_environment_only(
    published: Published, s3: S3Server, s3_env: dict[str, str]
) -> None:
    """The committed .dvc/config holds the endpoint and no credential, there is no config.local, DVC
    signed its requests with the environment's key, and the secret key is in no file of the publisher's
    repo (.git, .dvc, the DVC cache), origin, or DVC's own folders (the other tests search their clones
    and downloads too)."""
    committed = sh(published.origin, "git", "show", "main:.dvc/config")
    assert f"endpointurl = {s3.url}" in committed
    assert not any(key in committed for key in ("access_key_id", "secret_access_key", "session_token"))
    assert not (published.repo / ".dvc/config.local").exists()
    assert ACCESS_KEY in s3.access_keys
    dvc_dirs = [Path(s3_env[k]) for k in ("DVC_GLOBAL_CONFIG_DIR", "DVC_SITE_CACHE_DIR")]
    assert holding_the_secret(published.repo, published.origin, *[d for d in dvc_dirs if d.exists()]) == []
    assert any((published.repo / ".dvc/cache/files/md5").rglob("*.dir"))  # the cache was searched
