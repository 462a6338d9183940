"""A curation row as a terminal shows it (review, show): captured text goes through
``visible``; feedback, flags and a live student's disagreement in one line each."""

from __future__ import annotations

import json
from typing import Any

import click

from curation.cli.output import visible
from curation.curate import answers

NOT_REPORTED = "not reported"


def tokens(row: dict[str, Any]) -> str:
    """Usage as the upstream reported it; a stream without include_usage reports none."""
    given, got = (row.get(k) for k in ("prompt_tokens", "completion_tokens"))
    if given is None and got is None:
        return f"tokens {NOT_REPORTED}"
    shown = [NOT_REPORTED if n is None else str(n) for n in (given, got)]
    return f"tokens {shown[0]} in / {shown[1]} out"


def feedback_summary(counts: dict[str, int]) -> str:
    """Feedback from production at a glance: ``+2 / -1`` (positive / negative events)."""
    return f"+{counts.get('positive', 0)} / -{counts.get('negative', 0)}"


def feedback_event(e: dict[str, Any]) -> str:
    """One feedback event, as ``show`` lists it under the row (captured text: ``visible``)."""
    score = "" if e.get("score") is None else f" {e['score']:+g}"
    parts = [f"  {e['created_at']:%Y-%m-%d %H:%M} feedback #{e['id']}{score}"]
    parts += [f"[{e['label']}]"] if e.get("label") else []
    parts += [" ".join(str(e["comment"]).split())[:200]] if e.get("comment") else []
    parts += ["(with a correction)"] if e.get("correction") is not None else []
    return " ".join(parts)


def disagreement_lines(d: dict[str, Any] | None) -> list[str]:
    """A live student's answer beside the teacher's, where they disagreed (serve --shadow)."""
    if d is None:
        return []

    def said(message: Any) -> str:
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return visible(message["content"])
        return visible(json.dumps(message)[:2000])

    return [
        click.style(
            f"disagreement ({d['kind']}, {d['created_at']:%Y-%m-%d %H:%M}):", fg="yellow", bold=True
        ),
        f"  teacher: {said(d['teacher_answer'])}",
        f"  student {visible(d['student_model'])}: {said(d['student_answer'])}",
    ]


def render(row: dict[str, Any], progress: str | None = None) -> str:
    """One row for a terminal: captured text goes through ``visible``, labels are styled."""
    original = answers.text(answers.recorded(row.get("response")))
    lines = [
        click.style(f"#{row['id']}", bold=True)
        + f"  {row['state']}  seen {row['times_seen']}x, last {row['last_seen_at']:%Y-%m-%d %H:%M}"
        + (f"  [{progress}]" if progress else ""),
        click.style("prompt:", bold=True),
        visible(row["user_prompt"]),
        click.style("answer:", bold=True),
        visible(answers.pretty(original)),
    ]
    if row.get("corrected_response"):
        lines += [
            click.style("correction:", bold=True),
            visible(answers.pretty(answers.text(row["corrected_response"]))),
        ]
    if row.get("proposed_response"):
        lines += [
            click.style(
                f"proposed by {visible(row.get('proposed_by'))} (a accept / r reject):", bold=True
            ),
            visible(answers.pretty(answers.text(row["proposed_response"]))),
        ]
    fb = row.get("feedback") or {}  # counts the caller added (show, review); none: no line
    if fb.get("total"):
        corrections = f", {fb['corrections']} with a correction" if fb.get("corrections") else ""
        lines.append(
            f"feedback: {feedback_summary(fb)} ({fb['total']} event{'s' if fb['total'] != 1 else ''}"
            f"{corrections})"
        )
    if row.get("flags"):
        accepted = row.get("flags_accepted_by")
        lines.append(
            click.style(f"flags: {', '.join(row['flags'])}", fg="yellow", bold=True)
            + (f" (accepted by {visible(accepted)})" if accepted else " (including accepts them)")
        )
    if row.get("note"):
        lines.append(f"note: {visible(row['note'])}")
    lines.append(
        f"model {visible(row.get('model'))}, {tokens(row)}, tags {json.dumps(row.get('tags') or {})}"
    )
    if row.get("system_prompt"):
        sp = " ".join(visible(row["system_prompt"]).split())
        lines.append(f"production prompt: {sp[:200]}{'…' if len(sp) > 200 else ''}")
    return "\n".join(lines)
