"""Fact consistency: does an answer keep the claims of its reference, or flip one in the same words?

A surface check sees a changed number or name; it cannot see east for west, a dropped "not", an item
filed under the other class or the wrong one of two options. This reads meaning: the judge's own chat
LM (the embedded SmolLM2-135M-Instruct, the same model whose early layers the style model reads) is asked
whether the answer agrees with the reference, and the margin of its "Yes" over its "No" logit at the
answer position is the signal. Nothing is fitted: the verdict comes from what the instruct model learned,
so it does not learn this project's own texts or their tics, and it carries to wordings and kinds of flip
no one wrote here.

What was tried first, and measured worse (BENCHMARKS.md, "The offline judge"): a cross-attention head
over frozen MiniLM token states, and MiniLM fine-tuned as a cross-encoder, both fitted on flips made by
rule (`judges/perturb.py`) from the corpus; they learned the rule-made flips and stayed at chance on the
calibration set's human-written ones. `benchmarks/consistency.py` measures this verifier on each kind of
rule-made flip and on the calibration set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

OPEN_CATEGORIES = frozenset({"creative_writing", "brainstorming"})  # one reference among many right answers
PROMPT = (
    "Fact A: {reference}\n\nStatement B: {answer}\n\nDoes statement B agree with fact A? Answer Yes or No."
)
MAX_TOKENS = 512  # the prompt's end (the question and the answer position) is what matters: cut from the left


class Verifier:
    """The chat LM `model` (with `tokenizer`) asked whether an answer agrees with its reference."""

    def __init__(self, model: Any, tokenizer: Any):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.yes, self.no = (tokenizer(w, add_special_tokens=False)["input_ids"][-1] for w in ("Yes", "No"))

    def margins(self, references: Sequence[str], answers: Sequence[str], batch_size: int = 8) -> np.ndarray:
        """logit(Yes) - logit(No) for each (reference, answer): above 0, the LM says they agree."""
        import torch

        prompts = []
        for reference, answer in zip(references, answers, strict=True):
            chat = [{"role": "user", "content": PROMPT.format(reference=reference, answer=answer)}]
            text = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            prompts.append(self.tokenizer(text, add_special_tokens=False)["input_ids"][-MAX_TOKENS:])
        out = np.zeros(len(prompts), dtype=np.float32)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # like lengths pad little
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            # Left padding: every prompt's last token, whose logits are read, sits in the last column.
            ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in idx])
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx])
            with torch.inference_mode():
                logits = (
                    self.model(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device))
                    .logits[:, -1]
                    .float()
                )
            out[idx] = (logits[:, self.yes] - logits[:, self.no]).cpu().numpy()
        return out
