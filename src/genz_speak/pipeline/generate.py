"""generate: the teacher rewrites each train/validation answer in Gen Z voice, keeping the facts; every
rewrite is cached as it finishes (a killed run resumes) and validated before it enters the dataset."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from genz_speak.cache import AppendLog, cache_root, read_jsonl_tolerant
from genz_speak.config import GenerateConfig
from genz_speak.data.corpus import read_corpus
from genz_speak.data.dataset import SPLITS, dataset_row, read_split
from genz_speak.endpoints import EarlyStop
from genz_speak.errors import StageFailed
from genz_speak.io import write_jsonl
from genz_speak.llm_client import strip_reasoning
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


def _stem(reason: str) -> str:
    """A reason without its particulars ("too long", "teacher: APITimeoutError: ...")."""
    return re.split(r" \(|: \[", reason, maxsplit=1)[0][:120]


def _reason_counts(rejects: list[dict[str, Any]], top: int = 3) -> str:
    """The commonest reasons, each by its stem."""
    stems = Counter(_stem(r["reason"]) for r in rejects)
    return "; ".join(f"{n} x {stem}" for stem, n in stems.most_common(top))


def _read_cache(
    cache_path: Path, wanted: set[str], endpoints: frozenset[str]
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The cached rewrites of the wanted keys written by one of `endpoints`, and every record of them from
    those endpoints (requests sent, failed rows): what built this dataset. A rewrite another server wrote
    (a dry run's stand-in, another model behind the same name) is never reused."""
    cached: dict[str, dict[str, Any]] = {}
    history: list[dict[str, Any]] = []
    for rec in read_jsonl_tolerant(cache_path):
        if rec.get("key") in wanted and rec.get("endpoint") in endpoints:
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


class _CacheJournal:
    """The teacher's journal (`teachers.base.Journal`): every request sent and every finished row goes into
    the cache log as it happens, from whichever thread, and into this run's counts."""

    def __init__(
        self,
        cache: AppendLog,
        keys: dict[str, str],
        cached: dict[str, dict[str, Any]],
        history: list[dict[str, Any]],
        early_stop: EarlyStop | None,
        bar: Any,
    ):
        self.cache, self.keys, self.cached, self.history = cache, keys, cached, history
        self.early_stop, self.bar = early_stop, bar
        self.run_id = uuid.uuid4().hex[:12]
        self.progress = Progress(total=bar.total)
        self.failures: dict[str, str] = {}
        self._lock = threading.Lock()

    def sent(self, id: str, endpoint: str) -> None:
        rec = {"key": self.keys[id], "id": id, "sent": 1, "endpoint": endpoint, "run": self.run_id}
        # Not fsynced: the kernel keeps it if the process is killed, and a request is not worth a sync.
        self.cache.write(rec, sync=False)
        with self._lock:
            self.history.append(rec)

    def done(self, res: TeacherResult) -> None:
        rec: dict[str, Any] = {"key": self.keys[res.id], "id": res.id, "endpoint": res.endpoint}
        if res.text is None:
            rec["error"] = res.error or "teacher failed"
        else:
            rec |= {"output": res.text, "finish_reason": res.finish_reason}
            rec |= {"tokens_in": res.tokens_in, "tokens_out": res.tokens_out}
            if res.teacher:
                rec["teacher"] = res.teacher
        rec |= {"retries": res.retries, "faults": res.faults, "run": self.run_id}
        self.cache.write(rec)
        with self._lock:
            self.history.append(rec)
            if res.text is None:
                self.failures[res.id] = rec["error"]
            else:
                self.cached[rec["key"]] = rec
            self.progress.add(res)
            self.bar.update(1)
            self.progress.maybe_log()
        if self.early_stop is not None:
            self.early_stop.observe(rec.get("error"))


def _ask_teacher(
    cfg: GenerateConfig,
    teacher: Teacher,
    todo: list[TeacherRequest],
    keys: dict[str, str],
    cache_path: Path,
    cached: dict[str, dict[str, Any]],
    history: list[dict[str, Any]],
) -> _Batch:
    """Rewrite `todo`, appending each request and each finished row to the cache (and to `cached` and
    `history`)."""
    start = time.monotonic()
    # A server failing every request the same way stops the run early (LLM teachers over HTTP only).
    window = max(8, 2 * cfg.concurrency * max(len(cfg.base_urls), 1))
    early = EarlyStop(window, f"generate: {teacher.name}") if cfg.teacher == "openai" else None
    with AppendLog(cache_path) as cache, tqdm(total=len(todo), desc="generate", unit="row") as bar:
        journal = _CacheJournal(cache, keys, cached, history, early, bar)
        # Local engines answer a whole batch at once, so batches bound what a kill can lose; the openai
        # teacher records each row as its request finishes: it takes every row, and no slot waits on a batch.
        chunk = len(todo) if cfg.teacher == "openai" else cfg.batch_size
        for batch in _batched(todo, max(chunk, 1)):
            teacher.rewrite(batch, journal)
    stats = teacher.stats()
    teacher.close()
    return _Batch(journal.failures, journal.progress, time.monotonic() - start, stats)


