"""Each stage's entry point, run as dvc.yaml runs it, on the tiny model: the output-file contract."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from genz_speak.io import read_jsonl
from tests.conftest import (
    DATA_FILES,
    ROOT,
    python_env,
    run_stage,
    served,
    server_stats,
    stage_command,
    tiny_params,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    d = tmp_path_factory.mktemp("stages")
    (d / "data").mkdir()
    for name in DATA_FILES:
        shutil.copy(ROOT / name, d / name)
    (d / "params.yaml").write_text(yaml.safe_dump(tiny_params(tiny_model)))
    return d


@pytest.fixture(scope="module")
def prepared(workdir: Path) -> Path:
    run_here(workdir, "prepare")
    return workdir


@pytest.fixture(scope="module")
def generated(prepared: Path) -> Path:
    run_here(prepared, "generate")
    return prepared


@pytest.fixture(scope="module")
def trained(generated: Path) -> Path:
    run_here(generated, "train")
    return generated


@pytest.fixture(scope="module")
def merged(trained: Path) -> Path:
    run_here(trained, "merge")
    return trained


@pytest.fixture(scope="module")
def evaluated(merged: Path) -> Path:
    run_here(merged, "evaluate")
    return merged


def run_here(d: Path, name: str, *args: Any, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`run_stage` with the shared cache of this module's workspace (its stages' caches, no one else's)."""
    kwargs.setdefault("env", python_env(d / ".genz-cache"))
    return run_stage(d, name, *args, **kwargs)


def metrics(d: Path, name: str) -> dict[str, Any]:
    return json.loads((d / "metrics" / f"{name}.json").read_text())


def run_info(d: Path, name: str) -> dict[str, Any]:
    """How the stage's run went (metrics/run/<stage>.json)."""
    return json.loads((d / "metrics/run" / f"{name}.json").read_text())


def test_prepare_contract(prepared: Path) -> None:
    splits = {n: read_jsonl(prepared / f"data/prepare/{n}.jsonl") for n in ("train", "validation", "heldout")}
    assert (len(splits["train"]), len(splits["validation"]), len(splits["heldout"])) == (100, 10, 10)
    for rows in splits.values():
        assert set(rows[0]) == {"id", "instruction", "context", "response", "category"}
    model = prepared / "models/prepare"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in model.iterdir()
    }
    assert metrics(prepared, "prepare")["rows"] == {"train": 100, "validation": 10, "heldout": 10}


def test_generate_contract_and_resume(generated: Path) -> None:
    rows = read_jsonl(generated / "data/generate/genz_dataset.jsonl")
    assert len(rows) == 120
    assert set(rows[0]) == {
        "id",
        "split",
        "category",
        "instruction",
        "context",
        "source_response",
        "output",
        "teacher",
    }
    assert {r["split"] for r in rows} == {"train", "validation", "heldout"}
    assert read_jsonl(generated / "data/generate/rejects.jsonl") == []
    m = metrics(generated, "generate")
    assert (m["rows"], m["rejected"], run_info(generated, "generate")["teacher_calls"]) == (120, 0, 120)
    # a rerun pays for nothing: every row comes from the cache
    before = (generated / "data/generate/genz_dataset.jsonl").read_bytes()
    run_here(generated, "generate")
    assert metrics(generated, "generate") == m  # what the dataset is, however the run went
    run = run_info(generated, "generate")
    assert (run["teacher_calls"], run["cache_hits"]) == (0, 120)
    assert (generated / "data/generate/genz_dataset.jsonl").read_bytes() == before


