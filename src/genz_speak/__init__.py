"""genz-speak: teach a small instruct LLM to answer in Gen Z voice, as a DVC pipeline."""

__version__ = "0.1.0"
