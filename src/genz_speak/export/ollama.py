"""An Ollama Modelfile whose TEMPLATE is derived from the model's own (Jinja) chat template.

Ollama templates are Go templates, so the Jinja template cannot be copied over. Most chat templates wrap
each message in a fixed prefix and suffix per role; `decompose` finds those by rendering conversations
with sentinel contents, and `check_roundtrip` proves that the wrappers reproduce the Jinja rendering of
several conversations exactly, so the TEMPLATE is known to build the prompt the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from genz_speak.data.chat import render
from genz_speak.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")
_S = {role: f"\x00{role.upper()}\x00" for role in ROLES}  # contents no template alters or emits
_NEXT_USER = "\x00USER2\x00"


@dataclass(frozen=True)
class ChatFormat:
    """A chat template as per-role wrappers: a message renders as prefix + content + suffix, after the
    BOS the template starts with (llama.cpp and Ollama add that one themselves, so the TEMPLATE leaves it
    out). Where the template has no system turn but folds a system message into the first user turn
    (Gemma), `fold` is what joins the two."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation_prompt: str
    default_system: str | None  # the system message the template adds when a conversation has none
    bos: str = ""
    fold: str | None = None

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        text, system = "", None
        for m in messages:
            role, content = m["role"], m["content"]
            if self.fold is not None and role == "system":
                system = content
                continue
            if system is not None and role == "user":
                content, system = system + self.fold + content, None  # type: ignore[operator]
            text += self.prefix[role] + content + self.suffix[role]
        return self.bos + text + (self.generation_prompt if add_generation_prompt else "")


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], gen: bool = False) -> str:
    try:
        return render(tokenizer, messages, add_generation_prompt=gen)
    except Exception as err:  # a template that rejects a conversation (e.g. a system turn) raises anything
        roles = ", ".join(m["role"] for m in messages)
        raise InputError(f"export: the chat template cannot render the messages {roles}: {err}") from err


def _split(text: str, sentinel: str, where: str) -> tuple[str, str]:
    if text.count(sentinel) != 1:
        raise InputError(f"export: the chat template does not render a {where} message's content once")
    before, after = text.split(sentinel)
    return before, after


def _between(text: str, head: str, tail: str, what: str) -> str:
    if not (text.startswith(head) and text.endswith(tail) and len(text) >= len(head) + len(tail)):
        raise InputError(f"export: {what}; Ollama's TEMPLATE cannot express it")
    return text[len(head) : len(text) - len(tail)]


def decompose(tokenizer: PreTrainedTokenizerBase) -> ChatFormat:
    """The template's per-role wrappers, found by rendering conversations of sentinel contents. The
    assistant's are taken from a turn a user turn follows: a template may render the last assistant turn
    apart (Qwen3 opens a thinking block there)."""
    # The BOS the template starts with, where the tokenizer adds one itself (llama.cpp then does too).
    bos = tokenizer.bos_token or ""
    adds_bos = tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    lone = _render(tokenizer, [{"role": "user", "content": _S["user"]}])
    bos = bos if bos and adds_bos and lone.startswith(bos) else ""

    def body(roles: list[str], gen: bool = False) -> str:
        contents = [_NEXT_USER if role == "user" and i > 1 else _S[role] for i, role in enumerate(roles)]
        text = _render(
            tokenizer, [{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)], gen
        )
        return _between(text, bos, "", "the chat template does not start every conversation the same")

    system, fold = body(["system"]), None
    if _S["system"] in system:
        prefix_s, suffix_s = _split(system, _S["system"], "system")
        what = "adding a user message changes how the system message renders"
        prefix_u, suffix_u = _split(_between(body(["system", "user"]), system, "", what), _S["user"], "user")
    else:  # no system turn: the template folds a system message into the first user turn (Gemma)
        prefix_s = suffix_s = ""
        prefix_u, suffix_u = _split(body(["user"]), _S["user"], "user")
        what = "the chat template neither renders a system turn nor folds it into the first user turn"
        fold = _between(body(["system", "user"]), prefix_u + _S["system"], _S["user"] + suffix_u, what)
    opening = body(["system", "user"])
    what = "adding an assistant and a user message changes how earlier messages render"
    turn = _between(
        body(["system", "user", "assistant", "user"]), opening, prefix_u + _NEXT_USER + suffix_u, what
    )
    prefix_a, suffix_a = _split(turn, _S["assistant"], "assistant")
    what = "the generation prompt changes how earlier messages render"
    generation_prompt = _between(body(["system", "user"], gen=True), opening, "", what)
    default_system = None
    alone, user_turn = body(["user"]), prefix_u + _S["user"] + suffix_u
    if fold is None and alone != user_turn:
        what = "the chat template adds text before a lone user message that is not a system message"
        default_system = _between(alone, prefix_s, suffix_s + user_turn, what)
    prefix = {"system": prefix_s, "user": prefix_u, "assistant": prefix_a}
    suffix = {"system": suffix_s, "user": suffix_u, "assistant": suffix_a}
    return ChatFormat(prefix, suffix, generation_prompt, default_system, bos, fold)


