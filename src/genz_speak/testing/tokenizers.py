"""Tokenizers trained here, in seconds, in the formats the student families use: SentencePiece BPE with
byte fallback (TinyLlama, Gemma) and byte-level BPE behind a split regex (Llama 3, Qwen). Trained on a
small inline corpus of plain and Gen Z answers with emoji, accents, digits and whitespace runs, so every
probe string has pieces to be split into. Deterministic: the same corpus and settings give the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

CORPUS = """\
Why is the sky blue? Sunlight is scattered by the molecules in the air, and blue light is scattered the most.
ok so the sky is blue bc sunlight bounces off air molecules and blue light scatters the most, no cap 🌌
Name three planets. Mercury, Venus and Earth are the three planets closest to the Sun.
bestie the three closest planets are Mercury, Venus and Earth, periodt ✨
How tall is Mont Blanc? Mont Blanc is 4,806 metres tall, the highest mountain in the Alps.
Mont Blanc is lowkey 4,806 metres tall fr, tallest in the Alps 🏔️ it's giving main character energy
What is 2+2? It is 4. And 3+3 is 6. 12 x 12 = 144; 1234567 is a big number; 3.14159 is pi.
4, no cap. 3+3 is 6 tho 💀 and 12 x 12 = 144 ngl. that's 100% facts, 10/10 would math again
The café on the Champs-Élysées serves crème brûlée, a naïve façade, déjà vu in Zürich and São Paulo.
the café fr had crème brûlée and it was bussin 😭 naïve me thought it was mid, it slaps
Résumé tips: keep it short, use numbers (e.g. "grew sales by 25% in 2023"), and proofread twice.
Photosynthesis turns light, water and carbon dioxide into glucose and oxygen in plant cells.
plants be out here turning sunlight + water + CO2 into sugar and oxygen, photosynthesis is that girl 🌱
Write a haiku about autumn.\\nLeaves fall soft and slow\\nthe cold wind hums through bare trees
The French Revolution began in 1789 and ended in 1799 with the rise of Napoleon Bonaparte.
Water boils at 100 °C at sea level; at 3,000 m it boils at about 90 °C.
Python:\\n    def add(a, b):\\n        return a + b\\n\\tprint(add(1, 2))  # prints 3
Double  spaces  happen.  Tabs\\tand\\ttabs.  Trailing spaces   \\nNew paragraph.\\n\\nAnother one.
I'm sure you'll love it; they've said we'd go. You're right, it's fine, isn't it? I'd say so.
fr fr, lowkey highkey, ngl, tbh, iykyk, slay, ate and left no crumbs, rizz, sus, yeet, vibe check 🔥🔥
emoji check: 🔥 ✨ 💀 😭 🙏 🌱 👑 🤯 😶‍🌫️ 👍🏽 ❤️ 🇫🇷 — dashes – and “quotes” and ‘single’ ones… ellipsis
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 99 100 256 1000 2024 65536 3.5 0.001 1e6 -7 +8 50% $20 €15 £9
Greek αβγ, Russian привет мир, Chinese 我想在apple工作, Japanese こんにちは, Korean 안녕하세요
"""

# Llama 3's and Qwen2's split regexes, as in their tokenizer.json files (Qwen splits digits one by one).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")


def corpus_lines(n: int = 3000, seed: int = 0) -> list[str]:
    """The corpus, plus seeded recombinations of its lines and words (enough text for 1-2k pieces)."""
    rng = random.Random(seed)
    base = [line.replace("\\n", "\n").replace("\\t", "\t") for line in CORPUS.splitlines() if line]
    words = " ".join(base).split(" ")
    out = base * 4
    for _ in range(n):
        if rng.random() < 0.5:
            out.append(rng.choice(base))
        else:
            out.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 16))))
    return out


def sentencepiece_bpe(work: Path, vocab_size: int, **settings: Any) -> tuple[Path, dict[str, int], list[Any]]:
    """A SentencePiece BPE model with byte fallback trained on the corpus: its tokenizer.model, and the
    vocabulary and merges transformers' SentencePiece-style tokenizer classes are built from."""
    import sentencepiece as spm
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    text = work / "corpus.txt"
    text.write_text("\n".join(corpus_lines()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(work / "sp"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        max_sentence_length=100000,
        minloglevel=2,
        num_threads=1,
        **settings,
    )
    model_file = work / "sp.model"
    vocab, _scores, merges = SentencePieceExtractor(str(model_file)).extract()
    return model_file, vocab, merges


def byte_level_bpe(pattern: str, vocab_size: int, *, nfc: bool, ignore_merges: bool) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` (GPT-2 / tiktoken style: the regex splits, then bytes map
    to printable characters) trained on the corpus; special tokens are the caller's to add."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus_lines(), trainer)
    data = json.loads(tok.to_str())  # the family's own ignore_merges (Llama 3: true, Qwen2: false)
    data["model"].update(ignore_merges=ignore_merges, byte_fallback=False)
    tok = Tokenizer.from_str(json.dumps(data))
    tok.decoder = decoders.ByteLevel()
    return tok
