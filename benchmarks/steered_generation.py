"""Steered against unsteered KV-cached greedy generation: tokens per second on the same prompts.

    .venv/bin/python benchmarks/steered_generation.py [--model gemma-3-270m] [--tokens 48] [--reps 3]

Target (issue 6): steered generation reaches at least 0.9x the tokens/s of unsteered generation.
Steering uses the model's committed run (its emotion vectors, chosen layer and residual norm from
``book/runs/<model>/``) when there is one, else a random unit direction at the middle layer; the
speed of a residual addition does not depend on which vector is added. Both conditions generate
exactly ``--tokens`` new tokens (no stop at end-of-sequence), and their repetitions are
interleaved so that drift in the machine's speed hits both alike. Medians are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from emolib.book import ROOT, run_slug
from emolib.chat import encode_chat
from emolib.experiments import layer_norms
from emolib.hooks import count_live_hooks
from emolib.models import load_model
from emolib.runs import read_json
from emolib.steering import random_direction, steer
from emolib.vectors import EmotionVectors

PROMPTS = (
    "Describe what you see on your walk to work this morning.",
    "Write a short note to a colleague about tomorrow's meeting.",
    "Tell me about the weather in your town today.",
    "What should I cook for dinner tonight?",
)


def steering_context(model, args):
    run = ROOT / "book" / "runs" / run_slug(args.model)
    if (run / "vectors.safetensors").is_file() and (run / "steering.json").is_file():
        info = read_json(run / "steering.json")
        vectors = EmotionVectors.load(run / "vectors", model=model)
        layer, norms = info["layer"], {info["layer"]: info["norm"]}
        return (lambda: steer(model, vectors, emotions=args.emotion, layers=[layer], alpha=args.alpha, norms=norms),
                f"'{args.emotion}' vector at layer {layer} (from {run.relative_to(ROOT)})")
    layer = model.cfg.n_layers // 2
    norms = layer_norms(model, layer)
    direction = random_direction(model.cfg.d_model, seed=0)
    return (lambda: steer(model, direction=direction, layers=[layer], alpha=args.alpha, norms=norms),
            f"random direction at layer {layer} (no committed run for this model)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--emotion", default="calm")
    ap.add_argument("--alpha", type=float, default=0.1)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model(args.model, device="cpu")
    make_ctx, what = steering_context(model, args)
    prompts = [torch.tensor([encode_chat(model.tokenizer, [{"role": "user", "content": p}])]) for p in PROMPTS]

    def run(steered: bool) -> tuple[float, list[list[int]]]:
        outs = []
        t0 = time.perf_counter()
        for ids in prompts:
            with torch.no_grad(), (make_ctx() if steered else contextlib.nullcontext()):
                out = model.generate(ids, max_new_tokens=args.tokens, do_sample=False, use_past_kv_cache=True,
                                     stop_at_eos=False, verbose=False)
            outs.append(out[0, ids.shape[1]:].tolist())
        seconds = time.perf_counter() - t0
        assert all(len(o) == args.tokens for o in outs)
        return len(prompts) * args.tokens / seconds, outs

    run(False), run(True)  # warm-up
    plain, steered = [], []
    for _ in range(args.reps):
        rate, plain_out = run(False)
        plain.append(rate)
        rate, steered_out = run(True)
        steered.append(rate)
    assert count_live_hooks(model) == 0, "steering left a hook behind"
    changed = sum(a != b for a, b in zip(plain_out, steered_out))
    p, s = statistics.median(plain), statistics.median(steered)
    print(f"model {args.model}; steering: {what}, alpha {args.alpha:g}, all positions")
    print(f"{len(prompts)} prompts x {args.tokens} new tokens, KV cache, greedy, batch 1, "
          f"{args.reps} interleaved repetitions, {torch.get_num_threads()} threads")
    print(f"unsteered: {p:.1f} tokens/s (runs: {', '.join(f'{r:.1f}' for r in plain)})")
    print(f"steered:   {s:.1f} tokens/s (runs: {', '.join(f'{r:.1f}' for r in steered)})")
    print(f"ratio steered/unsteered: {s / p:.3f} (target >= 0.9); steering changed {changed} of "
          f"{len(prompts)} continuations")


if __name__ == "__main__":
    main()
