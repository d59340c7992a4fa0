"""How the evaluation is named and shown: group labels, judge names, criterion titles, and the Markdown
tables that `metrics/report.md` and the model card both print (one renderer, so they cannot disagree).

Only the metrics dict is read here (what `metrics/evaluate.json` holds), so the model card can render it
without the judges or the statistics behind it.
"""

from __future__ import annotations

from typing import Any

# The original project's comparison, plus the base model's own answers.
GROUPS = {
    "base": "Base (raw instruction)",
    "base_model": "Base model answers",
    "gen": "Gen (fine-tuned answers)",
    "train": "Train (teacher outputs)",
}
JUDGES = {"offline": "Offline judge", "llm": "LLM judge"}
CRITERION_TITLES = {"genz_style": "Gen Z style", "helpfulness": "Helpfulness", "coherence": "Coherence"}


def short_label(group: str) -> str:
    """A group's label on two lines, for plot axes and legends."""
    return GROUPS.get(group, group).replace(" (", "\n(")


def _cell(s: dict[str, Any] | None) -> str:
    if not isinstance(s, dict) or s.get("mean") is None:
        return "–"
    text = f"{s['mean']:.2f}"
    if s.get("std") is not None:
        text += f" ± {s['std']:.2f}"
    if s.get("ci_low") is not None:
        text += f" [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"
    return text + (f" (n={s['n']})" if s.get("n") is not None else "")


def group_table(groups: dict[str, dict[str, Any]]) -> str:
    """Group x criterion: mean ± std [95% interval] (n), whatever groups and criteria the metrics hold."""
    criteria = list(dict.fromkeys(c for g in groups.values() for c in g))
    lines = ["| group | " + " | ".join(criteria) + " |", "|---|" + "---|" * len(criteria)]
    for group, stats in groups.items():
        lines.append(
            f"| {GROUPS.get(group, group)} | " + " | ".join(_cell(stats.get(c)) for c in criteria) + " |"
        )
    return "\n".join(lines)


def paired_table(paired: dict[str, dict[str, Any]]) -> str:
    """The paired Gen - Base model difference per criterion, with its 95% interval and n."""
    lines = ["| criterion | difference | interval | n |", "|---|---|---|---|"]
    for c, d in paired.items():
        if d.get("mean") is None:
            lines.append(f"| {c} | – | – | 0 |")
        else:
            lines.append(f"| {c} | {d['mean']:+.3f} | [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | {d['n']} |")
    return "\n".join(lines)


PAIRED_CAPTION = "Gen − Base model, paired over the same questions (95% bootstrap interval):"


def judge_section(judge: str, m: dict[str, Any], level: str = "##") -> str:
    """One judge's group table and paired differences, under a heading naming the judge."""
    name = JUDGES.get(judge, judge)
    if judge == "llm" and m.get("usage", {}).get("model"):
        name += f" ({m['usage']['model']})"
    text = f"{level} {name}\n\n{group_table(m.get('groups', {}))}\n"
    if m.get("paired"):
        text += f"\n{PAIRED_CAPTION}\n\n{paired_table(m['paired'])}\n"
    return text


def _judge_notes(judge: str, m: dict[str, Any], run: dict[str, Any]) -> str:
    if judge == "offline" and "style_model" in m:
        acc = m["style_model"]["heldout_accuracy"]
        return (
            "Style model held-out accuracy on the corpus: "
            + ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
            + f" ({m['style_model']['test_texts']} texts)."
            + (
                f" Ending model (cut-offs) held-out accuracy: {m['ending_model']['heldout_accuracy']:.3f}."
                if "ending_model" in m
                else ""
            )
        )
    if judge == "llm" and "usage" in m:
        u, spent = m["usage"], run.get("llm") or {}
        text = f"{u['judgements']} judgements, {u['failed']} failed"
        if spent:  # every run's requests that built these judgements (metrics/run/evaluate.json)
            text += f"; {spent['requests']} requests, about ${spent['cost_usd']:.4f}"
        return text + "."
    return ""


def report(metrics: dict[str, Any], run: dict[str, Any] | None = None) -> str:
    """metrics/report.md: per judge the group table and the paired difference, then surface statistics;
    `run` (how the run went) adds the LLM judge's requests and cost."""
    lines = [f"# genz-speak evaluation\n\n{metrics['questions']} questions (held-out + validation).\n"]
    for judge in metrics["judges"]:
        m = metrics[judge]
        lines += [judge_section(judge, m), _judge_notes(judge, m, run or {}), ""]
    if "agreement_spearman" in metrics:
        lines += [
            "## Offline vs LLM judge (Spearman over every judged text)\n",
            *(f"- {c}: {v}" for c, v in metrics["agreement_spearman"].items()),
            "",
        ]
    lines += [
        "## Surface statistics\n",
        "| group | distinct opening trigrams | answers with emoji | mean words | words ÷ Train's | ended by "
        "themselves |",
        "|---|---|---|---|---|---|",
    ]
    for group, s in metrics["surface"].items():
        ratio = f"{s['words_vs_train']:.2f}" if "words_vs_train" in s else "–"
        ended = f"{s['ended_share']:.0%}" if "ended_share" in s else "–"
        lines.append(
            f"| {GROUPS.get(group, group)} | {s['distinct_openings']}/{s['n']} | {s['emoji_share']:.0%} "
            f"| {s['mean_words']} | {ratio} | {ended} |"
        )
    return "\n".join(lines) + "\n"


def evaluation_section(metrics: dict[str, Any]) -> str:
    """The model card's evaluation: per judge the same tables as metrics/report.md."""
    judges = [j for j in metrics.get("judges", []) if metrics.get(j, {}).get("groups")]
    if not judges:
        return "No evaluation metrics were found for this run."
    intro = (
        f"On {metrics.get('questions', '?')} questions the model never trained on; scores in [0, 1] by the "
        "rubric of genz-speak's `docs/judge_rubric.md` (Gen Z style, helpfulness, coherence). Each cell: "
        "mean ± std [95% bootstrap interval] (n)."
    )
    return intro + "\n\n" + "\n".join(judge_section(j, metrics[j], "###") for j in judges)
