"""generate: the teacher rewrites each train/validation answer in Gen Z voice, keeping the facts; every
rewrite is cached as it finishes (a killed run resumes) and validated before it enters the dataset."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from genz_speak.config import GenerateConfig
from genz_speak.data.corpus import read_corpus
from genz_speak.data.dataset import SPLITS, dataset_row, read_split
from genz_speak.errors import StageFailed
from genz_speak.io import AppendLog, read_jsonl_tolerant, write_jsonl
from genz_speak.teachers import Teacher, TeacherRequest, TeacherResult, build_teacher
from genz_speak.teachers.base import rewrite_key, teacher_chats, teacher_name
from genz_speak.teachers.corpus import check_coverage
from genz_speak.teachers.validate import rejection_reason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Paths:
    data_dir: Path  # prepare's {train,validation,heldout}.jsonl
    corpus: Path  # the hand-written Gen Z corpus: the corpus teacher, and LLM teachers' few-shot exemplars
    out_dir: Path  # genz_dataset.jsonl, rejects.jsonl
    cache: Path  # every finished rewrite and failed row, appended as it finishes


@dataclass
class Progress:
    total: int
    done: int = 0
    failed: int = 0
    retries: int = 0
    tokens_out: int = 0
    started: float = field(default_factory=time.monotonic)
    last_log: float = 0.0

    def add(self, res: TeacherResult) -> None:
        self.done += 1
        self.failed += res.text is None
        self.retries += res.retries
        self.tokens_out += res.tokens_out

    def maybe_log(self, every_s: float = 30.0) -> None:
        now = time.monotonic()
        if now - self.last_log < every_s and self.done < self.total:
            return
        self.last_log = now
        rate = self.done / max(now - self.started, 1e-9)
        eta = (self.total - self.done) / rate if rate else float("inf")
        log.info(
            "generate: %d/%d rows, %.2f rows/s, ETA %.0fs, failures %d, retries %d",
            self.done, self.total, rate, eta, self.failed, self.retries,
        )  # fmt: skip


def _batched(items: list[TeacherRequest], n: int) -> Iterator[list[TeacherRequest]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _reason_counts(rejects: list[dict[str, Any]], top: int = 3) -> str:
    """The commonest reasons, each by its stem ("too long", "teacher: APITimeoutError: ...")."""
    stems = Counter(re.split(r" \(|: \[", r["reason"], maxsplit=1)[0][:120] for r in rejects)
    return "; ".join(f"{n} x {stem}" for stem, n in stems.most_common(top))


def _read_cache(cache_path: Path, wanted: set[str]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The cached rewrites of the wanted keys, and every record of them (failed tries included)."""
    cached: dict[str, dict[str, Any]] = {}
    history: list[dict[str, Any]] = []
    for rec in read_jsonl_tolerant(cache_path):
        if rec["key"] in wanted:
            history.append(rec)
            if "output" in rec:
                cached[rec["key"]] = rec
    return cached, history


@dataclass
class _Batch:
    """What one run of the teacher over the uncached rows left: failures by id, counts and time."""

    failures: dict[str, str]
    progress: Progress
    wall_s: float
    stats: dict[str, Any]


def _ask_teacher(
    cfg: GenerateConfig,
    teacher: Teacher,
    todo: list[TeacherRequest],
    keys: dict[str, str],
    cache_path: Path,
    cached: dict[str, dict[str, Any]],
    history: list[dict[str, Any]],
) -> _Batch:
    """Rewrite `todo`, appending each finished row to the cache (and to `cached` and `history`)."""
    run_id = uuid.uuid4().hex[:12]
    progress = Progress(total=len(todo))
    failures: dict[str, str] = {}
    start = time.monotonic()
    with AppendLog(cache_path) as cache, tqdm(total=len(todo), desc="generate", unit="row") as bar:
        # Local engines answer a whole batch at once, so batches bound what a kill can lose; the openai
        # teacher yields each row as its request finishes, so it takes every row and no slot waits on a batch.
        chunk = len(todo) if cfg.teacher == "openai" else cfg.batch_size
        for batch in _batched(todo, max(chunk, 1)):
            for res in teacher.rewrite(batch):
                progress.add(res)
                bar.update(1)
                progress.maybe_log()
                rec: dict[str, Any] = {"key": keys[res.id], "id": res.id}
                if res.text is None:
                    failures[res.id] = res.error or "teacher failed"
                    rec["error"] = failures[res.id]
                else:
                    rec |= {"output": res.text, "tokens_in": res.tokens_in, "tokens_out": res.tokens_out}
                    if res.teacher:
                        rec["teacher"] = res.teacher
                    cached[rec["key"]] = rec
                rec |= {"retries": res.retries, "faults": res.faults, "run": run_id}
                cache.write(rec)
                history.append(rec)
    stats = teacher.stats()
    teacher.close()
    return _Batch(failures, progress, time.monotonic() - start, stats)


