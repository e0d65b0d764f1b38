#!/usr/bin/env bash
# One-GPU check, a few minutes: the async LLM engine on CUDA, called directly (every request in flight
# at once) and as the pipeline's Ray Data actor stage (per-row programs in the engine actor on the GPU,
# the driver and CPU stages beside it), then a whole `datagen run math-programs` on CUDA with the
# engine's occupancy from its runs row. Prints a sample generation, tokens/s of both, the stage/direct
# ratio; writes the figures as JSON.
#
#   make setup && bash deploy/gpu-check.sh
#   GSM8K=/path/to/gsm8k/train.jsonl PROMPTS=256 bash deploy/gpu-check.sh
#
# Engines: transformers on CUDA always; vLLM too when `import vllm` works (install the CUDA `vllm`
# wheel yourself on a GPU box: it pins its own torch). The model is the embedded SmolLM2-135M unless
# MODEL=/path/to/hf-model-folder. Prompts are math-programs prompts with 8 few-shot exemplars
# (~800 tokens) over the first PROMPTS GSM8K questions, greedy, up to 128 new tokens.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
GSM8K=${GSM8K:-data/gsm8k/train.jsonl}  # your copy of GSM8K train (JSONL)
PROMPTS=${PROMPTS:-512}
BATCH=${BATCH:-64}
MODEL=${MODEL:-smollm2-135m}
RESULTS=${RESULTS:-bench/results}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_AUTH_MODE=disabled
# The sandbox (math-programs runs every program in it) needs bubblewrap on PATH.
command -v bwrap >/dev/null || { echo "gpu-check: bwrap not found: apt-get install bubblewrap (or put a bwrap binary on PATH)" >&2; exit 1; }
mkdir -p "$RESULTS"

echo "== GPU and a sample generation (transformers, cuda) =="
# Also materializes the model folder cache, so neither side of the benchmark pays that one-off cost.
"$PY" - "$GSM8K" "$MODEL" <<'EOF'
import asyncio, sys, time
import torch
from tasks.answers import answers_match
from tasks.engines import EngineSpec, SamplingParams, make_engine
from tasks.generators.math_programs import program as mp
from tasks.sandbox import isolation_report, run_program

assert torch.cuda.is_available(), "torch sees no CUDA GPU"
print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}")
problems = mp.load_problems(sys.argv[1], limit=2)
t0 = time.perf_counter()
engine = make_engine(EngineSpec(backend="transformers", model=sys.argv[2], device="cuda"))
print(f"engine ready in {time.perf_counter() - t0:.1f} s on {engine.backend.device}, dtype {engine.backend.dtype}")
params = SamplingParams(max_tokens=128, stop=mp.STOP, logprobs=True)

async def ask_all():
    return await asyncio.gather(*(engine.generate(mp.build_messages(p["question"], mp.fixed_exemplars()), params)
                                  for p in problems))

outs = asyncio.run(ask_all())
print(f"sandbox isolation: {isolation_report()}")
for p, (c,) in zip(problems, outs):
    parsed = mp.parse(c.text)
    verdict = parsed["parse_error"] or "parsed"
    if parsed["program"]:
        result = run_program(parsed["program"])
        verdict += f"; sandbox {result.status} -> {result.value!r} (gold {p['gold_answer']}, " \
                   f"{'correct' if result.value is not None and answers_match(result.value, p['gold_answer']) else 'not correct'})"
    print(f"--- {p['question'][:80]}...\n{mp.PREFILL}{c.text.strip()[:400]}\n[{c.completion_tokens} tokens, "
          f"finish {c.finish_reason}, mean logprob {sum(c.token_logprobs) / max(1, len(c.token_logprobs)):.3f}; {verdict}]")
EOF

echo "== transformers on cuda: direct vs Ray Data actor stage =="
"$PY" bench/llm_stage.py --engine transformers --device cuda --model "$MODEL" --prompts "$PROMPTS" \
  --batch-size "$BATCH" --exemplars 8 --data "$GSM8K" --json "$RESULTS/gpu-transformers.json"

if "$PY" -c "import vllm" 2>/dev/null; then
  echo "== vllm on cuda: direct vs Ray Data actor stage =="
  "$PY" bench/llm_stage.py --engine vllm --device cuda --model "$MODEL" --prompts "$PROMPTS" \
    --batch-size "$BATCH" --exemplars 8 --data "$GSM8K" --json "$RESULTS/gpu-vllm.json"
else
  echo "== vllm: not importable here, skipped (pip install vllm on a GPU box to include it) =="
fi
echo "== the whole flow on cuda: datagen run math-programs (per-row programs, transformers) =="
DATA_DIR=$(mktemp -d)
"$PY" -m flows.cli run math-programs --input "$GSM8K" --limit "${FLOW_PROBLEMS:-64}" --no-dynamic \
  --engine transformers --device cuda --model "$MODEL" --data-dir "$DATA_DIR" | tee "$RESULTS/gpu-flow.txt"
"$PY" -m flows.cli sql --data-dir "$DATA_DIR" "SELECT engine, engine_choice, engine_requests, round(engine_mean_in_flight, 1) AS mean_in_flight, round(engine_busy_fraction, 3) AS busy, wall_seconds, tokens_generated FROM runs" | tee -a "$RESULTS/gpu-flow.txt"
echo "figures: $RESULTS/gpu-*.json $RESULTS/gpu-flow.txt"
