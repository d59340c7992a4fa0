"""The offline judge: the LLM judge's three criteria (genz_style, helpfulness, coherence) in [0, 1], with
no key and no network, from the embedded MiniLM encoder, the embedded student LM, scikit-learn and the
hand-written Gen Z corpus.

- **genz_style** (`judges/style.py`): a fixed model fitted on the corpus, plain references against natural
  rewrites; two views (an LM's hidden states, character n-grams) must both call the text Gen Z, so a
  plain body with a wrapper scores below a natural rewrite. It never sees a run's own outputs, so it is
  the same across experiments and teachers, and a model that copies a teacher's tics gains nothing.
- **helpfulness**: does the answer address the question, carry the reference's content, and state the
  reference's numbers and names rather than others? The product of
  - relevance: MiniLM cosine of the answer with the reference or the question (off-topic text, refusals
    and spam are near neither);
  - coverage: how much of the reference's content the answer carries, as BERTScore recall (Zhang et
    al., 2020) over MiniLM token embeddings, so a paraphrase in slang still covers it;
  - facts (`judges/facts.py`): the share of the reference's numbers and names the answer states, halved
    for each number it states that neither the reference nor the question does, and cut by 30% for each
    such capitalised name;
  - 1 − the answer's repeated word-trigram share (a loop says little however long it runs).
  Embedding similarity alone cannot tell a right number from a wrong one; the fact check can, for
  numbers and names. Claims flipped in words ("smallest" for "largest") it does not catch: the LLM judge
  with the reference is the judge for those.
- **coherence**: structure, not register (slang, lowercase and emoji are not faults), as the product of
  - 1 − 1.5 × the repeated word-trigram share (loops);
  - a penalty for emoji beyond the first, by their share of the tokens (emoji streams, tacked-on strings);
  - a penalty for a text of several words with almost no function words and no list structure (slang
    piled up without sentences);
  - a penalty for an answer that stops on a word no English sentence ends on ("the", "of", "and", "has")
    or on a comma (cut off mid-sentence).
  Perplexity is not used: it punishes slang and rewards loops.

Every constant above was set once from what the rubric asks (not fitted to labels); `genz-speak
judge-check` measures the result against the labelled calibration set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genz_speak import text as T
from genz_speak.config import OfflineJudgeConfig
from genz_speak.judges.facts import check_facts

log = logging.getLogger(__name__)

# Words an English sentence does not end on: an answer stopping on one was cut off.
_DANGLING = """
    the a an of to in on at by for with from into onto about than as and or but nor because although
    though if while my your his her their our its is are was were be been being has have had will would
    can could should shall may might must very more most such
"""
DANGLING = frozenset(_DANGLING.split())


@dataclass(frozen=True)
class Item:
    """One answer to judge, with what it is judged against."""

    instruction: str
    context: str
    answer: str
    reference: str


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


def coherence(text: str) -> float:
    n_words, n_emoji = len(T.words(text)), T.emoji_count(text)
    loops = 1.0 - min(1.0, 1.5 * repetition(text))
    extra_emoji = max(n_emoji - 1, 0) / max(n_words + n_emoji, 1)
    emoji_stream = 1.0 - 0.9 * min(1.0, extra_emoji / 0.3)
    list_like = any(ch in text for ch in ",:;\n") or any(ch.isdigit() for ch in text)
    no_sentences = n_words >= 6 and not list_like and T.function_word_ratio(text) < 0.12
    stripped = text.rstrip()
    last = (T.words(stripped) or [""])[-1].lower()
    cut_off = stripped.endswith((",", ":", ";", "-", "–", "(")) or (
        stripped[-1:].isalnum() and last in DANGLING
    )
    return loops * emoji_stream * (1.0 - 0.8 * no_sentences) * (1.0 - 0.6 * cut_off)


class OfflineJudge:
    def __init__(
        self,
        cfg: OfflineJudgeConfig,
        corpus: list[dict[str, Any]],
        cache_dir: Path,
        exclude: frozenset[str] = frozenset(),
    ):
        """`cache_dir` keeps the judge's cut LM and its fitted style model between runs."""
        from genz_speak.judges.style import LayerFeatures, StyleModel

        self.cfg = cfg
        self.encoder = Encoder(cfg.encoder)
        features = LayerFeatures.load(cfg.lm, cfg.lm_layers, cache_dir)
        self.style = StyleModel.fitted(corpus, features, exclude, cache_dir, cfg.lm)

    def score(self, items: list[Item]) -> list[dict[str, Any]]:
        """Per item: the three criteria in [0, 1], and the parts they are made of (for inspection). An
        empty answer scores 0 on all three."""
        answers = [it.answer if it.answer.strip() else "" for it in items]
        style = self.style.score(answers)
        ans = self.encoder.sentences(answers)
        ref = self.encoder.sentences([it.reference for it in items])
        instr = self.encoder.sentences([it.instruction for it in items])
        relevance = np.clip((np.maximum((ans * ref).sum(1), (ans * instr).sum(1)) - 0.25) / 0.35, 0.0, 1.0)
        ans_tokens = self.encoder.content_tokens(answers)
        ref_tokens = self.encoder.content_tokens([it.reference for it in items])
        out = []
        for i, it in enumerate(items):
            facts = check_facts(it.answer, it.reference, it.instruction, it.context)
            kept = [v for v in (facts.numbers_kept, facts.names_kept) if v is not None]
            fact_score = (
                (float(np.mean(kept)) if kept else 1.0)
                * 0.5**facts.numbers_unsupported
                * 0.7**facts.names_unsupported
            )
            cov = float(np.clip((coverage(ans_tokens[i], ref_tokens[i]) - 0.3) / 0.5, 0.0, 1.0))
            rep = repetition(it.answer)
            empty = not answers[i]
            out.append(
                {
                    "genz_style": 0.0 if empty else float(style[i]),
                    "helpfulness": 0.0 if empty else float(relevance[i]) * cov * fact_score * (1.0 - rep),
                    "coherence": 0.0 if empty else coherence(it.answer),
                    "parts": {
                        "relevance": round(float(relevance[i]), 4),
                        "coverage": round(cov, 4),
                        "facts": round(fact_score, 4),
                        "repetition": round(rep, 4),
                    },
                }
            )
        return out
