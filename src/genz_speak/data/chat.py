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
