"""generate: the teacher rewrites each train/validation answer in Gen Z voice, keeping the facts.

    python stages/generate.py --data-dir data/prepare --corpus data/genz_corpus.jsonl \
        --out-dir data/generate --metrics metrics/generate.json --run-info metrics/run/generate.json

Reads `generate` from params.yaml, {train,validation,heldout}.jsonl from --data-dir (held-out rewrites
are the "Train" reference in evaluation, never trained on) and the hand-written Gen Z corpus (--corpus:
the corpus teacher's rewrites, and the LLM teachers' few-shot exemplars). Writes
genz_dataset.jsonl (id, split, category, instruction, context, source_response, output, teacher) and
rejects.jsonl (id, split, reason) under --out-dir, the dataset's counts to --metrics, and how the run went
to --run-info (requests, retries, faults and tokens of every run whose rows built the dataset; calls, time
and endpoints of this run). Every request as it is sent, and every rewrite or failed row as it finishes,
is appended to the shared cache ($GENZ_SPEAK_CACHE/generate.jsonl), so a killed run resumes, an unchanged
row is never paid for twice, and experiments reuse each other's rewrites of the same server. More rows
rejected than max_reject_fraction, or none left: exit status 1, and nothing written.
"""

from genz_speak import stage
from genz_speak.pipeline import generate

if __name__ == "__main__":
    stage.main(__doc__, "generate", generate.Paths, generate.run)
