"""The offline judge: the LLM judge's three criteria (genz_style, helpfulness, coherence) in [0, 1], with
no key and no network, from the embedded MiniLM encoder, the embedded student LM, scikit-learn and the
hand-written Gen Z corpus.

- **genz_style** (`judges/style.py`): a fixed model fitted on the corpus, plain references against natural
  rewrites; two views (an LM's hidden states, character n-grams) must both call the text Gen Z, so a
  plain body with a wrapper scores below a natural rewrite. It never sees a run's own outputs, so it is
  the same across experiments and teachers, and a model that copies a teacher's tics gains nothing.
- **helpfulness**, by task type (Dolly's category is in every row):
  - closed tasks (questions with one right answer, extraction, classification, summaries): does the
    answer address the question, carry the reference's content and keep its numbers and names? The
    product of relevance (MiniLM cosine with the reference or the question, scaled: off-topic text,
    refusals and spam are near neither), completeness (coverage of the reference as BERTScore recall over
    MiniLM token embeddings (Zhang et al., 2020), weighted COVERAGE_WEIGHT, so heavy slang or a short
    answer is incomplete rather than wrong), facts (`judges/facts.py`: the reference's numbers and names
    kept, matched forgivingly, a missing one lowering the score towards a quarter, each one replaced by a
    number or name nothing supports cutting it to 30%; correct extra detail costs nothing) and
    1 − the repeated word-trigram share;
  - open-ended tasks (creative writing, brainstorming: one valid answer among many): relevance to the
    question and the form it asks for (a haiku's three lines, the number of items or lines asked), not
    overlap with the one reference.
  A claim flipped in the same words ("smallest" for "largest", an item under the other class) is not
  caught: BENCHMARKS.md ("The offline judge") records what was tried for it and measured (rule-made
  flips with a cross-attention head or a fine-tuned MiniLM cross-encoder, the LM's likelihood, the LM
  asked as a verifier); none held on human-written flips. The LLM judge with the reference is the judge
  for those.
- **coherence**: structure, not register (slang, lowercase and emoji are not faults), as the product of
  - 1 − 1.5 × the repeated word-trigram share (loops);
  - a penalty for emoji beyond the first, by their share of the tokens (emoji streams, tacked-on strings);
  - a penalty for a text of several words with almost no function words and no list structure (slang
    piled up without sentences);
  - a penalty for an answer cut off mid-thought, by the ending model (`judges/ending.py`): the judge LM's
    reading of how the text ends, fitted on the corpus's own texts against their random cuts, not a word
    list.
  Perplexity is not used: it punishes slang and rewards loops.

The constants were set from what the rubric asks and checked on the calibration set's dev part; its
untouched part was kept out of every choice. `genz-speak judge-check` measures the result on both.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genz_speak import text as T
from genz_speak.config import OfflineJudgeConfig
from genz_speak.judges.facts import check_facts

OPEN_CATEGORIES = frozenset({"creative_writing", "brainstorming"})  # one reference among many right answers
# Coverage of the reference counts for this much of helpfulness on closed tasks; relevance and the fact
# check carry the rest, so a correct answer in heavy slang or a short one is not scored like a wrong one.
COVERAGE_WEIGHT = 0.7

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One answer to judge, with what it is judged against."""

    instruction: str
    context: str
    answer: str
    reference: str
    category: str = ""  # Dolly's; open-ended categories are judged by the task, not one reference


class Encoder:
    """MiniLM sentence and token embeddings (L2-normalised)."""

    def __init__(self, name: str):
        from sentence_transformers import SentenceTransformer

        from genz_speak.models import encoder_path

        self.model = SentenceTransformer(encoder_path(name), device="cpu")

    def sentences(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.encode(texts, batch_size=32, normalize_embeddings=True))

    def content_tokens(self, texts: list[str]) -> list[np.ndarray]:
        """Normalised contextual embeddings of each text's content tokens (no special tokens, function
        words or punctuation)."""
        import torch

        tok = self.model.tokenizer
        embedded = self.model.encode(texts, output_value="token_embeddings", batch_size=32)
        out = []
        for text, emb in zip(texts, embedded, strict=True):
            pieces = tok.convert_ids_to_tokens(
                tok(text, truncation=True, max_length=emb.shape[0])["input_ids"]
            )
            keep = [
                i
                for i, p in enumerate(pieces[: emb.shape[0]])
                if p not in tok.all_special_tokens
                and any(ch.isalnum() for ch in p)
                and p.removeprefix("##").lower() not in T.FUNCTION_WORDS
            ]
            out.append(torch.nn.functional.normalize(emb[keep].float(), dim=-1).numpy())
        return out


def coverage(answer: np.ndarray, reference: np.ndarray) -> float:
    """BERTScore recall: each reference content token's best cosine match among the answer's, averaged."""
    if not len(answer) or not len(reference):
        return 0.0
    return float((reference @ answer.T).max(axis=1).mean())


def repetition(text: str) -> float:
    return T.repeated_ngram_share(text, 3)


def coherence(text: str, cut_off: float) -> float:
    """Structure, not register: loops, runs of emoji, slang without sentences, and `cut_off`, the ending
    model's probability that the text stops mid-thought."""
    n_words, n_emoji = len(T.words(text)), T.emoji_count(text)
    loops = 1.0 - min(1.0, 1.5 * repetition(text))
    extra_emoji = max(n_emoji - 1, 0) / max(n_words + n_emoji, 1)
    emoji_stream = 1.0 - 0.9 * min(1.0, extra_emoji / 0.3)
    list_like = any(ch in text for ch in ",:;\n") or any(ch.isdigit() for ch in text)
    no_sentences = n_words >= 6 and not list_like and T.function_word_ratio(text) < 0.12
    return loops * emoji_stream * (1.0 - 0.8 * no_sentences) * (1.0 - 0.5 * cut_off)


