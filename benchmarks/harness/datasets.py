"""Seeded, bounded request sets: random token ids or fixed prompts.

Both are pure functions of their arguments (same seed, same requests), so two endpoints in a
comparison see exactly the same load. Random-token prompts are sent as token-id lists (the
OpenAI completions API accepts `prompt: list[int]`, and vLLM honours it), which makes the
prompt length exact without a tokenizer, the way vLLM's random dataset intends.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness.errors import HarnessError

# Short, varied instructions; generic on purpose (no model-specific chat template needed).
BUILTIN_PROMPTS = (
    "Write a short story about a robot learning to paint.",
    "Explain how a rainbow forms.",
    "List some tips for staying productive while working from home.",
    "Describe the water cycle in simple terms.",
    "What are the benefits of regular exercise?",
    "Summarize the history of the printing press.",
    "Give me a recipe for a simple tomato soup.",
    "Why is the sky blue?",
)


@dataclass(frozen=True)
class SampleRequest:
    prompt: str | list[int]
    prompt_len: int  # exact for token ids; -1 when unknown (text prompts, known only from usage)
    output_len: int


def _lengths(rng: random.Random, mean: int, range_ratio: float, n: int) -> list[int]:
    """Uniform in [mean*(1-r), mean*(1+r)] like vLLM's --random-range-ratio; r=0 gives exactly `mean`."""
    if mean < 1:
        raise HarnessError("bad_length", "input and output lengths must be >= 1", usage=True)
    if not 0 <= range_ratio < 1:
        raise HarnessError("bad_range_ratio", "--range-ratio must be in [0, 1)", usage=True)
    low, high = max(1, int(mean * (1 - range_ratio))), max(1, int(mean * (1 + range_ratio)))
    return [rng.randint(low, high) for _ in range(n)]


def random_tokens(num_requests: int, input_len: int, output_len: int, vocab_size: int, *, seed: int,
                  range_ratio: float = 0.0, first_token_id: int = 100) -> list[SampleRequest]:
    """Prompts of uniformly random token ids in [first_token_id, vocab_size)."""
    if num_requests < 1:
        raise HarnessError("bad_num_requests", "--num-requests must be >= 1", usage=True)
    if vocab_size <= first_token_id:
        raise HarnessError("bad_vocab", f"vocab size {vocab_size} must exceed the first token id {first_token_id}",
                           usage=True)
    rng = random.Random(seed)
    ins = _lengths(rng, input_len, range_ratio, num_requests)
    outs = _lengths(rng, output_len, range_ratio, num_requests)
    return [SampleRequest([rng.randrange(first_token_id, vocab_size) for _ in range(n_in)], n_in, n_out)
            for n_in, n_out in zip(ins, outs)]


def fixed_prompts(num_requests: int, output_len: int, *, seed: int, prompts: tuple[str, ...] = BUILTIN_PROMPTS,
                  shuffle: bool = True) -> list[SampleRequest]:
    """The given prompts cycled to `num_requests`, in a seeded order."""
    if num_requests < 1:
        raise HarnessError("bad_num_requests", "--num-requests must be >= 1", usage=True)
    if not prompts:
        raise HarnessError("empty_prompts", "the prompt list is empty", usage=True)
    if output_len < 1:
        raise HarnessError("bad_length", "output length must be >= 1", usage=True)
    order = list(range(len(prompts)))
    if shuffle:
        random.Random(seed).shuffle(order)
    return [SampleRequest(prompts[order[i % len(order)]], -1, output_len) for i in range(num_requests)]


def load_prompts(path: str | Path) -> tuple[str, ...]:
    """One prompt per non-empty line."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise HarnessError("prompts_unreadable", f"cannot read prompts file {path}: {exc}", usage=True) from None
    return tuple(line for line in (x.strip() for x in lines) if line)


def vocab_size_from_model_dir(model_dir: str | Path) -> int:
    """`vocab_size` from a Hugging Face model folder's config.json."""
    path = Path(model_dir) / "config.json"
    try:
        return int(json.loads(path.read_text())["vocab_size"])
    except (OSError, ValueError, KeyError) as exc:
        raise HarnessError("no_vocab_size", f"cannot read vocab_size from {path}: {exc}", usage=True) from None
