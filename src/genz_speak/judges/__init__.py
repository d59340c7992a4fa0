"""Judging answers on three criteria, offline or through an LLM, and holding judges to labelled answers."""

# The rubric's criteria (src/genz_speak/judges/rubric.txt), in the order every judge reports them.
CRITERIA = ("genz_style", "helpfulness", "coherence")
