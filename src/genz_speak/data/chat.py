"""How a question becomes a chat turn: the one place that defines the student's prompt format."""

from __future__ import annotations

from typing import Any


def user_message(row: dict[str, Any]) -> str:
    """The user turn for a Dolly row: the instruction, then its context when there is one."""
    if row.get("context"):
        return f"{row['instruction']}\n\n{row['context']}"
    return row["instruction"]


def prompt_completion(row: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """A conversational prompt-completion record for TRL: loss falls on the completion only."""
    return {
        "prompt": [{"role": "user", "content": user_message(row)}],
        "completion": [{"role": "assistant", "content": row["output"]}],
    }


def chat_prompts(tokenizer: Any, rows: list[dict[str, Any]], n: int) -> list[str]:
    """The chat prompts of the first `n` rows as the model sees them, ready for its answer (merge and
    export compare models on these)."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": user_message(r)}], tokenize=False, add_generation_prompt=True
        )
        for r in rows[:n]
    ]


def encoded_prompts(tokenizer: Any, rows: list[dict[str, Any]], n: int) -> Any:
    """`chat_prompts`, tokenized as one padded batch."""
    return tokenizer(
        chat_prompts(tokenizer, rows, n), return_tensors="pt", padding=True, add_special_tokens=False
    )