_COUNT_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}  # noqa: SIM905
_ASKED = re.compile(
    r"\b(\d+|"
    + "|".join(_COUNT_WORDS)
    + r")\s+(?:\w+\s+)?(lines?|items?|ideas?|ways?|tips?|things?|examples?|"
    r"names?|reasons?|words?|sentences?|steps?|questions?|options?|activities|places|foods?|books?|songs?)\b",
    re.IGNORECASE,
)


def _units(text: str, unit: str) -> int:
    """How many lines, sentences, words or list items a text has."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if unit.startswith("line"):
        return len(lines)
    if unit.startswith("sentence"):
        return len([s for s in re.split(r"(?<=[.!?])\s+|\n+", text.strip()) if s.strip()])
    if unit.startswith("word"):
        return len(T.words(text))
    if len(lines) > 1:
        return len(lines)
    return len([p for p in re.split(r",|;|\band\b|\bor\b", text) if p.strip()])


def form_fit(instruction: str, answer: str) -> float:
    """Whether the answer has the form the task asks for: a haiku's three lines, the number of lines,
    items or sentences asked for (within one), a list's several items; 1 where nothing is asked."""
    asked = _ASKED.search(instruction)
    if asked is not None:
        n = int(asked.group(1)) if asked.group(1).isdigit() else _COUNT_WORDS[asked.group(1).lower()]
        got = _units(answer, asked.group(2).lower())
        return 1.0 if abs(got - n) <= max(1, n // 4) else 0.6
    if re.search(r"\bhaiku\b", instruction, re.I):
        return 1.0 if _units(answer, "lines") == 3 or answer.count("/") == 2 else 0.6
    if re.search(r"\blist\b", instruction, re.I):
        return 1.0 if _units(answer, "items") >= 2 else 0.6
    return 1.0


def _scale(x: np.ndarray | float, low: float, high: float) -> np.ndarray:
    return np.clip((np.asarray(x) - low) / (high - low), 0.0, 1.0)


class OfflineJudge:
    def __init__(
        self,
        cfg: OfflineJudgeConfig,
        corpus: list[dict[str, Any]],
        cache_dir: Path,
        exclude: frozenset[str] = frozenset(),
    ):
        """`cache_dir` keeps the judge's cut LM and its fitted models between runs; `exclude` are the
        questions being judged, which no fit sees."""
        from genz_speak.judges.ending import EndingModel
        from genz_speak.judges.style import LayerFeatures, StyleModel

        self.cfg = cfg
        self.encoder = Encoder(cfg.encoder)
        features = LayerFeatures.load(cfg.lm, cfg.lm_layers, cache_dir)
        self.style = StyleModel.fitted(corpus, features, exclude, cache_dir, cfg.lm)
        self.ending = EndingModel.fitted(corpus, features, exclude, cache_dir, cfg.lm)

    def score(self, items: list[Item]) -> list[dict[str, Any]]:
        """Per item: the three criteria in [0, 1], and the parts they are made of (for inspection). An
        empty answer scores 0 on all three."""
        answers = [it.answer if it.answer.strip() else "" for it in items]
        style = self.style.score(answers)
        cut = self.ending.cut_off(answers)
        ans = self.encoder.sentences(answers)
        ref = self.encoder.sentences([it.reference for it in items])
        asked = self.encoder.sentences([f"{it.instruction}\n{it.context}".strip() for it in items])
        to_question = _scale((ans * asked).sum(1), 0.15, 0.55)
        relevance = _scale(np.maximum((ans * ref).sum(1), (ans * asked).sum(1)), 0.25, 0.6)
        ans_tokens = self.encoder.content_tokens(answers)
        ref_tokens = self.encoder.content_tokens([it.reference for it in items])
        out = []
        for i, it in enumerate(items):
            facts = check_facts(it.answer, it.reference, it.instruction, it.context)
            cov = float(_scale(coverage(ans_tokens[i], ref_tokens[i]), 0.3, 0.8))
            rep = repetition(it.answer)
            if it.category in OPEN_CATEGORIES:
                # One right answer among many: judged by the task (on topic, in the form asked), not by
                # its overlap with the reference.
                helpful = float(to_question[i]) * form_fit(it.instruction, it.answer) * (1.0 - rep)
            else:
                complete = 1.0 - COVERAGE_WEIGHT * (1.0 - cov)
                helpful = float(relevance[i]) * complete * facts.score * (1.0 - rep)
            empty = not answers[i]
            out.append(
                {
                    "genz_style": 0.0 if empty else float(style[i]),
                    "helpfulness": 0.0 if empty else helpful,
                    "coherence": 0.0 if empty else coherence(it.answer, float(cut[i])),
                    "parts": {
                        "relevance": round(float(relevance[i]), 4),
                        "to_question": round(float(to_question[i]), 4),
                        "coverage": round(cov, 4),
                        "facts": round(facts.score, 4),
                        "repetition": round(rep, 4),
                        "cut_off": round(float(cut[i]), 4),
                    },
                }
            )
        return out