def test_train_contract(trained: Path) -> None:
    adapter = trained / "models/train"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in adapter.iterdir()
    }
    m = metrics(trained, "train")
    assert m["backend"] == "transformers" and m["device"] == "cpu" and m["steps"] == 2
    assert math.isfinite(m["final_loss"]) and m["final_loss"] > 0
    assert m["completion_tokens"] > 0 and m["rows_fully_masked"] == 0
    assert m["precision"] in ("fp32", "bf16") and 0.0 <= m["end_of_turn_prob"] <= 1.0
    run = run_info(trained, "train")
    assert run["tokens_per_s"] > 0 and run["peak_memory_mb"] > 0 and run["wall_s"] > 0
    assert 0 < run["train_s"] <= run["wall_s"] and run["kernel_path"].startswith(m["precision"])
    assert not {"wall_s", "versions", "tokens_per_s"} & set(m)  # results only: export depends on them
    assert (trained / "dvclive/train/plots/metrics/loss.tsv").is_file()
    assert not (trained / "dvc.yaml").exists()  # DVCLive must not write a dvc.yaml of its own
    # answers to the same 3 validation questions before training and at the evaluation (end of the epoch)
    samples = read_jsonl(trained / "dvclive/train/samples.jsonl")
    validation = [
        r["id"]
        for r in read_jsonl(trained / "data/generate/genz_dataset.jsonl")
        if r["split"] == "validation"
    ]
    assert [s["step"] for s in samples] == [0, 0, 0, 2, 2, 2]
    assert [s["id"] for s in samples] == validation[:3] * 2
    assert all(isinstance(s["answer"], str) for s in samples)


def test_merge_contract(merged: Path) -> None:
    files = {p.name for p in (merged / "models/merge").iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
    } <= files
    m = metrics(merged, "merge")
    assert m["passed"] and m["max_logit_diff"] <= m["tolerance"]
    assert m["dtype"] == "float16"
    assert json.loads((merged / "models/merge/config.json").read_text())["dtype"] == "float16"


