"""Settings every generator flow shares: which engine runs the model, how batches are sized, where
Ray is. Each flow's settings class adds its own fields to these."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from tasks.engines.base import EngineSpec


class EngineSettings(BaseModel):
    engine: Literal["transformers", "vllm"] = "transformers"
    model: str = Field("smollm2-135m", description="'smollm2-135m' (embedded) or a local model folder")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(8, ge=1, description="source rows per engine call (and per committed file)")
    pool_size: int = Field(1, ge=1, description="engine actors (one model copy each)")
    ray_address: str | None = Field(None, description="join this Ray cluster instead of starting a local one")

    def engine_spec(self) -> EngineSpec:
        return EngineSpec(backend=self.engine, model=self.model, device=self.device)
