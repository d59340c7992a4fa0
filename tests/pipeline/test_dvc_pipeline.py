"""The DVC pipeline for real: a git + DVC repo in a temp dir with the tiny config (the `template` and
`repo` fixtures of tests/pipeline/conftest.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import python_env, served, server_stats
from tests.pipeline.dvcrepo import STAGES, ran, sh

pytestmark = pytest.mark.slow


def set_param(repo: Path, section: str, key: str, value: object) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_repro_outputs_and_lock(repo: Path) -> None:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert list(lock["stages"]) == STAGES
    for name in (
        "models/prepare",
        "models/train",
        "models/merge",
        "models/export",
        "data/generate/genz_dataset.jsonl",
    ):
        assert (repo / name).exists()
        assert sh(repo, "git", "check-ignore", name).strip() == name  # DVC-cached, not in git
    tracked = sh(repo, "git", "ls-files").split()
    assert "metrics/evaluate.json" in tracked and "dvclive/train/plots/metrics/loss.tsv" in tracked
    assert "metrics/export.json" in tracked
    assert not any(t.startswith("models/") and not t.endswith(".gitignore") for t in tracked)
    assert (
        json.loads((repo / "metrics/evaluate.json").read_text())["offline"]["groups"]["gen"]["genz_style"][
            "n"
        ]
        == 12
    )


def test_the_declared_plots_render_with_their_templates(repo: Path) -> None:
    """`dvc plots show --json` draws dvc.yaml's plots from evaluate's data files through the templates in
    .dvc/plots (what `dvc plots diff` overlays across revisions)."""
    data = json.loads(sh(repo, "dvc", "plots", "show", "--json"))["data"]
    titles = (
        "Training loss",
        "Mean score per group (95% interval)",
        "Fine-tuning effect: Gen - Base model, paired (95% interval)",
        "Score distribution per group",
    )
    for title in titles:
        assert data[title][0]["type"] == "vega", title
        assert data[title][0]["content"]["$schema"].startswith("https://vega.github.io/schema/vega-lite")
    values = {title: data[title][0]["content"]["data"]["values"] for title in titles}
    means = values["Mean score per group (95% interval)"]
    assert {(v["group"], v["criterion"]) for v in means} >= {
        (g, c)
        for g in ("base", "base_model", "gen", "train")
        for c in ("genz_style", "helpfulness", "coherence")
    }
    assert all(float(v["ci_low"]) <= float(v["mean"]) <= float(v["ci_high"]) for v in means)
    paired = values["Fine-tuning effect: Gen - Base model, paired (95% interval)"]
    assert sorted(v["criterion"] for v in paired) == ["coherence", "genz_style", "helpfulness"]
    assert len(values["Score distribution per group"]) == 4 * 3 * 12  # groups x criteria x answers
    assert values["Training loss"]


def test_second_repro_does_nothing(repo: Path) -> None:
    out = sh(repo, "dvc", "repro")
    assert ran(out) == []
    assert "Data and pipelines are up to date" in sh(repo, "dvc", "status")


def test_operational_keys_rerun_nothing(repo: Path) -> None:
    """Threads, concurrency, timeouts and resume change how a stage runs, not what it writes."""
    set_param(repo, "train", "cpu_threads", 1)
    set_param(repo, "train", "resume", True)
    set_param(repo, "generate", "concurrency", 2)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["llm"]["request_timeout"] = 30.0
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(sh(repo, "dvc", "repro")) == []
    assert "Data and pipelines are up to date" in sh(repo, "dvc", "status")


def test_evaluate_param_reruns_only_evaluate_plot_and_export(repo: Path) -> None:
    set_param(repo, "evaluate", "seed", 1)  # new intervals: the metrics change, so the plots and card rerun
    assert ran(sh(repo, "dvc", "repro")) == ["evaluate", "plot", "export"]


def test_export_param_reruns_only_export(repo: Path) -> None:
    set_param(repo, "export", "num_ctx", 4096)
    assert ran(sh(repo, "dvc", "repro")) == ["export"]
    assert "PARAMETER num_ctx 4096" in (repo / "models/export/Modelfile").read_text()


def test_learning_rate_reruns_train_onward(repo: Path) -> None:
    set_param(repo, "train", "learning_rate", 0.002)
    assert ran(sh(repo, "dvc", "repro")) == ["train", "merge", "evaluate", "plot", "export"]


def test_exp_run_twice_show_and_metrics_diff(repo: Path) -> None:
    for lr in (0.003, 0.005):
        out = sh(repo, "dvc", "exp", "run", "-S", f"train.learning_rate={lr}")
        assert ran(out) == ["train", "merge", "evaluate", "plot", "export"]
    exps = json.loads(sh(repo, "dvc", "exp", "show", "--json"))
    runs = [r["data"] for rev in exps for e in (rev.get("experiments") or []) for r in e["revs"]]
    assert sorted(r["params"]["params.yaml"]["data"]["train"]["learning_rate"] for r in runs) == [
        0.003,
        0.005,
    ]
    for r in runs:
        assert r["metrics"]["metrics/train.json"]["data"]["eval_loss"] > 0
        assert (
            r["metrics"]["metrics/evaluate.json"]["data"]["offline"]["groups"]["gen"]["genz_style"]["n"] == 12
        )
    # the last experiment's results sit in the workspace: diff them against the committed baseline
    diff = json.loads(sh(repo, "dvc", "metrics", "diff", "--json"))
    assert "eval_loss" in diff["metrics/train.json"]
    lr = json.loads(sh(repo, "dvc", "params", "diff", "--json"))["params.yaml"]["train.learning_rate"]
    assert (lr["old"], lr["new"]) == (0.001, 0.005)


def test_param_flipped_back_restores_from_run_cache(repo: Path) -> None:
    set_param(repo, "evaluate", "seed", 1)
    assert ran(sh(repo, "dvc", "repro")) == ["evaluate", "plot", "export"]
    set_param(repo, "evaluate", "seed", 0)  # the committed value
    out = sh(repo, "dvc", "repro")
    assert ran(out) == []
    assert "Stage 'evaluate' is cached - skipping run, checking out outputs" in out
    assert "Data and pipelines are up to date" in sh(repo, "dvc", "status")


def test_push_clone_pull_roundtrip(repo: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    sh(repo, "dvc", "remote", "add", "--local", "-d", "storage", str(remote))
    sh(repo, "dvc", "push")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    sh(clone, "dvc", "remote", "add", "--local", "-d", "storage", str(remote))
    sh(clone, "dvc", "pull")
    assert "Data and pipelines are up to date" in sh(clone, "dvc", "status")
    assert ran(sh(clone, "dvc", "repro")) == []
    for folder in ("models/merge", "models/train", "models/prepare", "models/export"):
        files = sorted(p.relative_to(repo) for p in (repo / folder).rglob("*") if p.is_file())
        assert files
        for f in files:
            assert (clone / f).read_bytes() == (repo / f).read_bytes(), f
    assert (clone / "data/generate/genz_dataset.jsonl").read_bytes() == (
        repo / "data/generate/genz_dataset.jsonl"
    ).read_bytes()


def test_a_sentinel_key_never_lands_in_the_repo(repo: Path) -> None:
    """The openai teacher and the LLM judge both use a key from the environment; after `dvc repro` no file
    under the repo (params, dvc.lock, metrics, plots, dvclive, models, caches, .git, .dvc) holds it."""
    import os
    import uuid

    sentinel = f"sk-SENTINEL-{uuid.uuid4().hex}"
    # Both servers refuse (401) any request without the sentinel key.
    env = {**python_env(), "GENZ_SENTINEL_KEY": sentinel}
    keyed = ("--api-key-env", "GENZ_SENTINEL_KEY")
    with served("rules", *keyed, env=env) as teacher_url, served("judge", *keyed, env=env) as judge_url:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["generate"].update(
            teacher="openai", model="teacher", base_url=teacher_url, api_key_env="GENZ_SENTINEL_KEY"
        )
        params["evaluate"]["judge"] = "both"
        params["evaluate"]["llm"].update(model="judge", base_url=judge_url, api_key_env="GENZ_SENTINEL_KEY")
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        proc = subprocess.run(
            ["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=1200
        )
        seen = [server_stats(teacher_url), server_stats(judge_url)]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert ran(proc.stdout) == STAGES[1:]
    # the key was really used: every request carried it, none was refused
    assert all(s["answered"] == s["requests"] > 0 and "unauthorized" not in s for s in seen), seen
    assert sentinel not in proc.stdout + proc.stderr
    cache = Path(os.environ["GENZ_SPEAK_CACHE"])  # the shared caches, outside the repo
    files = [p for d in (repo, cache) for p in d.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(files) > 50 and any(".dvc/cache" in str(p) for p in files)
    assert (cache / "generate.jsonl").is_file() and (cache / "judge.jsonl").is_file()
    assert [p for p in files if sentinel.encode() in p.read_bytes()] == []
    assert os.environ.get("GENZ_SENTINEL_KEY") is None


def test_what_a_failed_stage_leaves_under_repro(repo: Path, own_cache: Path) -> None:
    """README's "When things go wrong", checked (issue 15, defect 9: it said a stage stopped by bad params
    leaves its outputs untouched; under `dvc repro` DVC has removed them before the stage starts)."""
    committed = (repo / "params.yaml").read_text()
    # A key given twice: DVC refuses the file before running anything, so nothing is removed.
    (repo / "params.yaml").write_text(committed + "plot:\n  dpi: 99\n")
    refused = subprocess.run(["dvc", "repro"], cwd=repo, env=python_env(), capture_output=True, text=True)
    assert refused.returncode != 0 and "duplicate key" in refused.stderr
    assert (repo / "metrics/generate.json").is_file()

    (repo / "params.yaml").write_text(committed)
    sh(repo, "dvc", "repro", "-f", "-s", "generate")  # fills this test's shared cache
    sh(repo, "git", "commit", "-qam", "generate again")  # the last good run, committed as a user would
    set_param(repo, "generate", "batch_size", 0)
    failed = subprocess.run(
        ["dvc", "repro"], cwd=repo, env=python_env(), capture_output=True, text=True, timeout=600
    )
    assert failed.returncode != 0
    assert "params.yaml: generate.batch_size: Input should be greater than 0" in failed.stderr
    # DVC removed the failed stage's outputs, cached or not, before its command ran ...
    removed = ("data/generate/genz_dataset.jsonl", "data/generate/rejects.jsonl", "metrics/generate.json",
               "metrics/run/generate.json")  # fmt: skip
    for out in removed:
        assert not (repo / out).exists(), out
    # ... and nothing else: the shared caches and the other stages' outputs are all there.
    assert (own_cache / "generate.jsonl").is_file()
    assert (repo / "models/train").is_dir() and (repo / "metrics/evaluate.json").is_file()

    (repo / "params.yaml").write_text(committed)
    sh(repo, "dvc", "checkout", "generate")  # the DVC-cached outputs dvc.lock records come back
    assert (repo / "data/generate/genz_dataset.jsonl").is_file()
    assert not (repo / "metrics/generate.json").exists()  # cache: false, so not in DVC's cache ...
    # ... but committed to git
    sh(repo, "git", "checkout", "--", "metrics/generate.json", "metrics/run/generate.json")
    assert "Data and pipelines are up to date" in sh(repo, "dvc", "status")


def test_pull_from_a_remote_nobody_pushed_to_brings_nothing(repo: Path, tmp_path: Path) -> None:
    """`dvc pull` then `dvc repro` has nothing to do only where the committed outputs were pushed to the
    remote the clone points at (README, "DVC workflows")."""
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    sh(clone, "dvc", "remote", "add", "--local", "-d", "storage", str(tmp_path / "empty-remote"))
    pull = subprocess.run(["dvc", "pull"], cwd=clone, env=python_env(), capture_output=True, text=True)
    assert pull.returncode != 0 and not (clone / "models/merge").exists()
    assert "Data and pipelines are up to date" not in sh(clone, "dvc", "status")


def test_a_forced_rerun_with_the_same_result_reruns_nothing_downstream(repo: Path) -> None:
    """Issue 23, point 12: export reran after `dvc repro -f generate` because metrics/generate.json, one
    of its dependencies, held wall-clock time. How a run went now goes to metrics/run/ (no stage reads
    it), so the same dataset leaves everything downstream up to date."""
    before = (repo / "metrics/generate.json").read_bytes()
    # -s: `-f` alone forces the stages before generate too (DVC 3).
    assert ran(sh(repo, "dvc", "repro", "-f", "-s", "generate")) == ["generate"]
    assert (repo / "metrics/generate.json").read_bytes() == before
    assert json.loads((repo / "metrics/run/generate.json").read_text())["wall_s"] >= 0
    assert ran(sh(repo, "dvc", "repro")) == []


def test_experiments_share_the_teachers_cache(repo: Path) -> None:
    """Issue 23, point 9: a queued or temporary experiment ran in a workspace without .cache and paid for
    every teacher request again. The rewrites are in the shared cache ($GENZ_SPEAK_CACHE), which every
    workspace reads: an experiment that reruns generate with the same requests sends none."""
    with served("rules") as url:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["generate"].update(teacher="openai", model="rules", base_url=url)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        sh(repo, "git", "commit", "-qam", "openai teacher")
        assert ran(sh(repo, "dvc", "repro", "generate")) == ["generate"]
        paid = server_stats(url)["requests"]
        out = sh(repo, "dvc", "exp", "run", "--temp", "-S", "generate.validation.min_chars=9", "generate")
        assert "generate" in ran(out)
        assert server_stats(url)["requests"] == paid > 0  # the experiment's rewrites all came from the cache
