"""Cut-off answers: does the text end where a writer would stop, or mid-thought ("...so that", "3.")?

A list of words no sentence ends on misses every cut it does not list. This is a model signal instead:
the judge's own LM (the style model's early layers) reads the end of the text, and a logistic regression
on its states at the last tokens tells a finished text from a cut one. It is fitted on the project's own
hand-written texts (the corpus's references and Gen Z rewrites, which all end where their writers
stopped) against the same texts cut at a random word that does not end a sentence: no cut-off answer and
no word list goes into it, so it answers for cuts it never saw. The questions an evaluation scores are
left out of the fit; the held-out accuracy is measured on a share of the corpus's questions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genz_speak.io import atomic_open
from genz_speak.judges.style import LayerFeatures, held_out

log = logging.getLogger(__name__)

VERSION = "1"  # bump when the features or the cuts change, so a cached fit is not reused
_SENTENCE_END = re.compile(r"[.!?…)\]\"'’”]$|[\U0001f000-\U0001faff\u2600-\u27bf]$")


def cuts(text: str, rng: random.Random, n: int = 2) -> list[str]:
    """`text` cut after `n` random words that do not end a sentence (a cut that lands on a full stop would
    be a finished text, not a cut-off one)."""
    words = text.split()
    spots = [i for i in range(2, len(words) - 1) if not _SENTENCE_END.search(words[i - 1])]
    return [" ".join(words[:i]) for i in sorted(rng.sample(spots, min(n, len(spots))))]


@dataclass
class EndingModel:
    classifier: Any
    features: LayerFeatures
    heldout_accuracy: float

    @classmethod
    def fit(
        cls, corpus: list[dict[str, Any]], features: LayerFeatures, exclude: frozenset[str]
    ) -> EndingModel:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        rng = random.Random(0)
        texts: list[str] = []
        labels: list[int] = []
        test: list[bool] = []
        for row in corpus:
            if row["id"] in exclude:
                continue
            for text in (row["reference"], row["genz"]):
                made = [(text, 0), *((cut, 1) for cut in cuts(text, rng))]
                texts += [t for t, _ in made]
                labels += [y for _, y in made]
                test += [held_out(row["id"])] * len(made)
        x, y, t = features.endings(texts), np.asarray(labels), np.asarray(test)
        classifier = make_pipeline(
            StandardScaler(), LogisticRegression(C=0.05, max_iter=5000, class_weight="balanced")
        )
        classifier.fit(x[~t], y[~t])
        accuracy = float((classifier.predict(x[t]) == y[t]).mean()) if t.any() else 0.0
        log.info("ending model: %d texts, held-out accuracy %.3f", int((~t).sum()), accuracy)
        return cls(classifier, features, accuracy)

    @classmethod
    def fitted(
        cls,
        corpus: list[dict[str, Any]],
        features: LayerFeatures,
        exclude: frozenset[str],
        cache_dir: Path,
        lm: str,
    ) -> EndingModel:
        """The model fitted on `corpus` without `exclude`, from `cache_dir` when this very fit was saved."""
        import joblib
        import sklearn

        blob = json.dumps([VERSION, corpus, lm, features.decoder.config.num_hidden_layers, sorted(exclude)])
        path = (
            cache_dir
            / f"ending-{hashlib.sha256(f'{blob}{sklearn.__version__}'.encode()).hexdigest()[:16]}.joblib"
        )
        if path.is_file():
            parts = joblib.load(path)
            return cls(parts["classifier"], features, parts["heldout_accuracy"])
        model = cls.fit(corpus, features, exclude)
        with atomic_open(path, "wb") as f:
            joblib.dump({"classifier": model.classifier, "heldout_accuracy": model.heldout_accuracy}, f)
        return model

    def cut_off(self, texts: list[str]) -> np.ndarray:
        """P(the text was cut off before its end)."""
        return self.classifier.predict_proba(self.features.endings(texts))[:, 1]
