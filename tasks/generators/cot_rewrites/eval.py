"""Evaluations of the cot-rewrites generator on real, human-made data.

1. `datagen eval cot-answers` — answer preservation. Every MATH-500 reference solution (LaTeX,
   `\\boxed{}`) and a GSM8K sample (`#### N`) is fed to the verifier as if it were a rewrite: it must
   be accepted against its own gold (>= 98%) and rejected against another problem's answer (the next
   problem whose gold is not equivalent). Exit code 1 when a threshold is missed.
2. `datagen eval step-labels` — step labels against human labels. BIG-Bench Mistake traces carry a
   human-marked first mistake; the Monte-Carlo binary search (step_labels.py) runs on a sample
   with the chosen model, and its first bad step is compared with the human index, next to the chance
   rate (a uniform guess among "no mistake" and the k steps) and the majority-class rate.

Example:
    datagen eval cot-answers
    datagen eval step-labels --input data/big_bench_mistake/multistep_arithmetic.jsonl --limit 30 --engine vllm
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path

from tasks.runtime.inputs import InputError, read_rows

from .verify import answers_equivalent, verify_text

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"
ACCEPT_THRESHOLD = 0.98
REJECT_THRESHOLD = 0.98


def add_answers_arguments(p) -> None:
    p.add_argument("--math500", default=default_path("math500", "test500.jsonl"), help="MATH-500 JSONL (all rows)")
    p.add_argument("--gsm8k", default=default_path("gsm8k", "train.jsonl"), help="GSM8K JSONL")
    p.add_argument("--gsm8k-sample", type=int, default=1000, help="GSM8K rows sampled (0 = all)")
    p.add_argument("--seed", type=int, default=0)


def add_step_labels_arguments(p) -> None:
    from tasks.engines.base import BACKENDS, DEFAULT_BACKEND, DEFAULT_MODEL, DEVICES

    p.add_argument("--input", default=default_path("big_bench_mistake", "multistep_arithmetic.jsonl"))
    p.add_argument("--limit", type=int, default=30, help="traces sampled (default 30)")
    p.add_argument("--continuations", type=int, default=4, help="continuations per probed prefix (default 4)")
    p.add_argument("--max-tokens", type=int, default=128, help="max tokens per continuation")
    p.add_argument("--out", help="write per-trace results as JSONL")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=BACKENDS, default=DEFAULT_BACKEND)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--device", choices=DEVICES, default="auto")


# ---------------------------------------------------------------- answer preservation


def reference_items(math500: str | Path | None, gsm8k: str | Path | None, gsm8k_sample: int = 1000,
                    seed: int = 0) -> dict[str, list[dict]]:
    """{"math500": [{"id", "solution", "gold"}], "gsm8k": [...]}: reference solutions and golds."""
    out = {}
    if math500:
        out["math500"] = [{"id": r.get("unique_id", str(n)), "solution": r["solution"], "gold": r["answer"]}
                          for n, r in read_rows(math500)]
    if gsm8k:
        rows = [{"id": f"gsm8k-{n}", "solution": r["answer"], "gold": r["answer"].rsplit("####", 1)[1].strip()}
                for n, r in read_rows(gsm8k)]
        random.Random(seed).shuffle(rows)
        out["gsm8k"] = rows[:gsm8k_sample] if gsm8k_sample else rows
    return out


def answer_preservation(items: list[dict]) -> dict:
    """Accept rate against own gold, reject rate against another problem's gold, reasons of both."""
    own, other = Counter(), Counter()
    own_failures = []
    for i, item in enumerate(items):
        verdict = verify_text(item["solution"], item["gold"])
        own[verdict.reason or "kept"] += 1
        if not verdict.kept:
            own_failures.append({"id": item["id"], "reason": verdict.reason, "gold": item["gold"],
                                 "extracted": verdict.extracted_answer})
        j = (i + 1) % len(items)
        while j != i and answers_equivalent(items[j]["gold"], item["gold"]) is True:
            j = (j + 1) % len(items)
        wrong = verify_text(item["solution"], items[j]["gold"])
        other[wrong.reason or "kept"] += 1
    n = len(items)
    return {"n": n, "accepted_own": own["kept"], "accept_rate": own["kept"] / n if n else 0.0,
            "rejected_other": n - other["kept"], "reject_rate": (n - other["kept"]) / n if n else 0.0,
            "own_reasons": dict(own), "other_reasons": dict(other), "own_failures": own_failures}


def main_answers(args) -> int:
    t0 = time.monotonic()
    datasets = reference_items(args.math500, args.gsm8k, args.gsm8k_sample, args.seed)
    ok = True
    print(f"answer preservation (reference solutions fed as rewrites; thresholds: accept >= {ACCEPT_THRESHOLD:.0%}, "
          f"reject >= {REJECT_THRESHOLD:.0%})")
    for name, items in datasets.items():
        result = answer_preservation(items)
        passed = result["accept_rate"] >= ACCEPT_THRESHOLD and result["reject_rate"] >= REJECT_THRESHOLD
        ok &= passed
        print(f"  {name:8s} n={result['n']:5d}  accepted vs own gold {result['accepted_own']:5d} "
              f"({result['accept_rate']:.2%})  rejected vs another's gold {result['rejected_other']:5d} "
              f"({result['reject_rate']:.2%})  {'ok' if passed else 'BELOW THRESHOLD'}")
        print(f"           own-gold reasons {result['own_reasons']}; other-gold reasons {result['other_reasons']}")
        for failure in result["own_failures"][:5]:
            print(f"           not accepted: {failure}")
    print(f"  {time.monotonic() - t0:.1f} s")
    return 0 if ok else 1


