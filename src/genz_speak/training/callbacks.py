"""Trainer callbacks: DVCLive curves on the optimizer step, a step clock for steady throughput, and sample
answers to fixed questions as training goes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def live_callback(live_dir: Path, resume: bool = False) -> Any:
    from transformers.integrations import DVCLiveCallback

    from dvclive import Live

    class StepAlignedDVCLive(DVCLiveCallback):
        """transformers' DVCLive callback counts log calls as steps; align its step with the optimizer step
        instead, so train and eval curves share one x-axis."""

        def setup(self, args: Any, state: Any, model: Any) -> None:
            # The stage's params are in params.yaml and dvc.lock; all TrainingArguments would be noise.
            self._initialized = True

        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.live.step = state.global_step
            super().on_log(args, state, control, **kwargs)

    # Inside a DVC stage DVCLive must neither rewrite dvc.yaml nor create an experiment of its own.
    return StepAlignedDVCLive(
        live=Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=resume), log_model=False
    )


def step_clock(tokens: Callable[[], int]) -> Any:
    """A clock of the optimizer steps alone; `tokens()` is the count of tokens trained so far."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """Each optimizer step's time, from its start to its end (forward, backward and the optimizer; not
        the evaluation, sample answers, logging or checkpoints between steps), and the tokens it trained:
        throughput of training alone, and without the first steps' warm-up (kernels compiled and
        autotuned, memory pools grown), which a short run's overall figure includes."""

        def __init__(self) -> None:
            self.durations: list[float] = []
            self.tokens: list[int] = []  # trained in each step
            self._start = 0.0
            self._seen = 0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._start = time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.durations.append(time.monotonic() - self._start)
            seen = tokens()
            self.tokens.append(seen - self._seen)
            self._seen = seen

        def train_seconds(self) -> float:
            return sum(self.durations)

        def steady_tokens_per_s(self) -> float | None:
            """Tokens per second of training over the second half of the steps (Unsloth's kernels were
            seen still compiling and autotuning 15 steps in)."""
            half = len(self.durations) // 2
            seconds = sum(self.durations[half:])
            if half < 1 or seconds <= 0 or not sum(self.tokens):
                return None
            return sum(self.tokens[half:]) / seconds

    return StepClock()


def sample_callback(questions: list[dict[str, Any]], tokenizer: Any, path: Path, max_new_tokens: int) -> Any:
    from transformers import TrainerCallback

    from genz_speak.cache import AppendLog
    from genz_speak.data.chat import render, user_message

    class SampleAnswers(TrainerCallback):
        """Greedy answers to fixed validation questions before training and at each evaluation, appended to
        a JSONL (step, id, question, answer): drift towards a template shows before evaluate runs."""

        def _sample(self, step: int, model: Any) -> None:
            import torch

            was_training = model.training
            model.eval()
            side, tokenizer.padding_side = tokenizer.padding_side, "left"  # new tokens follow each prompt
            prompts = [render(tokenizer, [{"role": "user", "content": user_message(q)}]) for q in questions]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                model.device
            )
            with torch.inference_mode():
                out = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
                )
            tokenizer.padding_side = side
            model.train(was_training)
            with AppendLog(path) as log_file:
                for q, ids in zip(questions, out[:, enc["input_ids"].shape[1] :], strict=True):
                    answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
                    log_file.write(
                        {"step": step, "id": q["id"], "question": q["instruction"], "answer": answer}
                    )

        def on_train_begin(
            self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any
        ) -> None:
            if state.global_step == 0:
                self._sample(0, model)

        def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            self._sample(state.global_step, model)

    return SampleAnswers()
