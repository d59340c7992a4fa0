"""Issue 26's CPU trainer: the completion mask reaches the end-of-turn token, the fused LM head's loss and
gradient equal the plain head's, the precision chosen from the CPU's flags, stopping and length counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from genz_speak.config import TrainConfig
from genz_speak.data.chat import prompt_completion
from genz_speak.io import read_jsonl
from genz_speak.reports.summary import surface
from genz_speak.training import backends, cpu, loss
from genz_speak.training.sft import build_trainer

ROOT = Path(__file__).resolve().parents[2]


def test_the_completion_mask_covers_the_end_of_turn_token_of_every_training_row(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Every corpus rewrite as the train stage renders it (TRL's tokenization through the student's own
    chat template, SmolLM2's): the model is trained to produce <|im_end|> where its answer ends."""
    from datasets import Dataset

    rows = [
        {"instruction": r["instruction"], "context": "", "output": r["genz"]}
        for r in read_jsonl(ROOT / "data/genz_corpus.jsonl")
    ]
    cfg = TrainConfig(cpu_threads=1, cpu_precision="fp32")
    prepared = backends.load("transformers", tiny_model, cfg)
    dataset = Dataset.from_list([prompt_completion(r) for r in rows])
    trainer, _, _ = build_trainer(cfg, "transformers", prepared, dataset, None, tmp_path, [])
    end = prepared.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end == prepared.tokenizer.eos_token_id
    tokenized = trainer.train_dataset
    assert len(tokenized) == len(rows)
    for ids, labels in zip(tokenized["input_ids"], tokenized["labels"], strict=True):
        last = max(i for i, t in enumerate(ids) if t == end)  # the assistant turn's end
        assert labels[last] == end, prepared.tokenizer.decode(ids[-8:])
        first_trained = min(i for i, t in enumerate(labels) if t != -100)
        assert end not in ids[first_trained:last]  # one end-of-turn inside the completion: its own


@pytest.mark.parametrize("chunk", [3, 1024])
def test_the_fused_head_gives_the_plain_heads_loss_and_gradient(chunk: int) -> None:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    hidden = torch.randn(10, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64)
    targets = torch.randint(0, 50, (10,))
    upstream = torch.rand(10, dtype=torch.float64)
    nll = loss.completion_nll(hidden, weight, targets, chunk=chunk)
    (nll * upstream).sum().backward()
    fused_grad = hidden.grad.clone()
    hidden.grad = None
    ref = F.cross_entropy(F.linear(hidden, weight), targets, reduction="none")
    (ref * upstream).sum().backward()
    # The fused head's softmax runs in fp32 whatever the input's dtype.
    torch.testing.assert_close(nll.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_grad, hidden.grad, rtol=1e-5, atol=1e-5)


def test_precision_follows_the_cpus_bf16_instructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu.bf16_isa(cpu.cpu_flags(info)) == "AMX-BF16"
    assert cpu.bf16_isa({"avx512f", "avx512_bf16"}) == "AVX512-BF16"
    assert cpu.bf16_isa({"avx2", "fma"}) is None
    assert cpu.resolve_precision("auto", "AMX-BF16") == "bf16"
    monkeypatch.setattr(cpu, "bf16_isa", lambda flags=None: None)
    assert cpu.resolve_precision("auto") == "fp32"  # emulated bf16 is slower than fp32
    assert cpu.resolve_precision("fp32", "AMX-BF16") == "fp32"


def test_surface_counts_answers_that_ended_and_length_against_the_teachers() -> None:
    records = [
        {"group": g, "id": str(i), "text": text}
        for i, (g, text) in enumerate(
            [("train", "one two three four"), ("gen", "one two"), ("base_model", "a b c d e f g h")]
        )
    ]
    for r in records:
        r["id"] = "q"
    out = surface(records, {"gen": [True], "base_model": [False]})
    assert out["gen"]["ended_share"] == 1.0 and out["base_model"]["ended_share"] == 0.0
    assert out["gen"]["words_vs_train"] == 0.5 and out["base_model"]["words_vs_train"] == 2.0
