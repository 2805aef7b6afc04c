"""Steered greedy generation, tokens per second, measured side by side in one run:

1. batched steered (``emolib.generation.generate_batch``: all prompts on the batch axis, left padding,
   KV cache) against the bridge path used before (``model.generate``, one prompt at a time, steered
   with ``steer``): target at least 5x;
2. batched steered against batched unsteered on the same prompts: target at least 0.9x.

    .venv/bin/python benchmarks/steered_generation.py [--model gemma-3-270m] [--prompts 16] [--tokens 32] [--reps 2]

Steering adds the *calm* vector of the model's committed run at its layer (a random unit direction at
the middle layer when there is none; the speed of an addition does not depend on the vector). Every
condition generates exactly ``--tokens`` new tokens (no stop at end-of-sequence); repetitions are
interleaved so drift in the machine's speed hits all conditions alike. Medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

# Measure the checkout this file is in, whatever emolib the environment has installed (an editable
# install may point at another clone).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emolib.book import ROOT, run_slug
from emolib.chat import encode_chat
from emolib.experiments import TONE_PROMPTS, layer_norms
from emolib.generation import generate_batch
from emolib.hooks import count_live_hooks
from emolib.models import load_model
from emolib.runs import read_json
from emolib.steering import random_direction, steer
from emolib.vectors import EmotionVectors


def direction_and_layer(model, model_name: str, emotion: str):
    run = ROOT / "book" / "runs" / run_slug(model_name)
    if (run / "vectors.safetensors").is_file() and (run / "steering.json").is_file():
        info = read_json(run / "steering.json")
        vectors = EmotionVectors.load(run / "vectors", model=model)
        return (vectors.vector(emotion, info["layer"], unit=True), info["layer"], info["norm"],
                f"'{emotion}' vector at layer {info['layer']}")
    layer = model.cfg.n_layers // 2
    return (random_direction(model.cfg.d_model, seed=0), layer, layer_norms(model, layer)[layer],
            f"random direction at layer {layer}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--emotion", default="calm")
    ap.add_argument("--alpha", type=float, default=0.1)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model, device="cpu")
    direction, layer, norm, what = direction_and_layer(model, args.model, args.emotion)
    prompts = [encode_chat(model.tokenizer, [{"role": "user", "content": p}]) for p in TONE_PROMPTS[: args.prompts]]
    n = len(prompts)
    added = (args.alpha * norm * direction.float())[None, :].repeat(n, 1)

    def bridge_one_at_a_time() -> list[list[int]]:
        outs = []
        for ids in prompts:
            t = torch.tensor([ids])
            with torch.no_grad(), steer(model, direction=direction, layers=[layer], alpha=args.alpha, norms={layer: norm}):
                out = model.generate(t, max_new_tokens=args.tokens, do_sample=False, use_past_kv_cache=True,
                                     stop_at_eos=False, verbose=False)
            outs.append(out[0, len(ids):].tolist())
        return outs

    conditions = {
        "bridge, one at a time, steered": bridge_one_at_a_time,
        "batched, steered": lambda: generate_batch(model, prompts, max_new_tokens=args.tokens, added=added,
                                                   layer=layer, batch_size=n, stop_at_eos=False),
        "batched, unsteered": lambda: generate_batch(model, prompts, max_new_tokens=args.tokens, batch_size=n,
                                                     stop_at_eos=False),
    }
    rates: dict[str, list[float]] = {k: [] for k in conditions}
    outs = {}
    for rep in range(args.reps + 1):  # the first round warms up
        for name, fn in conditions.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            seconds = time.perf_counter() - t0
            assert all(len(o) == args.tokens for o in outs[name])
            if rep:
                rates[name].append(n * args.tokens / seconds)
    assert count_live_hooks(model) == 0, "steering left a hook behind"
    med = {k: statistics.median(v) for k, v in rates.items()}
    same = sum(a == b for a, b in zip(outs["bridge, one at a time, steered"], outs["batched, steered"]))
    print(f"model {args.model}; steering: {what}, alpha {args.alpha:g}; {n} prompts x {args.tokens} new tokens, "
          f"greedy, KV cache, {args.reps} interleaved repetitions, {torch.get_num_threads()} threads")
    for k, v in rates.items():
        print(f"  {k:32s} {med[k]:6.1f} tokens/s (runs: {', '.join(f'{r:.1f}' for r in v)})")
    print(f"batched steered / bridge one at a time: {med['batched, steered'] / med['bridge, one at a time, steered']:.2f}x "
          f"(target >= 5)")
    print(f"batched steered / batched unsteered:    {med['batched, steered'] / med['batched, unsteered']:.3f}x "
          f"(target >= 0.9)")
    print(f"identical greedy continuations, batched vs one at a time: {same} of {n}")


if __name__ == "__main__":
    main()