# Conversations the wrappers must reproduce exactly: with and without a system message, several turns,
# multi-line and non-ASCII contents.
PROBES: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "Why is the sky blue?"}],
    [
        {"role": "system", "content": "Answer in Gen Z voice."},
        {"role": "user", "content": "Name 3 planets.\nKeep it short."},
    ],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hey bestie, what's up? ✨"},
        {"role": "user", "content": "How tall is Mont Blanc — in metres?"},
    ],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4, no cap"},
        {"role": "user", "content": "and 3+3?"},
    ],
)


def check_roundtrip(tokenizer: PreTrainedTokenizerBase, fmt: ChatFormat) -> int:
    """Fail unless the wrappers render every probe conversation exactly as the Jinja template does;
    returns how many conversations were compared."""
    for messages in PROBES:
        expected = _render(tokenizer, messages, gen=True)
        if fmt.render(messages) != expected:
            raise InputError(
                "export: the chat template is not a fixed wrapper per role (it renders "
                f"{expected!r} for {messages!r}); Ollama's TEMPLATE cannot reproduce it"
            )
    return len(PROBES)


def _literal(text: str, what: str) -> str:
    if "{{" in text or "}}" in text or '"""' in text:
        raise InputError(f"export: the chat template's {what} contains '{{{{', '}}}}' or '\"\"\"'")
    return text


def go_template(fmt: ChatFormat) -> str:
    """The wrappers as an Ollama (Go) TEMPLATE over .Messages, without the BOS (Ollama adds it). No `{{-`
    trim markers: they would eat the newlines that the wrappers end with."""
    roles = [r for r in ROLES if fmt.fold is None or r != "system"]
    branches = "{{ else if ".join(
        f'eq .Role "{role}" }}}}{_literal(fmt.prefix[role], role + " prefix")}'
        + (
            _FOLD.format(fold=_literal(fmt.fold, "system fold"))
            if role == "user" and fmt.fold is not None
            else ""
        )
        + f"{{{{ .Content }}}}{_literal(fmt.suffix[role], role + ' suffix')}"
        for role in roles
    )
    head = ""
    if fmt.fold is not None:  # keep the system message for the first user turn
        head = '{{ $system := "" }}'
        branches = 'eq .Role "system" }}{{ $system = .Content }}{{ else if ' + branches
    return (
        f"{head}{{{{ range .Messages }}}}{{{{ if {branches}{{{{ end }}}}{{{{ end }}}}"
        f"{_literal(fmt.generation_prompt, 'generation prompt')}"
    )


_FOLD = '{{{{ if $system }}}}{{{{ $system }}}}{fold}{{{{ $system = "" }}}}{{{{ end }}}}'


def stop_tokens(tokenizer: PreTrainedTokenizerBase, fmt: ChatFormat, eos_ids: list[int]) -> list[str]:
    """End-of-turn tokens: the model's eos tokens, and the special token that opens a user turn (so a
    model that runs past its answer stops before writing the user's next message)."""
    stops = [str(tokenizer.convert_ids_to_tokens(i)) for i in eos_ids]
    specials = set(tokenizer.all_special_tokens) | {
        t.content for t in tokenizer.added_tokens_decoder.values() if t.special
    }
    opener = next(
        (s for s in sorted(specials, key=len, reverse=True) if fmt.prefix["user"].startswith(s)), None
    )
    if opener is not None:
        stops.append(opener)
    return list(dict.fromkeys(s for s in stops if s))


def modelfile(gguf_name: str, fmt: ChatFormat, stops: list[str], num_ctx: int) -> str:
    """The Modelfile text: FROM the GGUF beside it, the TEMPLATE, the default system message, stops."""
    lines = [
        "# Ollama Modelfile written by genz-speak's export stage: ollama create NAME -f Modelfile",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{go_template(fmt)}"""',
    ]
    if fmt.default_system is not None:
        lines.append(f'SYSTEM """{_literal(fmt.default_system, "default system message")}"""')
    lines += [f"PARAMETER stop {_quote(s)}" for s in stops]
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
