"""`genz-speak chat MODEL_DIR`: a terminal chat with a model folder, tokens printed as they are generated.

    genz-speak chat models/merge --system "Keep it short." --temperature 0.7

The conversation (system message, every user turn and every answer) goes through the model's own chat
template each turn. Decoding defaults to evaluate's (`evaluate.decoding` in params.yaml, chosen by the grid
in BENCHMARKS.md), so the chat answers as the evaluated model did; the flags override it.
`/reset` starts a new conversation, `/exit` or end of input (Ctrl-D) quits, Ctrl-C
stops the answer being written.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from genz_speak.config import DecodingConfig
from genz_speak.errors import MissingInput

DECODING = DecodingConfig()  # equal to params.yaml's evaluate.decoding (tests/unit/test_config.py holds it)


class ChatSession:
    """A model folder and one conversation with it."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        system: str | None = None,
        max_new_tokens: int = DECODING.max_new_tokens,
        temperature: float = DECODING.temperature,
        top_p: float = DECODING.top_p,
        repetition_penalty: float = DECODING.repetition_penalty,
        no_repeat_ngram_size: int = DECODING.no_repeat_ngram_size,
        count_prompt: bool = DECODING.count_prompt,
        seed: int = DECODING.seed,
    ):
        from genz_speak.models import inference_dtype, load_causal_lm, load_tokenizer

        if not (Path(model_dir) / "config.json").is_file():
            raise MissingInput(f"{model_dir}: not a model folder (no config.json)")
        self.tokenizer = load_tokenizer(model_dir)
        self.model = load_causal_lm(model_dir, inference_dtype(model_dir))
        self.system = system
        self.max_new_tokens = max_new_tokens
        self.decoding: dict[str, Any] = {
            "temperature": temperature,
            "top_p": top_p,
            "repetition_penalty": repetition_penalty,
            "no_repeat_ngram_size": no_repeat_ngram_size,
            "count_prompt": count_prompt,
        }
        self.seed = seed
        self.history: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def prompt(self, user_text: str) -> str:
        """The text the model would see for this user turn after the conversation so far."""
        from genz_speak.data.chat import render

        return render(self.tokenizer, [*self.history, {"role": "user", "content": user_text}])

    def stream(self, user_text: str, stop: threading.Event | None = None) -> Iterator[str]:
        """Answer `user_text`, yielding text as tokens are generated; the turn and the answer (as far as
        it got, if `stop` is set or the caller stops reading) join the history."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        from genz_speak.generation import decoding_kwargs
        from genz_speak.models import device

        stop = stop or threading.Event()

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return stop.is_set()

        inputs = self.tokenizer(self.prompt(user_text), return_tensors="pt", add_special_tokens=False)
        settings = decoding_kwargs(prompt_length=inputs["input_ids"].shape[1], **self.decoding)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def generate() -> None:
            try:
                torch.manual_seed(self.seed + len(self.history))
                with torch.inference_mode():
                    self.model.generate(
                        **inputs.to(device()),
                        **settings,
                        max_new_tokens=self.max_new_tokens,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_Stop()]),
                        pad_token_id=self.tokenizer.pad_token_id,
                    )
            except BaseException as err:  # re-raised in the caller's thread, after the streamer is closed
                failure.append(err)
                streamer.end()

        thread = threading.Thread(target=generate, daemon=True)
        thread.start()
        pieces: list[str] = []
        try:
            for piece in streamer:
                pieces.append(piece)
                yield piece
        finally:
            stop.set()  # a caller that stops reading (Ctrl-C, break) ends the generation too
            thread.join()
            self.history += [
                {"role": "user", "content": user_text},
                {"role": "assistant", "content": "".join(pieces).strip()},
            ]
        if failure:
            raise failure[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", type=Path, help="a model folder (e.g. models/merge)")
    p.add_argument("--system", default=None, help="a system message that opens the conversation")
    d = DECODING
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--temperature", type=float, default=d.temperature, help="0: greedy decoding")
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty)
    p.add_argument(
        "--no-repeat-ngram-size", type=int, default=d.no_repeat_ngram_size, help="0: no n-gram ban"
    )
    p.add_argument(
        "--count-prompt",
        action=argparse.BooleanOptionalAction,
        default=d.count_prompt,
        help="whether the penalty and the n-gram ban count the conversation so far, not only the answer",
    )
    p.add_argument("--seed", type=int, default=d.seed)


def converse(session: ChatSession, stdin: TextIO, stdout: TextIO) -> None:
    """The read-answer loop: one user turn per input line."""
    interactive = stdin.isatty()
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            stdout.write("\n")
            return
        if not line:  # end of input
            return
        text = line.strip()
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            session.reset()
            stdout.write("(new conversation)\n")
            continue
        if not text:
            continue
        if not interactive:  # piped input: echo the turn, so that stdout reads as a transcript
            stdout.write(f"you> {text}\n")
        stdout.write("bot> ")
        stdout.flush()
        stop = threading.Event()
        try:
            for piece in session.stream(text, stop):
                stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:
            stop.set()
            stdout.write(" [stopped]")
        stdout.write("\n")
        stdout.flush()


def run(args: argparse.Namespace) -> None:
    from genz_speak.models import device

    if args.max_new_tokens <= 0 or args.temperature < 0 or args.no_repeat_ngram_size < 0:
        raise SystemExit(
            "genz-speak chat: --max-new-tokens must be positive, --temperature and --no-repeat-ngram-size "
            "not negative"
        )
    try:
        session = ChatSession(
            args.model_dir,
            system=args.system,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            no_repeat_ngram_size=args.no_repeat_ngram_size,
            count_prompt=args.count_prompt,
            seed=args.seed,
        )
    except MissingInput as err:
        print(f"genz-speak chat: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(
        f"genz-speak chat: {args.model_dir} on {device().type}. /reset starts over, /exit or Ctrl-D quits, "
        "Ctrl-C stops an answer.",
        file=sys.stderr,
    )
    converse(session, sys.stdin, sys.stdout)
