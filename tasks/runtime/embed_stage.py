"""Encoding a corpus as a Ray Data stage: a pool of actors, each holding the sentence encoder, fed in
batches; on a GPU node each actor takes a GPU, on CPUs one actor uses the node's cores.

    embed_corpus(ids, texts, out / "vectors.parquet", load_model=rf.load_minilm, encode=rf.encode)
    ids, vectors = read_vectors(out / "vectors.parquet")   # corpus order, unit float32 rows

The vectors table has `position` (the text's index in the corpus), `doc_id` and `vector`
(fixed-size list of float32): any Arrow or DuckDB reader can use it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class Encoder:
    """A Ray Data actor: `load_model(device)` once, then `encode(model, texts, batch_size)` (unit
    vectors) for each batch of texts."""

    def __init__(self, load_model: Callable, encode: Callable, batch_size: int):
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":  # Ray gives a one-CPU actor one thread; the encoder is the stage's only work
            torch.set_num_threads(os.cpu_count() or 1)
        self.model = load_model(device)
        self.encode, self.batch_size = encode, batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.encode(self.model, [str(t) for t in batch["text"]], self.batch_size)
        return {"position": batch["position"], "doc_id": batch["doc_id"], "vector": vectors}


def embed_corpus(ids: Sequence[str], texts: Sequence[str], out: str | Path, *, load_model: Callable,
                 encode: Callable, batch_size: int = 64, block_rows: int = 2048) -> int:
    """Encode `texts` on the running Ray cluster and write them to the Parquet file `out`.
    Returns the number of vectors written."""
    import ray
    import ray.data

    gpus = int(ray.cluster_resources().get("GPU", 0))
    items = [{"position": i, "doc_id": d, "text": t} for i, (d, t) in enumerate(zip(ids, texts))]
    ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // block_rows)))
    ds = ds.map_batches(
        Encoder, fn_constructor_kwargs={"load_model": load_model, "encode": encode, "batch_size": batch_size},
        batch_size=block_rows, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, gpus)),
        num_gpus=1 if gpus else 0, num_cpus=1,
    )
    writer, written = None, 0
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            vectors = np.asarray(batch["vector"], dtype=np.float32)
            table = pa.table({
                "position": pa.array(batch["position"], pa.int64()),
                "doc_id": pa.array([str(d) for d in batch["doc_id"]], pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1]),
            })
            if writer is None:
                writer = pq.ParquetWriter(str(out), table.schema)
            writer.write_table(table)
            written += len(table)
    finally:
        if writer is not None:
            writer.close()
    return written


def read_vectors(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(doc ids, vectors) in corpus order."""
    table = pq.read_table(str(path))
    order = np.argsort(table.column("position").to_numpy())
    column = table.column("vector").combine_chunks()
    vectors = column.values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
    ids = table.column("doc_id").to_pylist()
    return [ids[i] for i in order], np.ascontiguousarray(vectors[order], dtype=np.float32)
