"""Capture throughput: the book's capture against a plain Hugging Face body pass, in float32 and bfloat16.

    .venv/bin/python benchmarks/capture_throughput.py [--models gemma-3-270m,smollm2-135m-instruct] [--rounds 3]

Targets (issue 13), each a ratio of times measured side by side in one run, on the same texts and
batches: configurations are interleaved round by round (in reverse order every other round, so that a
drift of the machine's speed favours neither end), a ratio is taken within each round, and the median
of the per-round ratios is reported with their range (warm-up excluded); each timed pass starts from a
collected, trimmed heap (:func:`settle`), so that its time does not depend on what ran before it. Two
shared cores vary by a few percent from one pass to the next, so a ratio within its range of 1.0 is
parity, not a difference:

- capture at every layer vs a plain HF body pass without logits, same dtype: >= 1.0x. "Plain" is a
  Hugging Face model loaded anew from the same weights with its default attention (``sdpa``), run
  without a key/value cache (``use_cache=False``, the fastest plain pass; HF's default builds a cache,
  printed for reference): the bridge replaces the HF model's own modules with its components, so
  ``bridge.original_model.model`` is the bridge's pass, not a plain one. The body pass with eager
  attention (the bridge forces eager so that attention patterns can be hooked) and the bridge's own
  pass without hooks are printed too, and so is the plain-HF way to capture every layer: the body
  pass with ``output_hidden_states=True`` and the same span means. "Capture" is
  :func:`emolib.capture.capture` on the texts, as the book calls it (tokenising, length order, hooks
  on every layer's ``hook_resid_post``, span means; layers compiled where ``torch.compile`` works,
  see :mod:`emolib.lean`), without its disk cache; the HF passes get the same batches already
  tokenised and padded. Where capture is compiled, two more references say where its speed comes
  from: the same capture with eager layers, and the plain HF body compiled whole
  (``torch.compile(body, dynamic=True)``, what a Hugging Face user would do);
- capture in the default dtype (``auto``: bfloat16 where the CPU computes it natively) vs the float32
  HF body pass: >= 2.0x;
- capture FLOP/s as a fraction of this machine's measured matmul peak in the same dtype.

Exit status 1 when a target is missed (so the numbers can gate a change), 0 otherwise.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

# Measure the checkout this file is in, whatever emolib the environment has installed (an editable
# install may point at another clone).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emolib.capture import capture, span_weights, tokenize
from emolib.generation import right_pad
from emolib.data import load_stories
from emolib.models import dtype_name, load_model, native_bf16, resolve_dtype


def _libc_trim():
    """glibc's ``malloc_trim``, or nothing where the C library has none."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda pad: 0


_malloc_trim = _libc_trim()


def settle() -> None:
    """Start a timed pass from a collected, trimmed heap, whatever the pass before it left there.

    Without this a configuration's time depends on its predecessor: the hidden states of every layer
    (``hf_states``) leave a large free heap, and the next pass's temporaries land in it differently.
    Measured on Gemma, bfloat16, 5 rounds: capture / plain HF body 0.916x [0.883, 0.971] without,
    0.995x [0.902, 1.006] with.
    """
    gc.collect()
    _malloc_trim(0)


def matmul_flops(dtype: torch.dtype, *, m: int = 2048, k: int = 640, n: int = 2048, reps: int = 20) -> float:
    """Dense matmul FLOP/s in ``dtype`` at the shapes of a small model's projections."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - t0)


def plain_hf(location: str, dtype: str, attn: str):
    """A Hugging Face model loaded anew from ``location``, untouched by the bridge."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(location, dtype=resolve_dtype(dtype),
                                                attn_implementation=attn).eval()


