"""How a question becomes a chat turn: the one place that defines the student's prompt format."""

from __future__ import annotations

from typing import Any

# Passed wherever the project renders a chat template (training rows, evaluation and check prompts, chat,
# the Modelfile): Qwen3's template opens a thinking block unless told not to, and a Gen Z answer has no
# reasoning to show; Llama 3.x's stamps today's date into its system turn, so a fixed date (the template's
# own fallback) keeps training rows and DVC outputs reproducible. Templates that use neither ignore them.
TEMPLATE_KWARGS: dict[str, Any] = {"enable_thinking": False, "date_string": "26 Jul 2024"}


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """`messages` through the tokenizer's chat template, as the project renders every prompt."""
    return str(
        tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **TEMPLATE_KWARGS
        )
    )


def user_message(row: dict[str, Any]) -> str:
    """The user turn for a Dolly row: the instruction, then its context when there is one."""
    if row.get("context"):
        return f"{row['instruction']}\n\n{row['context']}"
    return row["instruction"]


def prompt_completion(row: dict[str, Any]) -> dict[str, Any]:
    """A conversational prompt-completion record for TRL: loss falls on the completion only. No system
    turn: some templates (Gemma's) have no system role."""
    return {
        "prompt": [{"role": "user", "content": user_message(row)}],
        "completion": [{"role": "assistant", "content": row["output"]}],
        "chat_template_kwargs": TEMPLATE_KWARGS,  # TRL passes a row's own to the template
    }


def chat_prompts(tokenizer: Any, rows: list[dict[str, Any]], n: int) -> list[str]:
    """The chat prompts of the first `n` rows as the model sees them, ready for its answer (merge and
    export compare models on these)."""
    return [render(tokenizer, [{"role": "user", "content": user_message(r)}]) for r in rows[:n]]


def encoded_prompts(tokenizer: Any, rows: list[dict[str, Any]], n: int) -> Any:
    """`chat_prompts`, tokenized as one padded batch."""
    return tokenizer(
        chat_prompts(tokenizer, rows, n), return_tensors="pt", padding=True, add_special_tokens=False
    )
