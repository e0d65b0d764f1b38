#!/usr/bin/env bash
# bench/sim_gpu.py on the synchronous design this repo had before issue 12 (commit dc61ab5: every
# generator one engine call per batch of --batch-size rows, its turns in lock step): the baseline the
# per-row programs are measured against. It checks that commit out in a temporary worktree, adds the
# sim engine (this tree's tasks/engines/sim.py and base.py) behind the old batch-wise interface
# (`generate(conversations, params)` = SimEngine.generate_batch, which blocks for as long as the batch
# alone takes), runs the benchmark there, and removes the worktree. Arguments go to bench/sim_gpu.py.
#
#   bash bench/sim_baseline.sh                       # 2,000 rows each, 2 rounds, speed 2
#   bash bench/sim_baseline.sh --generators math-programs --rows 300 --rounds 1
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
BASE=$(mktemp -d)/dc61ab5
git worktree add --detach "$BASE" dc61ab5 >/dev/null
trap 'git -C "$REPO" worktree remove --force "$BASE"' EXIT
cp tasks/engines/sim.py tasks/engines/base.py "$BASE/tasks/engines/"
cat >> "$BASE/tasks/engines/__init__.py" <<'PY'


_make_engine = make_engine


def make_engine(spec):
    """The sim backend behind the old synchronous, batch-wise interface."""
    if spec.backend == "sim":
        from .sim import SimEngine

        class SyncSim(SimEngine):
            generate = SimEngine.generate_batch
            score_continuations = SimEngine.score_batch

        return SyncSim(spec)
    return _make_engine(spec)
PY
# Ray workers import `tasks` from the working directory: run from the worktree.
export DATAGEN_DATA=${DATAGEN_DATA:-$REPO/data}
cd "$BASE" && DATAGEN_REPO="$BASE" "$PY" "$REPO/bench/sim_gpu.py" --design "sync batches (dc61ab5)" \
  --json "$REPO/bench/results/sim_gpu.jsonl" "$@"
