"""Statistics over judged answers, the evaluation report, and plots."""
