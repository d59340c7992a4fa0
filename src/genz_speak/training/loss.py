"""The completion-only loss, computed only where it is trained, and nothing for logs nobody reads.

TRL 1.16's SFTTrainer computes its loss through a fused LM head that, on devices without Triton (the CPU),
projects every position of the batch (prompt and padding included) through the 49k-token vocabulary,
computes each position's entropy and top-1 accuracy for its logs, and runs the head's gradient GEMMs in
fp32. On the CPU that was most of a step beyond the model itself (the profile in BENCHMARKS.md). Here the
head projects only the positions whose next token is trained (the completion: about 44% of the embedded
data's tokens), in the autocast dtype, with the softmax in fp32, fused with its own gradient (`FusedNLL`):
chunks of CHUNK positions, no logits kept for the backward pass, so memory stays bounded at long rows.

Evaluation also records, per validation row, the probability the model gives the end-of-turn token where
the answer ends (teacher-forced): whether the model learned to stop (`eval_end_of_turn_prob`).
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from functools import cache
from typing import Any

CHUNK = 1024  # positions per LM-head chunk: 1024 x 49,152 fp32 logits are 200 MB
# Config keys that change logits beyond the LM head (TRL's fused head applies them; this loss does not).
_SCALED = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
)


@dataclass
class CompletionOutput:
    """Per trained position: the negative log-likelihood of its label, and the label."""

    nll: Any
    targets: Any
    logits: Any = None  # the Trainer's prediction step reads it; never built here


def completion_nll(hidden: Any, weight: Any, targets: Any, chunk: int = CHUNK) -> Any:
    """-log p(target) of each row of `hidden` (n, H) under the frozen LM head `weight` (V, H), in the
    autocast dtype where autocast is on; the softmax in fp32. A head that trains (its weight requires
    grad) takes the plain path: the fused one gives no gradient for the weight."""
    import torch.nn.functional as F

    if weight.requires_grad:
        return F.cross_entropy(F.linear(hidden, weight), targets, reduction="none")
    return _fused_nll_class().apply(hidden, weight, targets, chunk)


@cache  # one class: torch is imported only once training runs
def _fused_nll_class() -> Any:
    import torch

    class FusedNLL(torch.autograd.Function):
        """The LM head and its cross-entropy in one pass: each chunk's logits are built once, turned into
        the loss and, when a gradient is wanted, straight into the gradient of its hidden states
        ((softmax - onehot) @ W, per position), and dropped. The backward only scales that gradient:
        no logits kept between the passes, no second projection, no log-softmax backward."""

        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, targets: Any, chunk: int) -> Any:
            on = torch.is_autocast_enabled(hidden.device.type)
            dtype = torch.get_autocast_dtype(hidden.device.type) if on else hidden.dtype
            w = weight.to(dtype)
            nll, grads = [], []
            for h, t in zip(hidden.split(chunk), targets.split(chunk), strict=True):
                logits = torch.mm(h.to(dtype), w.t()).float()
                lse = torch.logsumexp(logits, dim=-1)
                nll.append(lse - logits.gather(1, t[:, None]).squeeze(1))
                if ctx.needs_input_grad[0]:
                    probs = logits.sub_(lse[:, None]).exp_()
                    probs[torch.arange(len(t), device=t.device), t] -= 1.0
                    grads.append(torch.mm(probs.to(dtype), w).to(hidden.dtype))
            if grads:
                ctx.save_for_backward(torch.cat(grads))
            return torch.cat(nll) if nll else hidden.new_zeros(0, dtype=torch.float32)

        @staticmethod
        def backward(ctx: Any, grad_nll: Any) -> Any:
            (grad_hidden,) = ctx.saved_tensors
            return grad_nll[:, None].to(grad_hidden.dtype) * grad_hidden, None, None, None

    return FusedNLL


def supports(model: Any) -> bool:
    """Whether the plain LM head gives this model's logits: no bias, softcapping or logit scale to apply."""
    config = model.config.get_text_config()
    head = model.get_output_embeddings()
    plain = head is not None and getattr(head, "bias", None) is None  # the fused head adds no bias
    return plain and all(getattr(config, name, None) is None for name in _SCALED)


def add_completion_head(model: Any) -> None:
    """Let `model(..., labels=labels, completion_only=True)` return a `CompletionOutput` for the positions
    whose next-token label is not -100. Patched on the causal LM itself (under PEFT: its base model), so
    the call goes through PEFT and DDP wrappers like any forward; without the flag, the forward is as it
    was (generation is unchanged)."""
    inner = model.forward

    def forward(self: Any, *args: Any, completion_only: bool = False, **kwargs: Any) -> Any:
        if not completion_only:
            return inner(*args, **kwargs)
        labels = kwargs.pop("labels")
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        labels = labels[:, 1:]
        mask = labels != -100
        targets = labels[mask]
        weight = self.get_output_embeddings().weight
        return CompletionOutput(completion_nll(hidden[mask], weight, targets), targets)

    model.forward = types.MethodType(forward, model)


def trainer_class(base: type) -> type:
    """`base` (TRL's SFTTrainer, imported after Unsloth had its chance to patch it) with the loss above."""
    import torch

    class CompletionLossTrainer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            unwrapped = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            add_completion_head(unwrapped)  # over TRL's fused head, which generation never uses
            self.end_of_turn_id = self.processing_class.eos_token_id
            from peft.tuners.tuners_utils import BaseTunerLayer

            # peft's switch exists on LoRA layers only (not on the trainable-token rows chatml adds).
            tuners = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
            self._castable = all(hasattr(m, "cast_input_dtype_enabled") for m in tuners)

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            from peft.helpers import disable_input_dtype_casting

            mode = "train" if self.model.training else "eval"
            # Under autocast, peft's LoRA layers would cast each input to their fp32 weights' dtype and
            # keep that copy for the backward pass: 7 fp32 copies per layer, most of the step's memory.
            # Autocast casts for the matrix multiply anyway (the weights' casts are cached per step).
            active = (self.args.bf16 or self.args.fp16) and self._castable
            with disable_input_dtype_casting(model, active=active):
                out = model(**inputs, completion_only=True)
            count = out.targets.numel() if num_items_in_batch is None else num_items_in_batch
            loss = out.nll.sum() / torch.as_tensor(count).clamp(min=1)
            # As TRL and the Trainer do: num_items_in_batch counts every rank's tokens and DDP averages.
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            if mode == "eval":
                ends = out.targets == self.end_of_turn_id
                probs = torch.exp(-out.nll.detach()[ends].float())
                # One value per validation row's end: the logged mean is over rows, not over batches.
                # None when no answer ends on the tokenizer's EOS (a template whose turn ends otherwise).
                values = self.accelerator.gather_for_metrics(probs).tolist()
                if values:
                    self._metrics["eval"]["end_of_turn_prob"].extend(values)
            else:
                self._count_tokens(inputs)
            return (loss, out) if return_outputs else loss

        def _count_tokens(self, inputs: dict[str, Any]) -> None:
            # TRL's count (its `num_tokens` log): non-padding tokens, or a padding-free row's length.
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            else:
                local = torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
            self._total_train_tokens += self.accelerator.gather_for_metrics(local).sum().item()
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]

    return CompletionLossTrainer
