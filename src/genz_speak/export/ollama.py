"""An Ollama Modelfile whose TEMPLATE is derived from the model's own (Jinja) chat template.

Ollama templates are Go templates, so the Jinja template cannot be copied over. Most chat templates wrap
each message in a fixed prefix and suffix per role; `decompose` finds those by rendering conversations
with sentinel contents, and `check_roundtrip` proves that the wrappers reproduce the Jinja rendering of
several conversations exactly, so the TEMPLATE is known to build the prompt the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from genz_speak.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

ROLES = ("system", "user", "assistant")
_S = {role: f"\x00{role.upper()}\x00" for role in ROLES}  # contents no template alters or emits


@dataclass(frozen=True)
class ChatFormat:
    """A chat template as per-role wrappers: a message renders as prefix + content + suffix."""

    prefix: dict[str, str]
    suffix: dict[str, str]
    generation_prompt: str
    default_system: str | None  # the system message the template adds when a conversation has none

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if self.default_system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.default_system}, *messages]
        text = "".join(self.prefix[m["role"]] + m["content"] + self.suffix[m["role"]] for m in messages)
        return text + (self.generation_prompt if add_generation_prompt else "")


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], gen: bool = False) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen))


def _split(text: str, sentinel: str, where: str) -> tuple[str, str]:
    if text.count(sentinel) != 1:
        raise InputError(f"export: the chat template does not render a {where} message's content once")
    before, after = text.split(sentinel)
    return before, after


def decompose(tokenizer: PreTrainedTokenizerBase) -> ChatFormat:
    """The template's per-role wrappers, found by rendering conversations of sentinel contents."""
    msgs = [{"role": role, "content": _S[role]} for role in ROLES]
    prefix: dict[str, str] = {}
    suffix: dict[str, str] = {}
    done = ""
    for n, role in enumerate(ROLES, start=1):
        try:
            text = _render(tokenizer, msgs[:n])
        except Exception as err:  # a template that rejects a role (e.g. no system turns) raises anything
            raise InputError(f"export: the chat template cannot render a {role} message: {err}") from err
        if not text.startswith(done):
            raise InputError(f"export: adding a {role} message changes how earlier messages render")
        prefix[role], suffix[role] = _split(text[len(done) :], _S[role], role)
        done = text
    pair = msgs[:2]
    generation_prompt = _render(tokenizer, pair, gen=True).removeprefix(_render(tokenizer, pair))
    # A template may add its own system message when the conversation starts without one.
    alone = _render(tokenizer, msgs[1:2])
    user_turn = prefix["user"] + _S["user"] + suffix["user"]
    default_system = None
    if alone != user_turn:
        head = alone.removesuffix(user_turn)
        if not (head.startswith(prefix["system"]) and head.endswith(suffix["system"]) and alone != head):
            raise InputError(
                "export: the chat template adds text before a lone user message that is not a "
                "system message; Ollama's TEMPLATE cannot express it"
            )
        default_system = head[len(prefix["system"]) : len(head) - len(suffix["system"])]
    return ChatFormat(prefix, suffix, generation_prompt, default_system)


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
    """The wrappers as an Ollama (Go) TEMPLATE over .Messages. No `{{-` trim markers: they would eat the
    newlines that the wrappers end with."""
    branches = "{{ else if ".join(
        f'eq .Role "{role}" }}}}{_literal(fmt.prefix[role], role + " prefix")}{{{{ .Content }}}}'
        f"{_literal(fmt.suffix[role], role + ' suffix')}"
        for role in ROLES
    )
    return (
        f"{{{{ range .Messages }}}}{{{{ if {branches}{{{{ end }}}}{{{{ end }}}}"
        f"{_literal(fmt.generation_prompt, 'generation prompt')}"
    )


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