def test_merge_fails_above_tolerance_and_writes_nothing(merged: Path, tmp_path: Path) -> None:
    params = yaml.safe_load((merged / "params.yaml").read_text())
    params["merge"]["tolerance"] = 1e-9
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = stage_command(
        "merge", str(tmp_path / "params.yaml"), out=tmp_path / "merged", metrics=tmp_path / "merge.json"
    )
    proc = subprocess.run(cmd, cwd=merged, env=python_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "merge.tolerance" in proc.stderr  # a failed check, not bad input (2)
    assert not (tmp_path / "merged").exists()


def test_evaluate_contract(evaluated: Path) -> None:
    scores = read_jsonl(evaluated / "data/evaluate/scores.jsonl")
    assert {s["group"] for s in scores} == {"base", "base_model", "gen", "train"}
    assert len(scores) == 12 * 4
    for s in scores:
        for c in ("genz_style", "helpfulness", "coherence"):
            assert 0.0 <= s["offline"][c] <= 1.0
        parts = {"relevance", "coverage", "facts", "repetition", "to_question", "cut_off"}
        assert set(s["offline"]["parts"]) == parts
    answers = read_jsonl(evaluated / "data/evaluate/answers.jsonl")
    assert len(answers) == 12 and {a["set"] for a in answers} == {"heldout", "validation"}
    m = metrics(evaluated, "evaluate")
    assert m["judges"] == ["offline"]
    off = m["offline"]
    assert set(off["groups"]) == {"base", "base_model", "gen", "train"}
    assert set(off["groups"]["gen"]) == {"genz_style", "helpfulness", "coherence"}
    assert off["groups"]["gen"]["genz_style"]["n"] == 12
    # the paired difference is over the 12 questions both models answered, its interval around its mean
    for d in off["paired"].values():
        assert d["n"] == 12 and d["ci_low"] <= d["mean"] <= d["ci_high"]
    # the style model never saw the evaluated questions' corpus rows, and it separates plain from Gen Z
    assert off["style_model"]["test_texts"] >= 2 * 12
    assert min(off["style_model"]["heldout_accuracy"].values()) >= 0.85
    # the teacher's rewrites read as Gen Z, the raw instructions do not
    assert off["groups"]["train"]["genz_style"]["mean"] > off["groups"]["base"]["genz_style"]["mean"] + 0.3
    surface = m["surface"]
    assert set(surface) == {"base_model", "gen", "train"} and surface["gen"]["n"] == 12
    assert 1 <= surface["gen"]["distinct_openings"] <= 12
    for group in ("base_model", "gen"):  # stopping and length against the teacher's, per model
        assert 0.0 <= surface[group]["ended_share"] <= 1.0 and surface[group]["words_vs_train"] >= 0
    answers = read_jsonl(evaluated / "data/evaluate/answers.jsonl")
    ended = sum(a["gen_ended"] for a in answers) / len(answers)
    assert surface["gen"]["ended_share"] == round(ended, 4)
    report = (evaluated / "metrics/report.md").read_text()
    assert "| Gen (fine-tuned answers) |" in report and "Gen − Base model, paired" in report


def test_outputs_get_the_mode_of_any_new_file(merged: Path) -> None:
    """Issue 15, defect 6: every output was 0600 whatever the umask (atomic_open's mkstemp, and
    safetensors' own writer for the model folders), unreadable to a team sharing a checkout or a cache."""
    umask = os.umask(0)
    os.umask(umask)
    wanted = 0o666 & ~umask
    files = [
        p
        for folder in ("data", "models", "metrics", "dvclive")
        for p in (merged / folder).rglob("*")
        if p.is_file() and not p.is_symlink()
    ]
    assert any(p.name == "model.safetensors" for p in files) and len(files) > 20
    modes = {str(p.relative_to(merged)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert {f: m for f, m in modes.items() if m != oct(wanted)} == {}


def test_plot_contract(evaluated: Path) -> None:
    run_here(evaluated, "plot")
    for name in (
        "score_distribution",
        "comparison_box",
        "criteria_bars",
        "paired_difference",
        "training_curves",
    ):
        png = evaluated / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 5000


def test_export_contract(evaluated: Path) -> None:
    from huggingface_hub import ModelCard

    merged_files = sorted((evaluated / "models/merge").iterdir())
    run_here(evaluated, "export")
    out = evaluated / "models/export"
    assert {p.name for p in out.iterdir()} == {
        "genz-speak-f16.gguf",
        "genz-speak-q8_0.gguf",
        "Modelfile",
        "README.md",
    }
    m = metrics(evaluated, "export")
    assert m["passed"] and m["check_prompts"] == 3 and m["chat_template_probes"] == 4
    f16, q8 = m["formats"]["f16"], m["formats"]["q8_0"]
    assert f16["check"] == q8["check"] == "llama.cpp" and m["converter"]["tokenizer_pre"] == "smollm"
    assert f16["max_logit_diff"] < 0.01 and f16["next_token_agreement"] == 1.0  # float16 weights, as merged
    assert 0.0 < q8["max_logit_diff"] <= q8["tolerance"] and q8["top1_agreement"] > 0.9
    assert f16["tokenizer_problems"] == q8["tokenizer_problems"] == []
    assert f16["bytes"] == (out / "genz-speak-f16.gguf").stat().st_size > q8["bytes"]
    assert m["modelfile"]["from"] == "genz-speak-q8_0.gguf" and "<|im_end|>" in m["modelfile"]["stops"]
    assert "FROM ./genz-speak-q8_0.gguf\nTEMPLATE" in (out / "Modelfile").read_text()
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "apache-2.0" and card.data.base_model is None  # the tiny model is a folder
    assert "| Gen (fine-tuned answers) |" in card.text and "(n=12)" in card.text
    assert "120 rows kept, 0 rejected" in card.text
    assert sorted((evaluated / "models/merge").iterdir()) == merged_files  # merge's output left alone


def test_export_fails_above_tolerance_and_writes_nothing(evaluated: Path, tmp_path: Path) -> None:
    params = yaml.safe_load((evaluated / "params.yaml").read_text())
    params["export"]["tolerance"]["q8_0"] = 1e-9
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = stage_command(
        "export", str(tmp_path / "params.yaml"), out=tmp_path / "export", metrics=tmp_path / "export.json"
    )
    proc = subprocess.run(cmd, cwd=evaluated, env=python_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "export.tolerance.q8_0" in proc.stderr
    assert not (tmp_path / "export").exists() and not list(tmp_path.glob("*.tmp"))
    assert not (tmp_path / "export.json").exists()


def evaluate_against(
    merged: Path, out: Path, url: str, judge: str, secret: str = "unused", **llm: Any
) -> subprocess.CompletedProcess[str]:
    """The evaluate stage with the LLM judge at `url`, its outputs and caches under `out`."""
    params = yaml.safe_load((merged / "params.yaml").read_text())
    params["evaluate"]["judge"] = judge
    params["evaluate"]["llm"].update(
        base_url=url, model="judge", api_key_env="GENZ_TEST_KEY", request_timeout=10, **llm
    )
    (out / "params.yaml").parent.mkdir(parents=True, exist_ok=True)
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = stage_command(
        "evaluate",
        str(out / "params.yaml"),
        out_dir=out / "eval",
        metrics=out / "m.json",
        run_info=out / "run.json",
        report=out / "r.md",
    )
    env = {**python_env(out / "cache"), "GENZ_TEST_KEY": secret}
    return subprocess.run(cmd, cwd=merged, env=env, capture_output=True, text=True, timeout=900)


def test_evaluate_with_both_judges_against_a_real_server(merged: Path, tmp_path: Path) -> None:
    secret = "sk-test-never-logged-0123456789"
    faults = ("--fault-first", "1", "--faults", "429,500,prose,badrange", "--retry-after", "0")
    with served("judge", *faults) as url:
        first = evaluate_against(merged, tmp_path, url, judge="both", secret=secret)
        assert first.returncode == 0, first.stderr[-3000:]
        m = json.loads((tmp_path / "m.json").read_text())
        stats = server_stats(url)
        usage = {**m["llm"]["usage"], **json.loads((tmp_path / "run.json").read_text())["llm"]}
        assert usage["judgements"] == 48 and usage["failed"] == 0
        # each distinct (question, answer) pair asked once, its first request faulted
        assert usage["requests"] == stats["requests"] == 2 * stats["answered"]
        assert sum(usage["faults"].values()) == stats["answered"]
        assert m["judges"] == ["offline", "llm"]
        assert set(m["agreement_spearman"]) == {"genz_style", "helpfulness", "coherence"}
        assert set(m["llm"]["groups"]["gen"]) == set(m["offline"]["groups"]["gen"])
        assert "48 judgements, 0 failed" in (tmp_path / "r.md").read_text()
        second = evaluate_against(merged, tmp_path, url, judge="both", secret=secret)
        assert second.returncode == 0, second.stderr[-3000:]
        assert server_stats(url)["requests"] == stats["requests"]  # cached: no request on the second run
        assert json.loads((tmp_path / "m.json").read_text()) == m  # results, however the run went
        run2 = json.loads((tmp_path / "run.json").read_text())["llm"]
        # No request this run; the requests that built these verdicts, all runs, still counted.
        assert (run2["judged"], run2["cached"], run2["requests"]) == (0, 48, stats["requests"])
    for text in (
        first.stdout,
        first.stderr,
        (tmp_path / "m.json").read_text(),
        (tmp_path / "eval/scores.jsonl").read_text(),
        (tmp_path / "cache/judge.jsonl").read_text(),
    ):
        assert secret not in text


def test_evaluate_fails_when_the_judge_fails(merged: Path, tmp_path: Path) -> None:
    """Issue 15, defect 3: with every judgement failed, evaluate exited 0 (every mean null, the report
    "–", one WARNING line). Now it fails with one line; partial failures over the threshold fail too, and
    the count is in the report."""
    with served("judge", "--fault-first", "99", "--faults", "503") as url:
        every = evaluate_against(merged, tmp_path / "every", url, judge="openai", max_retries=0)
    assert every.returncode == 1, every.stderr[-3000:]
    error = [line for line in every.stderr.splitlines() if " ERROR genz_speak.stage: " in line]
    # Every judgement failing alike stops the run early (issue 23, point 7), naming the error.
    assert len(error) == 1 and "evaluate: judge judge: the first 8 judgements all failed" in error[0]
    assert "InternalServerError 503: server error 503" in error[0] and "Traceback" not in every.stderr
    assert not (tmp_path / "every/m.json").exists() and not (tmp_path / "every/r.md").exists()

    # Every 4th distinct question-answer pair fails on each try.
    faults = ("--fault-first", "99", "--fault-every", "4", "--faults", "503")
    with served("judge", *faults) as url:
        some = evaluate_against(merged, tmp_path / "some", url, judge="openai", max_retries=0)
    assert some.returncode == 1 and "(over evaluate.llm.max_failed_fraction=0.1)" in some.stderr
    with served("judge", *faults) as url:
        lenient = evaluate_against(
            merged, tmp_path / "lenient", url, judge="openai", max_retries=0, max_failed_fraction=0.5
        )
    assert lenient.returncode == 0, lenient.stderr[-3000:]
    failed = json.loads((tmp_path / "lenient/m.json").read_text())["llm"]["usage"]["failed"]
    assert 0 < failed < 48
    assert f"48 judgements, {failed} failed" in (tmp_path / "lenient/r.md").read_text()


def test_qlora_4bit_train_then_merge_onto_16bit_base(generated: Path, tmp_path: Path) -> None:
    """The QLoRA path (bitsandbytes 4-bit base, 8-bit AdamW) on CPU, then a merge onto the 16-bit base."""
    pytest.importorskip("bitsandbytes")
    params = yaml.safe_load((generated / "params.yaml").read_text())
    params["train"].update(load_in_4bit=True, optimizer="adamw_8bit", max_steps=1)
    (generated / "params_qlora.yaml").write_text(yaml.safe_dump(params))
    run_here(
        generated,
        "train",
        "params_qlora.yaml",
        out=tmp_path / "adapter",
        live_dir=tmp_path / "live",
        metrics=tmp_path / "train.json",
    )
    m = json.loads((tmp_path / "train.json").read_text())
    assert m["load_in_4bit"] is True and m["steps"] == 1 and math.isfinite(m["final_loss"])
    run_here(
        generated,
        "merge",
        "params_qlora.yaml",
        adapter=tmp_path / "adapter",
        out=tmp_path / "merged",
        metrics=tmp_path / "merge.json",
    )
    cfg = json.loads((tmp_path / "merged/config.json").read_text())
    assert "quantization_config" not in cfg and cfg["dtype"] == "float16"
    assert json.loads((tmp_path / "merge.json").read_text())["passed"]


def test_packed_training_on_the_transformers_backend(generated: Path, tmp_path: Path) -> None:
    """train.packing (bfd) without flash-attention: the stage loads genz_varlen, trains packed sequences,
    evaluates on packed validation rows and samples answers with padded generation, and says which
    attention kernels ran."""
    params = yaml.safe_load((generated / "params.yaml").read_text())
    params["train"].update(packing=True, max_steps=2, batch_size=2)
    (generated / "params_packed.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "packed"
    run_here(
        generated,
        "train",
        "params_packed.yaml",
        out=out / "adapter",
        live_dir=out / "live",
        metrics=out / "train.json",
        work_dir=out / "work",
    )
    m = json.loads((out / "train.json").read_text())
    assert m["packing"] == "bfd" and m["padding_free"] is True and m["steps"] == 2
    # Packed forwards ran one SDPA call per example (no CUDA); generation ran plain sdpa.
    assert m["attention_kernel"].startswith("genz_varlen: sdpa x"), m["attention_kernel"]
    assert "sdpa per sequence x" in m["attention_kernel"]
    assert math.isfinite(m["final_loss"]) and m["eval_loss"] is not None
    assert len(read_jsonl(out / "live/samples.jsonl")) == 6


def test_data_parallel_train_matches_one_process(generated: Path, tmp_path: Path) -> None:
    """train.num_processes: 2 launches two DDP processes (gloo on CPU) through accelerate: the rows per
    optimizer step are split (micro-batch 2 x 2 processes = the 4 rows of batch_size 4), rank 0 alone
    writes, every rank ends with the same LoRA weights, and the run matches one process's run."""
    params = yaml.safe_load((generated / "params.yaml").read_text())
    params["train"].update(max_steps=4, batch_size=4, gradient_accumulation_steps=1)
    runs: dict[int, dict[str, Any]] = {}
    for processes in (1, 2):
        params["train"]["num_processes"] = processes
        (generated / f"params_dp{processes}.yaml").write_text(yaml.safe_dump(params))
        out = tmp_path / f"p{processes}"
        proc = run_here(
            generated,
            "train",
            f"params_dp{processes}.yaml",
            out=out / "adapter",
            live_dir=out / "live",
            metrics=out / "train.json",
            work_dir=out / "work",
        )
        loss = (out / "live/plots/metrics/loss.tsv").read_text().splitlines()[1:]
        runs[processes] = {
            "m": json.loads((out / "train.json").read_text()),
            "steps_logged": [int(line.split("\t")[-2]) for line in loss],
            "loss": [float(line.split("\t")[-1]) for line in loss],
            "files": sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()),
            "log": proc.stderr,
        }
    one, two = runs[1], runs[2]
    assert "train: 2 data-parallel processes" in two["log"] and "accelerate.commands.launch" in two["log"]
    assert (one["m"]["processes"], two["m"]["processes"]) == (1, 2)
    assert (two["m"]["micro_batch"], two["m"]["gradient_accumulation_steps"]) == (2, 1)
    assert one["m"]["rows_per_step"] == two["m"]["rows_per_step"] == 4
    assert one["m"]["steps"] == two["m"]["steps"] == 4
    assert one["m"]["tokens"] == two["m"]["tokens"]  # the same rows were trained on
    assert two["m"]["adapter_ranks_checked"] == 2
    # Rank 0 alone wrote: the same files as one process, each step logged once, no checkpoint folder left.
    assert one["files"] == two["files"] and two["steps_logged"] == [1, 2, 3, 4]
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-4)

    from safetensors.torch import load_file

    a = load_file(tmp_path / "p1/adapter/adapter_model.safetensors")
    b = load_file(tmp_path / "p2/adapter/adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_one_process_training_is_reproducible(generated: Path, tmp_path: Path) -> None:
    """Two runs of the same params give the same adapter bit for bit (LoRA's random init is seeded)."""
    digests = []
    for i in range(2):
        out = tmp_path / str(i)
        run_here(
            generated, "train", out=out / "adapter", live_dir=out / "live", metrics=out / "m.json",
            work_dir=out / "work",
        )  # fmt: skip
        digests.append(json.loads((out / "m.json").read_text())["adapter_sha256"])
    assert digests[0] == digests[1]


# Pinned from a run of this seeded configuration (tiny random Llama, seed 42, the locked CPU environment):
# a change in training or scoring moves them. Tolerances cover float reordering across CPUs, not changes.
GOLDEN_LOSSES = [10.8188, 10.8375]
GOLDEN_SCORES = {
    "base.genz_style": 0.0695,
    "base.helpfulness": 0.5606,
    "base.coherence": 0.7332,
    "train.genz_style": 0.5581,
    "train.helpfulness": 0.904,
    "train.coherence": 0.8539,
}


def test_golden_values(evaluated: Path) -> None:
    """The first training losses, and the offline judge's means over the texts that do not depend on the
    tiny model's generations (raw instructions, the corpus teacher's rewrites)."""
    losses = [float(r["loss"]) for r in read_jsonl_tsv(evaluated / "dvclive/train/plots/metrics/loss.tsv")]
    m = metrics(evaluated, "evaluate")["offline"]["groups"]
    scores = {f"{g}.{c}": m[g][c]["mean"] for g in ("base", "train") for c in m[g]}
    assert losses == pytest.approx(GOLDEN_LOSSES, abs=2e-3)
    assert scores == pytest.approx(GOLDEN_SCORES, abs=2e-3)


# Pinned likewise: the tiny model trained 8 steps on one fixed batch of two rows (constant lr 1e-2).
GOLDEN_LEARNING = {"first": 10.8317, "drop": 0.8898}


def test_golden_learning(tiny_model: Path, tmp_path: Path) -> None:
    """The trainer learns, not only reproduces: on one fixed batch the loss falls by a pinned amount (a
    broken loss mask, optimizer or LoRA wiring leaves it flat or moves it elsewhere)."""
    from dataclasses import replace

    from datasets import Dataset

    from genz_speak.config import TrainConfig
    from genz_speak.data.chat import prompt_completion
    from genz_speak.training import backends
    from genz_speak.training.sft import build_trainer

    rows = [
        {"instruction": "What is the capital of France?", "context": "", "output": "paris, no contest 🇫🇷"},
        {"instruction": "Name a primary colour.", "context": "", "output": "red is one, fr"},
    ]
    cfg = replace(
        TrainConfig(),
        backend="transformers",
        batch_size=2,
        max_steps=8,
        learning_rate=1e-2,
        cpu_precision="fp32",  # pinned: a CPU with bf16 instructions would train in bf16 under auto
        lr_scheduler="constant",
        warmup_ratio=0.0,
        logging_steps=1,
        max_seq_length=128,
        cpu_threads=1,
    )
    prepared = backends.load("transformers", tiny_model, cfg)
    data = Dataset.from_list([prompt_completion(r) for r in rows])
    trainer, _, _ = build_trainer(cfg, "transformers", prepared, data, None, tmp_path, [])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 8
    assert losses[0] == pytest.approx(GOLDEN_LEARNING["first"], abs=2e-3)
    assert losses[0] - losses[-1] == pytest.approx(GOLDEN_LEARNING["drop"], abs=2e-2)


def read_jsonl_tsv(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_outputs_do_not_depend_on_the_environment(merged: Path, tmp_path: Path) -> None:
    """Issue 23, point 12: tokenizer_config.json recorded `local_files_only` true or false with
    HF_HUB_OFFLINE, so prepare, train and merge hashed differently with identical weights and DVC reran
    everything downstream. The same stages with HF_HUB_OFFLINE=0 write byte-identical outputs."""
    shutil.copytree(merged / "data", tmp_path / "data", ignore=shutil.ignore_patterns("generate", "evaluate"))
    shutil.copytree(merged / "data/generate", tmp_path / "data/generate")
    shutil.copy(merged / "params.yaml", tmp_path / "params.yaml")
    env = {**python_env(tmp_path / ".genz-cache"), "HF_HUB_OFFLINE": "0"}
    for stage in ("prepare", "train", "merge"):
        run_here(tmp_path, stage, env=env)
    for folder in ("data/prepare", "models/prepare", "models/train", "models/merge"):
        files = sorted(p.relative_to(merged) for p in (merged / folder).rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(tmp_path) for p in (tmp_path / folder).rglob("*") if p.is_file())
        for f in files:
            assert (merged / f).read_bytes() == (tmp_path / f).read_bytes(), f
    assert "local_files_only" not in (tmp_path / "models/merge/tokenizer_config.json").read_text()
    for name in ("prepare", "train", "merge"):
        assert metrics(tmp_path, name) == metrics(merged, name), name
