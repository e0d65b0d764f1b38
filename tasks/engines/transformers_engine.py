"""The transformers backend: batched, left-padded `model.generate` on CPU or one CUDA GPU.

It computes whole batches (`generate_batch`, `score_batch`); `make_engine` puts a BatchingEngine
(batching.py) in front of it, which gathers the requests in flight into those batches.

Example:
    engine = TransformersEngine(EngineSpec(backend="transformers"))   # embedded SmolLM2, bf16 here
    [[c1, c2]] = engine.generate_batch([[{"role": "user", "content": "Name a prime."}]],
                                       SamplingParams(n=2, temperature=0.8, seed=0, max_tokens=16))
    c1.text, c1.completion_tokens, c1.finish_reason

Counting rule (shared with the vLLM backend): completion_tokens counts the generated tokens up to and
including the one that ends the completion (the eos token, or the token that completes a stop
string); token_logprobs has one entry per counted token, taken from the raw (un-tempered) logits.
Prefix reuse: with n > 1 sampled completions per prompt, each prompt is prefilled once and its KV cache
copied n times (`reuse_prefix`, on by default), instead of generate prefilling every prompt n times
(`num_return_sequences`); bench/prefix_reuse.py compares the two.
Context: a prompt whose tokens plus max_tokens exceed the model's context (max_position_embeddings) is
not run; it gets empty completions with finish_reason "prompt_too_long" (scores of -inf), and the rest
of its batch runs as usual (base.prompt_too_long).
Threads: spec.threads or all cores. On a box whose cores are also busy with other work, several
spin-waiting OpenMP threads can run many times slower than one (measured 30x on 2 shared cores); start
the process with OMP_WAIT_POLICY=PASSIVE or pass threads=1 there.
Run its tests: .venv/bin/python -m pytest tests/tasks/engines/test_transformers_engine.py
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Sequence

from .base import (
    Completion, ContinuationScores, EngineSpec, Message, SamplingParams, continuation_ids, fits_context,
    prompt_too_long, split_prefill, truncate_at_stop, unscorable,
)
from .model_files import resolve_model_dir


class TransformersEngine:
    # Rows (prompts x samples) per generate call: bounds KV-cache and logits memory; 32 is where
    # CPU throughput stops improving for the 135M model (FACTS.md).
    micro_batch_rows = 32
    # Sequences per scoring forward pass: judge prompts are long (~1k tokens), one pass holds them all.
    score_batch_rows = 8
    # n > 1 samples per prompt: prefill the prompt once and copy its KV cache n times. False: let generate
    # prefill each prompt n times (num_return_sequences), the plain path the benchmark compares against.
    reuse_prefix = True

    def __init__(self, spec: EngineSpec, reuse_prefix: bool | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec = spec
        if reuse_prefix is not None:
            self.reuse_prefix = reuse_prefix
        self.device = _pick_device(spec.device)
        self.dtype = _pick_dtype(spec.dtype, self.device)
        if self.device == "cpu":
            # A Ray actor starts with OMP_NUM_THREADS=1; the engine should use the cores it was given.
            torch.set_num_threads(spec.threads or os.cpu_count() or 1)
        model_dir = resolve_model_dir(spec.model)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype).to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self._eos_ids = set(eos) | {self.tokenizer.eos_token_id}
        self._end_ids = self._eos_ids | {self.tokenizer.pad_token_id}  # what follows a finished row
        # The model's context: a longer prompt (+ its new tokens) is answered prompt_too_long, not run.
        config = self.model.config
        self.context = (getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
                        or spec.max_model_len)

    def render(self, messages: list[Message]) -> str:
        """The prompt text for one conversation (continues a trailing assistant message)."""
        messages, prefill = split_prefill(messages)
        return self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=prefill is None,
            continue_final_message=prefill is not None,
        )

    def generate_batch(self, conversations: Sequence[list[Message]], params: SamplingParams) -> list[list[Completion]]:
        import torch

        if params.seed is not None:
            torch.manual_seed(params.seed)
        prompts = [self.render(c) for c in conversations]
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        greedy = params.temperature == 0
        per_prompt = 1 if greedy else params.n  # greedy samples are identical: generate once, copy
        step = max(1, self.micro_batch_rows // per_prompt)
        # Prompts that do not fit the context keep their prompt_too_long answer; the rest are generated.
        results = [prompt_too_long(n, params) for n in lengths]
        fit = [i for i, n in enumerate(lengths) if fits_context(n, params.max_tokens, self.context)]
        # Similar lengths together means less padding; results are put back in input order.
        order = sorted(fit, key=lambda i: len(prompts[i]))
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            groups = self._generate_batch([prompts[i] for i in chunk], params, per_prompt)
            for i, group in zip(chunk, groups):
                results[i] = [replace(group[0]) for _ in range(params.n)] if greedy else group
        return results

    def _generate_batch(self, prompts: list[str], params: SamplingParams, per_prompt: int) -> list[list[Completion]]:
        import torch

        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        # top_k=0: transformers otherwise samples from the top 50 only; vLLM and our contract do not.
        sampling = dict(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        with torch.inference_mode():
            if self.reuse_prefix and per_prompt > 1 and ids.shape[1] > 1:
                inputs, repeats = self._prefilled(ids, mask, per_prompt), 1
            else:
                inputs, repeats = dict(input_ids=ids, attention_mask=mask), per_prompt
            out = self.model.generate(
                **inputs,
                max_new_tokens=params.max_tokens,
                num_return_sequences=repeats,
                pad_token_id=self.tokenizer.pad_token_id,
                stop_strings=list(params.stop) or None,
                tokenizer=self.tokenizer if params.stop else None,
                return_dict_in_generate=True,
                output_logits=params.logprobs,
                **(sampling if params.temperature > 0 else dict(do_sample=False)),
            )
        generated = out.sequences[:, ids.shape[1] :]  # rows: prompt 0's samples, then prompt 1's, ...
        new_ids = generated.tolist()
        prompt_lens = mask.sum(dim=1).tolist()
        logprobs = None
        if params.logprobs:
            # (rows, steps): log-softmax of the raw logits at the token actually chosen.
            logits = torch.stack(out.logits, dim=1).float()
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, generated.unsqueeze(-1)).squeeze(-1).tolist()
        groups = []
        for p, prompt_len in enumerate(prompt_lens):
            group = []
            for r in range(p * per_prompt, (p + 1) * per_prompt):
                group.append(self._completion(new_ids[r], prompt_len, params, logprobs[r] if logprobs else None))
            groups.append(group)
        return groups

    def _prefilled(self, ids, mask, copies: int) -> dict:
        """generate's inputs for `copies` samples of each prompt, with the KV cache of all but each
        prompt's last token computed once per prompt and repeated (rows in generate's order: a prompt's
        copies next to each other). Left padding makes the last column a real token in every row, so
        generate, finding a cache one token shorter than the inputs, runs only that token per sample."""
        from transformers import DynamicCache

        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate counts them: real tokens only
        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                   past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(copies)
        return dict(input_ids=ids.repeat_interleave(copies, dim=0),
                    attention_mask=mask.repeat_interleave(copies, dim=0), past_key_values=cache)

    def score_batch(self, conversations: Sequence[list[Message]],
                    continuations: Sequence[str]) -> list[ContinuationScores]:
        """log P(continuation | conversation) from one forward pass per distinct prefix: single-token
        continuations (" A", " B") all read the prompt's last position, so they cost one pass together."""
        import torch

        conts = continuation_ids(self.tokenizer, continuations)
        prompts = [self.tokenizer(self.render(c), add_special_tokens=False)["input_ids"] for c in conversations]
        keep = max(len(c) for c in conts)  # positions whose logits any continuation needs
        fit = [fits_context(len(p), keep, self.context) for p in prompts]  # the rest are unscorable
        # A continuation of k tokens is predicted by the last k positions of prompt + its first k-1 tokens.
        prefixes = sorted({tuple(p + c[:-1]) for p, ok in zip(prompts, fit) if ok for c in conts}, key=len)
        logprobs_at: dict[tuple, "torch.Tensor"] = {}
        for start in range(0, len(prefixes), self.score_batch_rows):
            chunk = prefixes[start : start + self.score_batch_rows]
            width = len(chunk[-1])
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([[pad] * (width - len(x)) + list(x) for x in chunk], device=self.device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk], device=self.device)
            # Left padding: positions must count real tokens only, as in generate.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                    logits_to_keep=keep).logits[:, -keep:, :]
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            for prefix, row in zip(chunk, logprobs):
                logprobs_at[prefix] = row
        out = []
        for prompt, ok in zip(prompts, fit):
            if not ok:
                out.append(unscorable(len(prompt), continuations))
                continue
            scores = []
            for cont in conts:
                rows = logprobs_at[tuple(prompt + cont[:-1])][keep - len(cont) :]
                scores.append(float(sum(rows[t, token] for t, token in enumerate(cont))))
            out.append(ContinuationScores(logprobs=scores, prompt_tokens=len(prompt)))
        return out

    def _completion(self, ids: list[int], prompt_len: int, params: SamplingParams, logprobs: list[float] | None) -> Completion:
        end = next((k for k, t in enumerate(ids) if t in self._end_ids), len(ids))
        text, stopped = truncate_at_stop(self._decode(ids[:end]), params.stop)
        if stopped:
            count = end  # generation stopped at the token completing the stop string ...
            while count > 1 and truncate_at_stop(self._decode(ids[: count - 1]), params.stop)[1]:
                count -= 1  # ... unless the stop string was already complete earlier
        elif end < len(ids) and ids[end] in self._eos_ids:
            count, stopped = end + 1, True  # the eos token counts, as in vLLM
        else:
            count = end
        return Completion(
            text=text,
            prompt_tokens=int(prompt_len),
            completion_tokens=count,
            finish_reason="stop" if stopped else "length",
            token_logprobs=logprobs[:count] if logprobs is not None else None,
        )

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def close(self) -> None:
        import gc

        import torch

        self.model = None
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()


def _pick_device(device: str) -> str:
    import torch

    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise RuntimeError("EngineSpec(device='cuda') but torch sees no CUDA GPU (CPU torch build or no GPU)")
    return "cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu"


def _pick_dtype(dtype: str, device: str):
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_bf16() else torch.float32


def _cpu_has_bf16() -> bool:
    """Native bf16 matmuls (avx512_bf16 / amx_bf16): otherwise bf16 on CPU is slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