def _validate(
    cfg: GenerateConfig,
    rows: list[tuple[str, dict[str, Any]]],
    rewrite_of: dict[str, dict[str, Any] | None],
    failures: dict[str, str],
    messages: dict[str, list[dict[str, str]]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The dataset rows whose rewrite passes every check, and the rejects with their reasons."""
    dataset, rejects = [], []
    for split, r in rows:
        rec = rewrite_of[r["id"]]
        if rec is None:
            rejects.append({"id": r["id"], "split": split, "reason": f"teacher: {failures.get(r['id'])}"})
            continue
        # The whole chat: a rewrite that copies a few-shot exemplar is an echo too.
        prompt = "\n".join(m["content"] for m in messages[r["id"]])
        reason = rejection_reason(r["response"], prompt, rec["output"], cfg.validation)
        if reason:
            rejects.append({"id": r["id"], "split": split, "reason": reason, "output": rec["output"]})
            continue
        teacher = rec.get("teacher") or teacher_name(cfg)
        dataset.append({**dataset_row(r, split, rec["output"].strip()), "teacher": teacher})
    return dataset, rejects


def _check_rejects(
    cfg: GenerateConfig,
    n_rows: int,
    dataset: list[Any],
    rejects: list[dict[str, Any]],
    cache_path: Path,
    n_cached: int,
) -> None:
    """More rows rejected than generate.max_reject_fraction, or none left: StageFailed, nothing written
    (the last good outputs stay; the rewrites and failures so far stay cached)."""
    if n_rows and len(rejects) / n_rows > cfg.max_reject_fraction:
        problem = f"over generate.max_reject_fraction={cfg.max_reject_fraction}"
    elif n_rows and not dataset:
        problem = "no row is left"
    else:
        return
    raise StageFailed(
        f"generate: {len(rejects)}/{n_rows} rows rejected ({problem}); outputs left as they were; "
        f"{cache_path} keeps the {n_cached} rewrites so far for the rerun; reasons: {_reason_counts(rejects)}"
    )


def rewrite_splits(
    cfg: GenerateConfig,
    splits: dict[str, list[dict[str, Any]]],
    teacher: Teacher,
    out_dir: Path,
    cache_path: Path,
    corpus: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Rewrite every row of `splits` (name -> rows), reusing cached rewrites; write dataset and rejects;
    return the metrics.

    Each finished row (its rewrite, or the teacher's error once it gave up, with the row's retries and
    faults) is appended to `cache_path` and flushed before the next, so a killed run resumes where it
    stopped and the metrics count the requests of every run that built the dataset. The dataset is
    written atomically at the end, in input order; a run with more rows rejected than
    `generate.max_reject_fraction`, or none left, raises StageFailed and writes nothing.
    """
    rows = [(name, r) for name, split_rows in splits.items() for r in split_rows]
    check_coverage(cfg, [r for _, r in rows], corpus)
    # Exemplars never come from the held-out questions: their answers are the evaluation's.
    heldout = frozenset(r["id"] for r in splits.get("heldout", []))
    messages = teacher_chats(cfg, [r for _, r in rows], corpus, heldout)
    rewrites = {r["id"]: r["genz"] for r in corpus}
    keys = {r["id"]: rewrite_key(cfg, r, messages[r["id"]], rewrites) for _, r in rows}
    cached, history = _read_cache(cache_path, set(keys.values()))
    todo = [TeacherRequest(r["id"], r, messages[r["id"]]) for _, r in rows if keys[r["id"]] not in cached]
    log.info(
        "generate: %d rows, %d cached, %d to rewrite with teacher %s",
        len(rows), len(rows) - len(todo), len(todo), teacher.name,
    )  # fmt: skip
    done = _ask_teacher(cfg, teacher, todo, keys, cache_path, cached, history)
    rewrite_of = {r["id"]: cached.get(keys[r["id"]]) for _, r in rows}
    dataset, rejects = _validate(cfg, rows, rewrite_of, done.failures, messages)
    _check_rejects(cfg, len(rows), dataset, rejects, cache_path, len(cached))
    faults: Counter[str] = Counter()
    for rec in history:
        faults.update(rec.get("faults", {}))
    write_jsonl(out_dir / "genz_dataset.jsonl", dataset)
    write_jsonl(out_dir / "rejects.jsonl", rejects)
    wall = done.wall_s
    return {
        "rows": len(dataset),
        "rejected": len(rejects),
        "rows_by_split": {s: sum(d["split"] == s for d in dataset) for s in splits},
        # This run:
        "teacher_calls": len(todo),
        "cache_hits": len(rows) - len(todo),
        "teacher_failures": len(done.failures),
        "wall_s": round(wall, 3),
        "rows_per_s": round(len(todo) / wall, 3) if wall > 0 and todo else None,
        "tokens_per_s": round(done.progress.tokens_out / wall, 1)
        if wall > 0 and done.progress.tokens_out
        else None,
        # Every run whose requests built this dataset (its rows' records in the cache), this one included:
        "runs": len({rec.get("run") for rec in history}),
        "requests": sum(rec.get("retries", 0) + 1 for rec in history),
        "retries": sum(rec.get("retries", 0) for rec in history),
        "faults": dict(faults),
        "tokens_in": sum(rec.get("tokens_in", 0) for rec in history),
        "tokens_out": sum(rec.get("tokens_out", 0) for rec in history),
        **done.stats,  # the openai teacher's endpoints: this run
    }


def run(cfg: GenerateConfig, paths: Paths) -> dict[str, Any]:
    """Rewrite the prepared splits with the configured teacher (held-out rewrites are the evaluation's
    "Train" reference, never trained on)."""
    splits = {name: read_split(paths.data_dir / f"{name}.jsonl") for name in SPLITS}
    corpus = read_corpus(paths.corpus)
    return rewrite_splits(cfg, splits, build_teacher(cfg, corpus), paths.out_dir, paths.cache, corpus)