def _validate(
    cfg: GenerateConfig,
    rows: list[tuple[str, dict[str, Any]]],
    rewrite_of: dict[str, dict[str, Any] | None],
    failures: dict[str, str],
    messages: dict[str, list[dict[str, str]]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The dataset rows whose rewrite passes every check (reasoning blocks stripped first), and the rejects
    with their reasons."""
    dataset, rejects = [], []
    for split, r in rows:
        rec = rewrite_of[r["id"]]
        if rec is None:
            rejects.append({"id": r["id"], "split": split, "reason": f"teacher: {failures.get(r['id'])}"})
            continue
        output, reason = strip_reasoning(rec["output"])
        if reason is None:
            # The whole chat: a rewrite that copies a few-shot exemplar is an echo too.
            prompt = "\n".join(m["content"] for m in messages[r["id"]])
            reason = rejection_reason(r["response"], prompt, output, cfg.validation, rec.get("finish_reason"))
        if reason:
            rejects.append({"id": r["id"], "split": split, "reason": reason, "output": rec["output"]})
            continue
        teacher = rec.get("teacher") or teacher_name(cfg)
        dataset.append({**dataset_row(r, split, output), "teacher": teacher})
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
    """Rewrite every row of `splits` (name -> rows), reusing cached rewrites of this teacher's endpoints;
    write dataset and rejects; return the metrics (how the run went under "run").

    Each request is appended to `cache_path` as it is sent and each finished row (its rewrite, or the
    teacher's error once it gave up) as it finishes, so a killed run resumes where it stopped and the
    counts cover every request of every run that built the dataset. The dataset is written atomically at
    the end, in input order; a run with more rows rejected than `generate.max_reject_fraction`, or none
    left, raises StageFailed and writes nothing.
    """
    rows = [(name, r) for name, split_rows in splits.items() for r in split_rows]
    check_coverage(cfg, [r for _, r in rows], corpus)
    # Exemplars never come from the held-out questions: their answers are the evaluation's.
    heldout = frozenset(r["id"] for r in splits.get("heldout", []))
    messages = teacher_chats(cfg, [r for _, r in rows], corpus, heldout)
    rewrites = {r["id"]: r["genz"] for r in corpus}
    keys = {r["id"]: rewrite_key(cfg, r, messages[r["id"]], rewrites) for _, r in rows}
    cached, history = _read_cache(cache_path, set(keys.values()), teacher.endpoints())
    todo = [TeacherRequest(r["id"], r, messages[r["id"]]) for _, r in rows if keys[r["id"]] not in cached]
    log.info(
        "generate: %d rows, %d cached, %d to rewrite with teacher %s",
        len(rows), len(rows) - len(todo), len(todo), teacher.name,
    )  # fmt: skip
    done = _ask_teacher(cfg, teacher, todo, keys, cache_path, cached, history)
    rewrite_of = {r["id"]: cached.get(keys[r["id"]]) for _, r in rows}
    dataset, rejects = _validate(cfg, rows, rewrite_of, done.failures, messages)
    _check_rejects(cfg, len(rows), dataset, rejects, cache_path, len(cached))
    write_jsonl(out_dir / "genz_dataset.jsonl", dataset)
    write_jsonl(out_dir / "rejects.jsonl", rejects)
    return {
        # What the dataset is: the same rows give the same numbers, however the run went.
        "rows": len(dataset),
        "rejected": len(rejects),
        "rows_by_split": {s: sum(d["split"] == s for d in dataset) for s in splits},
        "rejected_by_reason": dict(Counter(_stem(r["reason"]) for r in rejects)),
        "run": _run_info(todo, len(rows), done, history),
    }


def _run_info(
    todo: list[TeacherRequest], n_rows: int, done: _Batch, history: list[dict[str, Any]]
) -> dict[str, Any]:
    """How the run went (metrics/run/generate.json): nothing downstream depends on these."""
    faults: Counter[str] = Counter()
    for rec in history:
        faults.update(rec.get("faults", {}))
    results = [rec for rec in history if "sent" not in rec]
    wall = done.wall_s
    return {
        # This run:
        "teacher_calls": len(todo),
        "cache_hits": n_rows - len(todo),
        "teacher_failures": len(done.failures),
        "wall_s": round(wall, 3),
        "rows_per_s": round(len(todo) / wall, 3) if wall > 0 and todo else None,
        "tokens_per_s": round(done.progress.tokens_out / wall, 1)
        if wall > 0 and done.progress.tokens_out
        else None,
        # Every run whose requests built this dataset (its rows' records in the cache), this one included;
        # a request counts when it is sent, so those in flight when a run was killed count too:
        "runs": len({rec.get("run") for rec in history}),
        "requests": sum(1 for rec in history if "sent" in rec),
        "retries": sum(rec.get("retries", 0) for rec in results),
        "faults": dict(faults),
        "tokens_in": sum(rec.get("tokens_in", 0) for rec in results),
        "tokens_out": sum(rec.get("tokens_out", 0) for rec in results),
        **done.stats,  # the openai teacher's endpoints: this run
    }


def run(cfg: GenerateConfig, paths: Paths) -> dict[str, Any]:
    """Rewrite the prepared splits with the configured teacher (held-out rewrites are the evaluation's
    "Train" reference, never trained on), through the shared cache (`cache.cache_root`)."""
    splits = {name: read_split(paths.data_dir / f"{name}.jsonl") for name in SPLITS}
    corpus = read_corpus(paths.corpus)
    teacher = build_teacher(cfg, corpus)
    return rewrite_splits(cfg, splits, teacher, paths.out_dir, cache_root() / "generate.jsonl", corpus)
