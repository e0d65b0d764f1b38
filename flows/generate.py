"""The generic generator flow: runs any generator — built-in, an installed entry point, or a
`path/to/file.py:ClassName` of your own — with the same runtime as the built-in flows. The CLI and the
recipe DAG run every generator through it (under the generator's own name); a Prefect deployment of
your own generator points its entrypoint here:

    - name: passage-qa-nightly
      entrypoint: flows/generate.py:generate
      parameters: {generator: "examples/passage_qa/generator.py:PassageQA",
                   settings: {input: examples/passage_qa/passages.jsonl, data_dir: ./datasets}}
"""
from __future__ import annotations

from prefect import Flow, flow

from tasks.generators import load_generator
from tasks.runtime.pipeline import run_generator


@flow(name="generate", log_prints=True)
def generate(generator: str, settings: dict) -> dict:
    """Run the generator `generator` names with `settings` (its settings model's fields)."""
    return run_generator(load_generator(generator), settings)


def flow_for(generator: str) -> Flow:
    """The generic flow under the generator's own name (what the Prefect UI lists)."""
    return generate.with_options(name=load_generator(generator).name)