def bench_model(name: str, *, n_texts: int, batch_size: int, rounds: int) -> dict:
    default = dtype_name(resolve_dtype("auto", device="cpu"))
    # Where bfloat16 is emulated it runs about 100x slower than float32: timing it would take hours and
    # measure nothing the book uses (dtype auto picks float32 there).
    dtypes = ("float32", "bfloat16") if native_bf16("cpu") else ("float32",)
    models = {d: load_model(name, device="cpu", dtype=d) for d in dtypes}
    compiled = models["float32"].emolib_compiled
    eager = {d: load_model(name, device="cpu", dtype=d, compile=False) for d in dtypes} if compiled else {}
    any_model = models["float32"]
    texts = [s.text for s in load_stories()][:n_texts]
    ids = sorted(tokenize(any_model, texts), key=len)   # as capture does: length order keeps padding small
    batches = [ids[i: i + batch_size] for i in range(0, len(ids), batch_size)]
    n_tokens = sum(map(len, ids))
    pad = any_model.tokenizer.pad_token_id or 0
    prepared = [right_pad(b, pad) for b in batches]
    layers = tuple(range(any_model.cfg.n_layers))

    location = any_model.emolib_source["location"]
    plain = {(d, a): plain_hf(location, d, a) for d in dtypes for a in ("sdpa", "eager")}

    def body_pass(body, **options):
        def run():
            with torch.no_grad():
                for toks, mask in prepared:
                    body(input_ids=toks, attention_mask=mask, **options)
        return run

    def capture_all(model):
        return lambda: capture(model, texts, layers=layers, batch_size=batch_size, use_cache=False)

    # The spans capture pools, for the plain-HF capture.
    spans = [span_weights([len(ids) for ids in b]) for b in batches]

    def hf_states(body):
        def run():
            with torch.no_grad():
                for (toks, mask), (first, w) in zip(prepared, spans):
                    states = body(input_ids=toks, attention_mask=mask, use_cache=False,
                                  output_hidden_states=True).hidden_states[1:]
                    torch.stack([torch.bmm(w, h[:, first:].float())[:, 0] for h in states], dim=1)
        return run

    # The transformer without the unembedding: `.model` of a causal LM.
    configs = ({f"hf_body_{d}": body_pass(plain[d, "sdpa"].model, use_cache=False) for d in models}
               | {f"hf_cached_{d}": body_pass(plain[d, "sdpa"].model) for d in models}
               | {f"hf_eager_{d}": body_pass(plain[d, "eager"].model, use_cache=False) for d in models}
               | {f"bridge_body_{d}": body_pass(models[d].original_model.model, use_cache=False) for d in models}
               | {f"hf_states_{d}": hf_states(plain[d, "sdpa"].model) for d in models}
               | {f"capture_{d}": capture_all(models[d]) for d in models})
    if compiled:
        configs |= ({f"capture_eager_{d}": capture_all(eager[d]) for d in eager}
                    | {f"hf_compiled_{d}": body_pass(torch.compile(plain[d, "sdpa"].model, dynamic=True),
                                                     use_cache=False) for d in models})
    for fn in configs.values():
        fn()  # warm-up
    # Loading six models leaves about half a million Python objects for the cyclic collector to walk; a
    # full collection landing inside one configuration's pass costs it several percent at random. Move
    # them out of its reach once, for every configuration alike.
    gc.collect()
    gc.freeze()
    times: dict[str, list[float]] = {k: [] for k in configs}
    for r in range(rounds):
        for k, fn in (list(configs.items()) if r % 2 == 0 else list(configs.items())[::-1]):
            settle()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    t = {k: statistics.median(v) for k, v in times.items()}
    hf = plain["float32", "sdpa"]
    block_params = sum(p.numel() for n, p in hf.named_parameters() if ".layers." in n)
    flops = 2 * block_params * n_tokens
    peak = {d: matmul_flops(resolve_dtype(d)) for d in models}
    gc.unfreeze()
    return {"name": name, "default": default, "n_tokens": n_tokens, "t": t, "times": times, "flops": flops,
            "peak": peak, "n_layers": len(layers), "compiled": compiled}


def paired(times: dict[str, list[float]], reference: str, other: str) -> tuple[float, float, float]:
    """Median and range over rounds of ``time(reference) / time(other)``, each ratio within one round."""
    ratios = [a / b for a, b in zip(times[reference], times[other])]
    return statistics.median(ratios), min(ratios), max(ratios)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="gemma-3-270m,smollm2-135m-instruct")
    ap.add_argument("--texts", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    ok = True
    print(f"threads {torch.get_num_threads()}; default dtype here: {dtype_name(resolve_dtype('auto', device='cpu'))}")
    for name in args.models.split(","):
        r = bench_model(name, n_texts=args.texts, batch_size=args.batch_size, rounds=args.rounds)
        t, n = r["t"], r["n_tokens"]
        d = r["default"]
        print(f"\n{name}: {r['n_layers']} layers, {n} tokens in {args.texts} stories, batches of {args.batch_size}, "
              f"median of {args.rounds} interleaved rounds; ratios: median [range] of per-round ratios; capture's "
              f"layers {'compiled' if r['compiled'] else 'eager (torch.compile unavailable or EMOLIB_COMPILE=0)'}")
        for k in t:
            dt = k.rsplit("_", 1)[1]
            print(f"  {k:<18} {n / t[k]:7.0f} tokens/s  {r['flops'] / t[k] / 1e9:6.1f} GFLOP/s = "
                  f"{r['flops'] / t[k] / r['peak'][dt]:4.0%} of the {dt} matmul peak ({r['peak'][dt] / 1e9:.0f} GFLOP/s)")
        times = r["times"]
        references = ([("capture_eager", "the same capture with eager layers"),
                       ("hf_compiled", "HF body compiled whole")] if r["compiled"] else [])
        references += [("hf_cached", "HF body with its default key/value cache"),
                       ("hf_eager", "HF body with eager attention"), ("bridge_body", "the bridge's own pass"),
                       ("hf_states", "HF hidden states of every layer + the same span means")]
        for dt in r["peak"]:
            for other, label in references:
                m, lo, hi = paired(times, f"{other}_{dt}", f"capture_{dt}")
                print(f"  (capture / {label}, {dt}: {m:.3f}x [{lo:.3f}, {hi:.3f}], for reference)")
        checks = [(f"capture / plain HF body (sdpa, no cache), {dt}", paired(times, f"hf_body_{dt}", f"capture_{dt}"),
                   1.0) for dt in r["peak"]]
        checks.append((f"capture in the default dtype ({d}) / HF body float32",
                       paired(times, "hf_body_float32", f"capture_{d}"), 2.0))
        if d == "float32":
            print("  (no native bfloat16 on this CPU: the default dtype is float32, so the 2.0x target, which needs "
                  "bfloat16, cannot be met here)")
        for label, (ratio, lo, hi), target in checks:
            met = ratio >= target
            ok &= met
            verdict = "met" if met else ("MISSED (parity: the range holds 1.0)" if hi >= target else "MISSED")
            print(f"  {label:<56} {ratio:5.3f}x [{lo:.3f}, {hi:.3f}]  (target >= {target:.1f}x: {verdict})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
