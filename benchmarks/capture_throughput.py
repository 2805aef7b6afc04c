"""Capture throughput on the default model, against a plain Hugging Face forward pass with logits.

    .venv/bin/python benchmarks/capture_throughput.py [--model gemma-3-270m] [--batches 6]

Target (issue 4): full-depth capture >= 1.2x the plain forward pass (it skips the unembedding),
single-layer capture faster still. Also prints achieved FLOP/s as a fraction of this machine's
measured dense float32 matmul FLOP/s. Same batches, same sequence lengths, warm-up excluded.
"""

from __future__ import annotations

import argparse
import time

import torch

from emolib.capture import _forward_batch, tokenize
from emolib.data import load_stories
from emolib.models import load_model


def matmul_flops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    model = load_model(args.model, device="cpu")
    cfg = model.cfg
    texts = [s.text for s in load_stories()][: args.batches * args.batch_size]
    ids = tokenize(model, texts)
    batches = [ids[i: i + args.batch_size] for i in range(0, len(ids), args.batch_size)]
    n_tokens = sum(map(len, ids))
    pad = model.tokenizer.pad_token_id or 0

    def padded(batch):
        w = max(map(len, batch))
        toks = torch.full((len(batch), w), pad)
        mask = torch.zeros(len(batch), w, dtype=torch.long)
        for i, b in enumerate(batch):
            toks[i, : len(b)] = torch.tensor(b)
            mask[i, : len(b)] = 1
        return toks, mask

    hf = model.original_model
    prepared = [padded(b) for b in batches]

    def hf_forward():
        with torch.no_grad():
            for toks, mask in prepared:
                hf(input_ids=toks, attention_mask=mask)

    all_layers = tuple(range(cfg.n_layers))
    mid = (cfg.n_layers // 2,)
    t_hf = timed(hf_forward, 1)
    t_all = timed(lambda: [_forward_batch(model, b, all_layers, "mean", 10) for b in batches], 1)
    t_mid = timed(lambda: [_forward_batch(model, b, mid, "mean", 10) for b in batches], 1)

    block_params = sum(p.numel() for n, p in hf.named_parameters() if ".layers." in n)
    flops_all = 2 * block_params * n_tokens
    flops_hf = flops_all + 2 * cfg.d_model * cfg.d_vocab * n_tokens
    peak = matmul_flops()
    print(f"model {args.model}: {cfg.n_layers} layers, d_model {cfg.d_model}, vocab {cfg.d_vocab}; "
          f"{len(batches)} batches x {args.batch_size}, {n_tokens} tokens; threads {torch.get_num_threads()}")
    print(f"plain HF forward with logits : {n_tokens / t_hf:8.0f} tokens/s  ({flops_hf / t_hf / 1e9:.1f} GFLOP/s)")
    print(f"capture, all {cfg.n_layers} layers      : {n_tokens / t_all:8.0f} tokens/s  ({flops_all / t_all / 1e9:.1f} GFLOP/s)")
    print(f"capture, layer {mid[0]} only        : {n_tokens / t_mid:8.0f} tokens/s")
    print(f"ratio all-layer capture / HF forward : {t_hf / t_all:.2f}x (target >= 1.2x)")
    print(f"ratio single-layer / all-layer       : {t_all / t_mid:.2f}x")
    print(f"dense fp32 matmul peak               : {peak / 1e9:.1f} GFLOP/s; capture achieves "
          f"{flops_all / t_all / peak:.0%} of it, the HF forward {flops_hf / t_hf / peak:.0%}")


if __name__ == "__main__":
    main()
