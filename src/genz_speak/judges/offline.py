"""The offline judge: the style-transfer triad, each criterion mapped to [0, 1].

- style: a logistic-regression classifier over standardised MiniLM sentence embeddings, trained on
  the run's own training split (source responses = 0, teacher rewrites = 1); the score is P(Gen Z).
  Its accuracy is measured on validation rows it never saw.
- content: cosine similarity between the answer and the reference answer embeddings, clipped at 0.
- fluency: perplexity under the base model, mapped by 1 - log(ppl) / log(max_perplexity), clipped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from genz_speak.config import OfflineJudgeConfig
from genz_speak.errors import InputError

log = logging.getLogger(__name__)

CRITERIA = ("style", "content", "fluency")


class Encoder:
    def __init__(self, name: str):
        from sentence_transformers import SentenceTransformer

        from genz_speak.models import encoder_path

        self.model = SentenceTransformer(encoder_path(name), device="cpu")

    def __call__(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.encode(texts, batch_size=32, normalize_embeddings=True))


@dataclass
class StyleClassifier:
    model: Any
    heldout_accuracy: float
    train_rows: int
    test_rows: int

    @classmethod
    def fit(
        cls, encoder: Encoder, train: list[dict[str, Any]], test: list[dict[str, Any]]
    ) -> StyleClassifier:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        def xy(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
            texts = [r["source_response"] for r in rows] + [r["output"] for r in rows]
            return encoder(texts), np.array([0] * len(rows) + [1] * len(rows))

        if not train or not test:
            raise InputError(
                "the style classifier needs rewritten rows in both the train and validation splits"
            )
        x, y = xy(train)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x, y)
        xt, yt = xy(test)
        acc = float((clf.predict(xt) == yt).mean())
        log.info("style classifier: held-out accuracy %.3f on %d texts", acc, len(yt))
        return cls(clf, acc, len(y), len(yt))

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(embeddings)[:, 1]


def perplexities(model: Any, tokenizer: Any, texts: list[str], batch_size: int = 8) -> list[float]:
    """Per-text perplexity under a causal LM (mean token NLL, exponentiated)."""
    import torch

    from genz_speak.models import device

    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True).to(device())
        with torch.inference_mode():
            logits = model(**enc).logits.float()
        targets = enc["input_ids"][:, 1:]
        mask = enc["attention_mask"][:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets, reduction="none")
        for row_nll, row_mask in zip(nll, mask, strict=True):
            n = int(row_mask.sum())
            out.append(math.exp(float(row_nll[row_mask].sum()) / n) if n else float("inf"))
    return out


def fluency(ppl: float, max_perplexity: float) -> float:
    return float(min(1.0, max(0.0, 1.0 - math.log(max(ppl, 1.0)) / math.log(max_perplexity))))


class OfflineJudge:
    def __init__(self, cfg: OfflineJudgeConfig, dataset: list[dict[str, Any]], lm: Any, tokenizer: Any):
        self.cfg = cfg
        self.encoder = Encoder(cfg.encoder)
        self.classifier = StyleClassifier.fit(
            self.encoder,
            [r for r in dataset if r["split"] == "train"],
            [r for r in dataset if r["split"] == "validation"],
        )
        self.lm, self.tokenizer = lm, tokenizer

    def score(self, texts: list[str], references: list[str]) -> list[dict[str, float]]:
        emb = self.encoder(texts)
        ref = self.encoder(references)
        style = self.classifier.score(emb)
        content = np.clip((emb * ref).sum(axis=1), 0.0, 1.0)
        ppl = perplexities(self.lm, self.tokenizer, texts)
        return [
            {
                "style": float(s),
                "content": float(c),
                "fluency": fluency(p, self.cfg.max_perplexity),
                "perplexity": float(p),
            }
            for s, c, p in zip(style, content, ppl, strict=True)
        ]
