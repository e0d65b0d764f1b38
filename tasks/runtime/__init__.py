"""The runtime every generator runs on, written once: the Generator protocol (generator.py), the run's
settings (settings.py), reading inputs (inputs.py), the Ray stages (ray_stage.py), the runs table
(runs.py) and the Prefect pipeline load → plan → stages → commit → summary (pipeline.py).

What a generator of your own imports:
    from tasks.runtime import Generator, LLMStage, CPUStage, Source, RunSettings
(pipeline.py, which imports Prefect, is imported only by the flows.)
"""
from .generator import Command, CPUStage, Generator, LLMStage, Plan, Source
from .inputs import (
    InputError, Rejected, RowChecks, column_id, column_text, content_id, pick_column, read_rows, select_rows,
)
from .settings import RunSettings

__all__ = ["CPUStage", "Command", "Generator", "InputError", "LLMStage", "Plan", "Rejected", "RowChecks", "RunSettings",
           "Source", "column_id", "column_text", "content_id", "pick_column", "read_rows", "select_rows"]
