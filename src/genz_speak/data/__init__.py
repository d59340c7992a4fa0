"""Source questions in Dolly's schema: loading, validation and the deterministic split."""
