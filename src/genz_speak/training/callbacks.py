"""Trainer callbacks: DVCLive curves on the optimizer step, a step clock for steady throughput, and sample
answers to fixed questions as training goes."""

from __future__ import annotations

import time
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


def step_clock() -> Any:
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        """The wall time at each optimizer step's end: throughput without the first steps' warm-up (kernels
        compiled and autotuned, memory pools grown), which a short run's overall tokens/s includes."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.monotonic())

        def steady_rate(self) -> float | None:
            """Optimizer steps per second over the second half of the run (Unsloth's kernels were seen
            still compiling and autotuning 15 steps in)."""
            half = len(self.times) // 2
            if half < 1:
                return None
            return (len(self.times) - half) / (self.times[-1] - self.times[half - 1])

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
