"""Judging answers: the offline style-transfer triad and the LLM judge."""
