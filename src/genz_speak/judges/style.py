"""Gen Z style: a fixed model fitted on the hand-written corpus (plain references vs natural rewrites).

Two views of a text, each a logistic regression fitted on the corpus's train split, and the score is
their product (the chance that both call it Gen Z):

- **the language model's view**: mean-pooled hidden states of an early layer of a small causal LM
  (the embedded SmolLM2-135M-Instruct by default). Its BPE tokens keep case and its states encode
  register and vocabulary, slang included, so it separates plain prose from Gen Z voice well (plain
  answers score near 0) — but a handful of bolted-on catchphrases and emoji pull the mean over.
- **the orthographic view**: character 2-5-grams (case kept). It reads how the text is written —
  capitalised sentence starts, full stops, formal word forms — and so sees the textbook body under a
  caricature's wrapper; alone, it is unsure about plain text.

A natural rewrite passes both; a plain answer fails the first, a caricature (plain body, Gen Z bits
tacked on) fails the second. Each view's held-out accuracy on the corpus's test split is reported.
The corpus is split by question id, so a question's reference and rewrite fall on the same side; the
questions an evaluation scores are kept out of the fit, so the teacher's rewrites of them ("Train")
are scored by a model that never saw them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genz_speak.errors import ParamError
from genz_speak.io import atomic_dir, atomic_open

log = logging.getLogger(__name__)

TEST_SHARE = 5  # one question in five (by id hash) is held out to measure the fitted views


def cached_lm(name: str, cache_dir: Path, layers: int) -> Path:
    """The folder of the judge LM `name` cut to its first `layers` layers, saved under `cache_dir` on first
    use: converting the embedded GGUF takes most of a minute, the saved cut loads in a second."""
    from genz_speak.models import load_judge_lm, model_fingerprint

    origin = model_fingerprint(Path(name)) if Path(name).is_dir() else name
    key = hashlib.sha256(json.dumps([origin, layers]).encode()).hexdigest()[:16]
    folder = cache_dir / f"lm-{key}"
    if not (folder / "config.json").is_file():
        model, tokenizer = load_judge_lm(name)
        if layers > model.config.num_hidden_layers:
            raise ParamError(
                "evaluate.offline.lm_layers",
                f"{name} has {model.config.num_hidden_layers} layers, not {layers}",
            )
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
        with atomic_dir(folder) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return folder


def held_out(question_id: str) -> bool:
    return int(hashlib.sha256(question_id.encode()).hexdigest(), 16) % TEST_SHARE == 0


class LayerFeatures:
    """Mean-pooled hidden states of the first `layers` decoder layers of a causal LM (the rest are cut
    off: an early layer carries register well and costs a fraction of the whole model)."""

    def __init__(self, model: Any, tokenizer: Any, max_tokens: int = 256):
        self.decoder = model.model.eval()
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    @classmethod
    def load(cls, name: str, layers: int, cache_dir: Path) -> LayerFeatures:
        """The LM `name` cut to its first `layers` layers (cached under `cache_dir`)."""
        from genz_speak.models import load_causal_lm, load_tokenizer

        folder = cached_lm(name, cache_dir, layers)
        return cls(load_causal_lm(folder), load_tokenizer(folder))

    def __call__(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Each text's hidden states averaged over its (first `max_tokens`) tokens."""
        return self._pooled(texts, batch_size, self.max_tokens, ending=False)

    def endings(self, texts: list[str], tokens: int = 48, batch_size: int = 32) -> np.ndarray:
        """The state at each text's last token beside the mean over its last `tokens` tokens: how the text
        ends (a finished sentence or one cut off), read with what precedes the end."""
        return self._pooled(texts, batch_size, tokens, ending=True)

    def _pooled(self, texts: list[str], batch_size: int, max_tokens: int, ending: bool) -> np.ndarray:
        import torch

        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left" if ending else "right"
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches of like length pad little
        width = self.decoder.config.hidden_size * (2 if ending else 1)
        out = np.zeros((len(texts), width), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_tokens,
            ).to(self.decoder.device)
            with torch.inference_mode():
                hidden = self.decoder(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            if ending:
                last = hidden[torch.arange(len(idx)), enc["attention_mask"].sum(1) - 1]
                mean = torch.cat([last, mean], dim=1)
            out[idx] = mean.cpu().numpy()
        return out


@dataclass
class StyleModel:
    lm_view: Any
    char_view: Any
    features: LayerFeatures
    heldout_accuracy: dict[str, float]
    train_texts: int
    test_texts: int

    @classmethod
    def fitted(
        cls,
        corpus: list[dict[str, Any]],
        features: LayerFeatures,
        exclude: frozenset[str],
        cache_dir: Path,
        lm: str,
    ) -> StyleModel:
        """The model fitted on `corpus` without `exclude`, from `cache_dir` when this very fit was saved
        there (fitting is deterministic: same corpus, LM and exclusions, same model)."""
        import joblib
        import sklearn

        blob = json.dumps([corpus, lm, features.decoder.config.num_hidden_layers, sorted(exclude)])
        key = hashlib.sha256(f"{blob}{sklearn.__version__}".encode()).hexdigest()[:16]
        path = cache_dir / f"style-{key}.joblib"
        if path.is_file():
            parts = joblib.load(path)
            return cls(features=features, **parts)
        model = cls.fit(corpus, features, exclude)
        with atomic_open(path, "wb") as f:
            joblib.dump({k: v for k, v in vars(model).items() if k != "features"}, f)
        return model

    @classmethod
    def fit(
        cls, corpus: list[dict[str, Any]], features: LayerFeatures, exclude: frozenset[str] = frozenset()
    ) -> StyleModel:
        """Fit both views on the corpus's train split; measure them on its test split. Rows of the
        questions in `exclude` (the ones an evaluation scores) go to the test split, never into the fit."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        def texts(rows: list[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
            return [r["reference"] for r in rows] + [r["genz"] for r in rows], np.repeat([0, 1], len(rows))

        test = [held_out(r["id"]) or r["id"] in exclude for r in corpus]
        train_x, train_y = texts([r for r, t in zip(corpus, test, strict=True) if not t])
        test_x, test_y = texts([r for r, t in zip(corpus, test, strict=True) if t])
        # Strong L2 on ~600 standardised dimensions fitted from ~340 texts.
        lm_view = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=5000))
        lm_view.fit(features(train_x), train_y)
        char_view = make_pipeline(
            TfidfVectorizer(
                analyzer="char_wb", ngram_range=(2, 5), lowercase=False, sublinear_tf=True, min_df=2
            ),
            LogisticRegression(C=10.0, max_iter=5000),
        ).fit(train_x, train_y)
        model = cls(lm_view, char_view, features, {}, len(train_x), len(test_x))
        lm_p, char_p = model.views(test_x)
        model.heldout_accuracy = {
            "lm_view": float(((lm_p > 0.5) == test_y).mean()),
            "char_view": float(((char_p > 0.5) == test_y).mean()),
            "both": float(((lm_p * char_p > 0.25) == test_y).mean()),
        }
        log.info("style model: held-out accuracy %s on %d texts", model.heldout_accuracy, len(test_x))
        return model

    def views(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """P(Gen Z) under each view."""
        return (
            self.lm_view.predict_proba(self.features(texts))[:, 1],
            self.char_view.predict_proba(texts)[:, 1],
        )

    def score(self, texts: list[str]) -> np.ndarray:
        lm_p, char_p = self.views(texts)
        return lm_p * char_p
