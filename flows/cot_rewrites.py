"""The cot-rewrites flow: route each item (expand / rewrite / unify), rewrite it into `Step k:` lines
with its family's step template, verify the answer is kept, optionally label steps by Monte Carlo.
The generator is tasks/generators/cot_rewrites/; the runtime runs it.

Run it:
    datagen run cot-rewrites --input samples/math_word_problems.jsonl --limit 5 --data-dir ./datasets
or from Python:
    from flows.cot_rewrites import cot_rewrites, CotRewritesSettings
    cot_rewrites(CotRewritesSettings(input="samples/math_word_problems.jsonl", limit=5))
"""
from __future__ import annotations

from prefect import flow

from tasks.generators.cot_rewrites import CotRewrites, CotRewritesSettings
from tasks.runtime.pipeline import run_generator


@flow(name="cot-rewrites", log_prints=True)
def cot_rewrites(settings: CotRewritesSettings) -> dict:
    """Answer-preserving chain-of-thought rewrites into the cot_rewrites table."""
    return run_generator(CotRewrites, settings)


__all__ = ["CotRewritesSettings", "cot_rewrites"]
