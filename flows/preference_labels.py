"""The preference-labels flow: self-reference AI preference labels over pairs, judged in both orders,
with a strength. The generator is tasks/generators/preference_labels/ (the method: its program.py;
`datagen eval preferences` and `datagen export preferences`: its eval.py and export.py); the runtime
runs it.

Run it:
    datagen run preference-labels --pairs pairs.jsonl --limit 20 --data-dir ./datasets    # prompt, response_a, response_b
    datagen run preference-labels --prompts prompts.jsonl --candidates 2 --data-dir ./datasets
or from Python:
    from flows.preference_labels import preference_labels, PreferenceLabelsSettings
    preference_labels(PreferenceLabelsSettings(pairs="pairs.jsonl"))
"""
from __future__ import annotations

from prefect import flow

from tasks.generators.preference_labels import PreferenceLabels, PreferenceLabelsSettings
from tasks.runtime.pipeline import run_generator


@flow(name="preference-labels", log_prints=True)
def preference_labels(settings: PreferenceLabelsSettings) -> dict:
    """Preference labels for pairs (or sampled candidates) into the preference_labels table."""
    return run_generator(PreferenceLabels, settings)


__all__ = ["PreferenceLabelsSettings", "preference_labels"]