# ---------------------------------------------------------------- step labels vs human labels


def load_mistake_traces(path: str | Path, limit: int | None, seed: int = 0) -> list[dict]:
    """BIG-Bench Mistake rows -> {"id", "question", "gold_answer", "steps", "human_first_error" (1-based | None)}."""
    traces = []
    for n, row in read_rows(path):
        for column in ("input", "steps", "target"):
            if column not in row:
                raise InputError(path, n, f"missing column {column!r} (BIG-Bench Mistake rows: input, steps, target, mistake_index)")
        index = row.get("mistake_index")
        traces.append({"id": f"{Path(path).stem}-{n}", "question": row["input"], "gold_answer": str(row["target"]),
                       "steps": list(row["steps"]), "human_first_error": None if index is None else int(index) + 1})
    random.Random(seed).shuffle(traces)
    return traces[:limit] if limit else traces


async def label_trace(trace: dict, engine, params, family: str) -> dict:
    """One trace's first-error search (one request of `params.n` continuations per probed prefix)."""
    from .messages import solve_messages
    from .step_labels import FirstErrorSearch, monte_carlo_value, run_search

    def messages_for(prefix: int) -> list[dict]:
        return solve_messages(trace["question"], family, trace["steps"][:prefix])

    s = await run_search(FirstErrorSearch(n_steps=len(trace["steps"])),
                         monte_carlo_value(engine, params, trace["gold_answer"], messages_for))
    return {**trace, "predicted_first_error": s.first_error_step, "status": s.status, "root_value": s.values.get(0),
            "step_values": s.step_values(), "probes": len(s.values), "continuations": len(s.values) * params.n}


async def label_traces(traces: list[dict], engine, continuations: int, max_tokens: int, seed: int,
                       family: str, temperature: float = 0.7) -> list[dict]:
    """Every trace's search at once (each probes at its own pace); results in the traces' order."""
    from tasks.engines.base import SamplingParams

    params = SamplingParams(n=continuations, temperature=temperature, max_tokens=max_tokens, seed=seed)
    return list(await asyncio.gather(*(label_trace(t, engine, params, family) for t in traces)))


def agreement_report(results: list[dict]) -> dict:
    n = len(results)
    agree = sum(r["predicted_first_error"] == r["human_first_error"] for r in results)
    informative = [r for r in results if r["status"] in ("no_error", "error_found")]
    majority_label, majority_count = Counter(r["human_first_error"] for r in results).most_common(1)[0]
    return {
        "n": n, "agreement": agree / n,
        "chance": sum(1 / (len(r["steps"]) + 1) for r in results) / n,
        "majority_label": majority_label, "majority_rate": majority_count / n,
        "informative": len(informative),
        "agreement_informative": (sum(r["predicted_first_error"] == r["human_first_error"] for r in informative)
                                  / len(informative)) if informative else None,
        "statuses": dict(Counter(r["status"] for r in results)),
        "continuations": sum(r["continuations"] for r in results),
        "probes": sum(r["probes"] for r in results),
        "probes_exhaustive": sum(len(r["steps"]) + 1 for r in results),
    }


def main_step_labels(args) -> int:
    from tasks.engines import EngineSpec, make_engine

    from .messages import detect_family

    t0 = time.monotonic()
    traces = load_mistake_traces(args.input, args.limit, args.seed)
    family = detect_family(traces[0]["question"], subject=Path(args.input).stem) if traces else "generic"
    engine = make_engine(EngineSpec(backend=args.engine, model=args.model, device=args.device))
    try:
        results = asyncio.run(label_traces(traces, engine, args.continuations, args.max_tokens, args.seed,
                                           family))
    finally:
        engine.close()
    report = agreement_report(results)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in results))
    print(f"step labels vs human first-mistake labels: {args.input} ({report['n']} traces, family {family}, "
          f"{args.continuations} continuations per probe, {args.engine}, {engine.spec.model_id})")
    print(f"  agreement with the human index: {report['agreement']:.1%}   chance (uniform over no-mistake + k steps): "
          f"{report['chance']:.1%}   majority class ({report['majority_label']}): {report['majority_rate']:.1%}")
    if report["agreement_informative"] is not None:
        print(f"  on the {report['informative']} traces where the model solved the question alone (search informative): "
              f"{report['agreement_informative']:.1%}")
    print(f"  search outcomes: {report['statuses']}")
    print(f"  cost: {report['probes']} probes ({report['probes_exhaustive']} to score every prefix), "
          f"{report['continuations']} continuations, {time.monotonic() - t0:.0f} s")
    return 0


def default_path(*parts: str) -> str:
    return str(SHARED.joinpath(*parts))
