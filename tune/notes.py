"""The report's answer where the user looks: optuna-dashboard's notes and the study's user attributes.

The study note gets answer.md (the recommendation, the dominance headline, the rule and the
verdict table); each front point gets a trial note with its verdicts, the recommended one
marked first, and the reference one that says so. Optuna refuses to change a finished
trial, user attributes included, so the marks are trial notes (optuna-dashboard shows them
on the trial's page and keeps them in the study's system attributes); the study's user
attributes front_trials, recommended_trial and recommendation say the same to programs
(--export --trial recommended). With a budget, every complete trial outside it gets a trial
note saying which bounds it breaks (the study's user attributes budget and infeasible_trials
list them). A note keeps what a user wrote in it: only the part between BEGIN and END is
this module's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import optuna
import pandas as pd
from optuna_dashboard import get_note, save_note

BEGIN = "<!-- vitsweep report: begin -->"
END = "<!-- vitsweep report: end -->"
FRONT_ATTR = "front_trials"
RECOMMENDED_ATTR = "recommended_trial"
RECOMMENDATION_ATTR = "recommendation"
REFERENCE_ATTR = "reference_trial"
BUDGET_ATTR = "budget"
INFEASIBLE_ATTR = "infeasible_trials"


def replace_section(note: str, section: str) -> str:
    """Return `note` with its BEGIN..END part replaced by `section` (added on top when absent; removed when empty)."""
    head, tail = note, ""
    if BEGIN in note and END in note.split(BEGIN, 1)[1]:
        head, rest = note.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    elif note.strip():
        head, tail = "", "\n\n" + note
    block = f"{BEGIN}\n{section}\n{END}" if section else ""
    return (head + block + tail).strip("\n") + "\n" if (head + block + tail).strip() else ""


def _trial_section(row: pd.Series, objectives, recommendation: str | None) -> str:
    parts = []
    for name, _ in objectives:
        word = row.get(f"verdict_{name}")
        flag = row.get(f"noninferior_{name}")
        if str(flag) in ("True", "False"):
            word = f"{word}, {'non-inferior' if str(flag) == 'True' else 'not non-inferior'}"
        parts.append(f"{name} {word}")
    line = "On the Pareto front of the last report; against the reference: " + "; ".join(parts) + "."
    return f"**Recommended.** {recommendation}\n\n{line}" if recommendation else line


def publish_answer(study: optuna.Study, answer: str, table: pd.DataFrame, objectives,
                   budget: str | None = None, infeasible: Mapping[int, str] | None = None) -> int | None:
    """Write `answer` (answer.md's text) into the study's dashboard note and mark the front (pareto.csv's
    `table`) on its trials' notes and in the study's user attributes; return the recommended trial or None.

    `budget` (its --budget text) and `infeasible` ({trial number: the bounds it breaks}) mark the
    trials outside the budget the same way."""
    front = table[table["role"] == "front"]
    recommended_rows = front[front["recommended"].astype(str) == "True"] if "recommended" in front else front[:0]
    recommended = int(recommended_rows["number"].iloc[0]) if len(recommended_rows) else None
    recommendation = answer.splitlines()[0] if answer else ""
    save_note(study, replace_section(get_note(study), answer))
    sections = {int(row["number"]): _trial_section(row, objectives,
                                                   recommendation if int(row["number"]) == recommended else None)
                for _, row in front.iterrows()}
    for number in table.loc[table["role"] == "reference", "number"]:
        sections[int(number)] = ("The reference the last report's verdicts compare with"
                                 + (", itself on the Pareto front." if int(number) in sections else "."))
    for number, broken in sorted((infeasible or {}).items()):
        line = f"Outside the budget {budget} of the last report: {broken}."
        sections[int(number)] = f"{sections[int(number)]}\n\n{line}" if int(number) in sections else line
    # Points an earlier report marked lose their mark when they are no longer on the front.
    for number in [*study.user_attrs.get(FRONT_ATTR, []), *study.user_attrs.get(REFERENCE_ATTR, []),
                   *study.user_attrs.get(INFEASIBLE_ATTR, [])]:
        sections.setdefault(int(number), "")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number, section in sorted(sections.items()):
        if number in trials:
            handle = optuna.trial.Trial(study, trials[number]._trial_id)
            save_note(handle, replace_section(get_note(handle), section))
    study.set_user_attr(FRONT_ATTR, sorted(int(n) for n in front["number"]))
    study.set_user_attr(REFERENCE_ATTR, [int(n) for n in table.loc[table["role"] == "reference", "number"]])
    study.set_user_attr(RECOMMENDED_ATTR, recommended)
    study.set_user_attr(RECOMMENDATION_ATTR, recommendation)
    study.set_user_attr(BUDGET_ATTR, budget)
    study.set_user_attr(INFEASIBLE_ATTR, sorted(int(n) for n in (infeasible or {})))
    return recommended


def recorded_recommendation(study: optuna.Study) -> tuple[int | None, str | None]:
    """Return (the trial the last report recommended, or None; that report's line, or None before any report)."""
    number = study.user_attrs.get(RECOMMENDED_ATTR)
    number = None if number is None or (isinstance(number, float) and math.isnan(number)) else int(number)
    return number, study.user_attrs.get(RECOMMENDATION_ATTR)
