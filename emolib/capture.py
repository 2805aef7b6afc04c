"""Capture pooled residual-stream activations over many texts.

``capture(model, texts, layers=...)`` returns ``[n_texts, n_layers, d_model]`` float32
activations of ``blocks.L.hook_resid_post``, pooled per text:

- ``"mean"``: the mean over token positions ``start`` onward (position 0 is the BOS token and is
  never included, so ``start`` is clamped to at least 1; a text shorter than ``start + 1`` tokens
  falls back to all its non-BOS tokens);
- ``"last"``: the last token;
- ``"all"``: every non-BOS token, returned as a list of ``[n_tokens_i, n_layers, d_model]``
  tensors (for the per-token monitor; never cached).

Batches are padded on the right with an attention mask, so real tokens never see padding. The
forward pass stops after the deepest requested layer: no later block and no unembedding runs.
Pooled results are cached on disk, keyed by the model's weights, the texts and the settings;
chunks are written atomically as they finish, so an interrupted run resumes where it stopped.
Every cache file carries a sha256 of its contents, checked on each load: a damaged chunk is
recomputed, a damaged final file is a :class:`CaptureCacheError` naming the folder to delete.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from emolib._io import atomic_write_bytes
from emolib.chat import encode
from emolib.generation import right_pad
from emolib.hooks import resid_hook_name
from emolib.models import CACHE_MARKER, cache_root
from emolib.progress import report
from emolib.sealed import Damaged, open_sealed, seal

__all__ = ["POOLINGS", "DEFAULT_START", "CaptureResult", "CaptureCacheError", "capture", "model_fingerprint",
           "tokenize", "span_weights", "mean_resid_norms", "residual_norm_profile"]

POOLINGS = ("mean", "last", "all")
DEFAULT_START = 10
# 2: every file carries a sha256 of its contents; 3: attention through sdpa (emolib.lean), rounding-level
# differences from 2, so activations cached before are not mixed with new ones; 4: the mean is one float32
# batched product with span weights (float32 rounding-level differences from a per-text sum); 5: the key
# says whether the layers ran compiled (emolib.lean), which rounds differently
CAPTURE_VERSION = 5


class CaptureCacheError(RuntimeError):
    """A cached activation file is unreadable or does not match what was asked for."""


class _StopForward(Exception):
    """Raised by the deepest capture hook so that nothing after it runs."""


@dataclass
class CaptureResult:
    activations: torch.Tensor | list[torch.Tensor]  # [n_texts, n_layers, d_model], or a list for "all"
    layers: tuple[int, ...]
    n_tokens: int          # tokens run through the model (BOS included, padding excluded)
    seconds: float         # wall time of the forward passes (0 when fully cached)
    from_cache: bool

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else float("nan")


def model_fingerprint(model) -> str:
    """A short hash identifying the model's weights (for cache keys)."""
    src = getattr(model, "emolib_source", None) or {"name": model.cfg.model_name, "location": ""}
    loc = Path(src["location"])
    h = hashlib.sha256(str(src["name"]).encode())
    marker = loc / CACHE_MARKER
    if marker.is_file():
        files = json.loads(marker.read_text())["files"]
        h.update(json.dumps({k: v["sha256"] for k, v in sorted(files.items())}).encode())
    elif loc.is_dir():
        for p in sorted(loc.iterdir()):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(str(next(model.parameters()).dtype).encode())
    return h.hexdigest()[:16]


def tokenize(model, texts: list[str], *, max_tokens: int | None = None) -> list[list[int]]:
    """Token ids per text, each with exactly one leading BOS (when the tokenizer has one)."""
    out = []
    for t in texts:
        ids = encode(model.tokenizer, t)
        out.append(ids[:max_tokens] if max_tokens else ids)
    return out


def _validate(model, texts, layers, pooling, start, batch_size) -> tuple[int, ...]:
    if not isinstance(texts, (list, tuple)) or not texts:
        raise ValueError("texts is empty: capture needs at least one text")
    if not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("every text must be a non-empty string")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
    n_layers = model.cfg.n_layers
    layers = tuple(range(n_layers)) if layers is None else tuple(int(x) for x in layers)
    if not layers:
        raise ValueError("layers is empty")
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range: the model has layers 0..{n_layers - 1}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"duplicate layers in {layers}")
    if start < 0:
        raise ValueError("start must be >= 0")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    return layers


def span_weights(lengths: list[int], *, start: int = DEFAULT_START) -> tuple[int, torch.Tensor]:
    """The pooled span of each right-padded text as weights: ``(first, [batch, 1, width - first])``.

    A text of ``n`` tokens is pooled over positions ``max(start, 1) .. n - 1`` (BOS never); a text too
    short for that over all its non-BOS positions, and a text that is only BOS over the BOS itself
    (nothing else to pool). ``first`` is the earliest pooled position in the batch; row ``i`` holds
    ``1 / span length`` on text ``i``'s span, shifted by ``first``, so that ``weights @ resid[:, first:]``
    is every span's mean.
    """
    lo_default = max(start, 1)
    spans = [(lo_default if n > lo_default else (1 if n > 1 else 0), n) for n in lengths]
    first = min(lo for lo, _ in spans)
    weights = torch.zeros(len(lengths), 1, max(lengths) - first)
    for i, (lo, hi) in enumerate(spans):
        weights[i, 0, lo - first: hi - first] = 1.0 / (hi - lo)
    return first, weights


class _Pooler:
    """The capture hooks for ``layers``: registered once for many batches, each batch setting its spans.

    Entering ``model.hooks`` rebuilds the bridge's map of every hook name (twice: forward and backward
    lists), which is a few milliseconds; once per batch that was a measurable part of a capture.
    """

    def __init__(self, layers: tuple[int, ...], pooling: str):
        self.layers, self.pooling, self.deepest = layers, pooling, max(layers)
        self.slot = {layer: i for i, layer in enumerate(layers)}
        self.weights: torch.Tensor | None = None   # "mean": [batch, 1, pos] float32, 1/n on each text's span
        self.first = 0                              # "mean": the earliest pooled position in the batch
        self.last_idx: torch.Tensor | None = None   # "last": [batch] position of each text's last token
        self.got: dict[int, torch.Tensor] = {}      # "last", "all": each layer's result for this batch
        # "mean": [n_layers, batch, 1, d_model] float32, reused by every batch: span means are written into
        # it in place. Keeping a fresh small result alive per layer while the model's large temporaries
        # come and go fragments the allocator's heap; measured side by side, that cost the model's own
        # kernels about 5% of a bfloat16 capture.
        self.means: torch.Tensor | None = None

    def begin(self, lengths: list[int], *, start: int, d_model: int, device) -> None:
        """Set the spans of the next batch, of texts ``lengths`` tokens long."""
        self.got = {}
        if self.pooling == "mean":
            self.first, weights = span_weights(lengths, start=start)
            self.weights = weights.to(device)
            m = self.means
            if m is None or m.shape[1] < len(lengths) or m.shape[3] != d_model or m.device != torch.device(device):
                self.means = torch.empty(len(self.layers), len(lengths), 1, d_model, device=device)
        elif self.pooling == "last":
            self.last_idx = torch.tensor(lengths, device=device) - 1

    def result(self, n: int) -> torch.Tensor | dict[int, torch.Tensor]:
        """This batch's ``[n, n_layers, d_model]`` span means ("mean"), else each layer's result."""
        if self.pooling == "mean":
            # a copy, always: the buffer is the next batch's
            return self.means[:, :n, 0].transpose(0, 1).clone(memory_format=torch.contiguous_format)
        return self.got

    def hooks(self) -> list:
        return [(resid_hook_name(layer), self._hook(layer)) for layer in self.layers]

    def _hook(self, layer: int):
        def hook(resid, hook):
            r = resid.detach()
            if self.pooling == "mean":
                # Every text's span mean as one float32 batched product with span weights, from the first
                # pooled position on: one conversion and one kernel a layer, where a per-text sum was three
                # small kernels per text (half the time of this hook, 2-3% of a bfloat16 capture).
                torch.bmm(self.weights, r[:, self.first:].float(), out=self.means[self.slot[layer], : r.shape[0]])
            elif self.pooling == "last":
                self.got[layer] = r[torch.arange(r.shape[0], device=r.device), self.last_idx].float()
            else:
                self.got[layer] = r.float()
            if layer == self.deepest:
                raise _StopForward
            return resid
        return hook


def _forward_batch(model, batch: list[list[int]], layers: tuple[int, ...], pooling: str, start: int, *,
                   keep_bos: bool = False, pooler: _Pooler | None = None):
    """Run one right-padded batch; return pooled ``[batch, n_layers, d_model]`` or per-token lists.

    ``pooler``: hooks already registered on ``model`` (by the caller, for many batches); without it,
    this batch registers its own and removes them.
    """
    if pooler is None:
        pooler = _Pooler(layers, pooling)
        with model.hooks(fwd_hooks=pooler.hooks()):
            return _forward_batch(model, batch, layers, pooling, start, keep_bos=keep_bos, pooler=pooler)
    device = next(model.parameters()).device
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    toks, mask = right_pad(batch, pad)
    lengths = [len(ids) for ids in batch]
    pooler.begin(lengths, start=start, d_model=model.cfg.d_model, device=device)
    deepest = max(layers)
    with torch.no_grad():
        try:
            # use_cache=False: a pass that is only read needs no key/value cache (HF builds one by default).
            model(toks.to(device), attention_mask=mask.to(device), use_cache=False,
                  stop_at_layer=deepest + 1 if deepest + 1 < model.cfg.n_layers else None)
        except _StopForward:
            pass
    got = pooler.result(len(batch))
    if pooling == "mean":
        return got.cpu(), sum(lengths)
    stacked = torch.stack([got[layer] for layer in layers], dim=1).cpu()
    if pooling == "all":
        # [batch, n_layers, pos, d] -> per text [n_tokens, n_layers, d], BOS dropped
        first = 0 if keep_bos else 1
        return [stacked[i, :, first: lengths[i]].permute(1, 0, 2).contiguous() for i in range(len(batch))]
    return stacked, sum(lengths)


def _cache_dir(model, token_ids, layers, pooling, start) -> Path:
    h = hashlib.sha256()
    h.update(json.dumps({"v": CAPTURE_VERSION, "model": model_fingerprint(model), "layers": layers,
                         "pooling": pooling, "start": start,
                         "compiled": bool(getattr(model, "emolib_compiled", False))}).encode())
    for ids in token_ids:
        h.update(b",".join(str(i).encode() for i in ids))
        h.update(b";")
    return cache_root() / "activations" / h.hexdigest()[:24]


def _load_checked(path: Path, n: int, n_layers: int, d_model: int) -> tuple[torch.Tensor, dict[str, str]]:
    return open_sealed(path, "activations", (n, n_layers, d_model))


def capture(model, texts: list[str], *, layers: list[int] | tuple[int, ...] | None = None,
            pooling: str = "mean", start: int = DEFAULT_START, batch_size: int = 16,
            max_tokens: int | None = 512, use_cache: bool = True, chunk_size: int = 256,
            progress: bool | None = None) -> CaptureResult:
    """Pooled ``blocks.L.hook_resid_post`` activations of ``texts`` (see the module docstring)."""
    layers = _validate(model, texts, layers, pooling, start, batch_size)
    token_ids = tokenize(model, list(texts), max_tokens=max_tokens)
    n, d = len(texts), model.cfg.d_model
    # Sorting by length keeps padding small; results are put back in the caller's order.
    order = sorted(range(n), key=lambda i: len(token_ids[i]))
    n_batches = -(-n // batch_size)
    show = progress if progress is not None else n_batches > 20
    if pooling == "all" or not use_cache:
        return _run(model, token_ids, order, layers, pooling, start, batch_size, show, n)

    directory = _cache_dir(model, token_ids, layers, pooling, start)
    final = directory / "activations.safetensors"
    if final.exists():
        try:
            acts, meta = _load_checked(final, n, len(layers), d)
        except Damaged as exc:
            # The final file is only ever written from verified parts, so damage to it happened on disk
            # later: stop and say so rather than quietly recompute over a failing disk.
            raise CaptureCacheError(f"cached activations {final} {exc}; delete {directory} to recompute "
                                    "them") from None
        # The throughput measured when the cache was written, so reports stay meaningful.
        return CaptureResult(acts, layers, int(meta.get("n_tokens", sum(map(len, token_ids)))),
                             float(meta.get("seconds", 0.0)), True)
    # A chunk's name gives the rows (in length order) it holds, so a resume with another chunk_size
    # can never pick up a chunk of the same shape holding other rows.
    chunks = [(f"chunk-{i:06d}-{min(i + chunk_size, n):06d}", order[i: i + chunk_size])
              for i in range(0, n, chunk_size)]
    parts: list[torch.Tensor] = []
    n_tok, seconds = 0, 0.0
    bar = _bar(len(chunks) * -(-chunk_size // batch_size), show, "capture")
    for name, chunk in chunks:
        path = directory / f"{name}.safetensors"
        if path.exists():
            try:
                part, meta = _load_checked(path, len(chunk), len(layers), d)
            except Damaged as exc:
                # A chunk is a resumable partial result: recomputing it is cheap and always right.
                print(f"emolib: cached chunk {path} {exc}; recomputing it", file=sys.stderr)
                path.unlink(missing_ok=True)
            else:
                n_tok += int(meta.get("n_tokens", 0))
                seconds += float(meta.get("seconds", 0.0))
                parts.append(part)
                bar.update(-(-len(chunk) // batch_size))
                continue
        res = _run(model, token_ids, chunk, layers, pooling, start, batch_size, False, None, bar=bar)
        n_tok += res.n_tokens
        seconds += res.seconds
        atomic_write_bytes(path, seal("activations", res.activations, {"n_tokens": str(res.n_tokens),
                                                           "seconds": repr(res.seconds)}))
        parts.append(res.activations)
    bar.close()
    pooled = torch.cat(parts)                 # rows in `order`
    acts = torch.empty_like(pooled)
    acts[torch.tensor(order)] = pooled
    meta = {"layers": json.dumps(layers), "pooling": pooling, "start": str(start), "n_texts": str(n),
            "n_tokens": str(n_tok), "seconds": repr(seconds)}
    atomic_write_bytes(final, seal("activations", acts, meta))
    for p in directory.glob("chunk-*.safetensors"):
        p.unlink()
    return CaptureResult(acts, layers, n_tok, seconds, False)


class _NullBar:
    def update(self, n=1): pass
    def close(self): pass


class _Reported:
    """A progress bar that also tells the book runner (emolib.progress) how far it is."""

    def __init__(self, inner, total: int, desc: str):
        self.inner, self.total, self.desc, self.done = inner, total, desc, 0

    def update(self, n=1):
        self.done += n
        self.inner.update(n)
        report(f"{self.desc} (batches)", min(self.done, self.total), self.total)

    def close(self):
        self.inner.close()


def _bar(total: int, show: bool, desc: str):
    if not show:
        return _Reported(_NullBar(), total, desc)
    from tqdm import tqdm

    return _Reported(tqdm(total=total, desc=desc, unit="batch", file=sys.stderr), total, desc)


def _run(model, token_ids, index, layers, pooling, start, batch_size, show, n_total, *, bar=None) -> CaptureResult:
    """Forward the texts ``index`` (already in length order) and return their pooled activations
    in that order (or, with ``n_total``, scattered back to original positions)."""
    own_bar = bar is None
    bar = _bar(-(-len(index) // batch_size), show, "capture") if own_bar else bar
    outs, n_tok = [], 0
    t0 = time.perf_counter()
    pooler = _Pooler(layers, pooling)
    with model.hooks(fwd_hooks=pooler.hooks()):
        for b in range(0, len(index), batch_size):
            batch = [token_ids[i] for i in index[b: b + batch_size]]
            out = _forward_batch(model, batch, layers, pooling, start, pooler=pooler)
            if pooling == "all":
                outs.extend(out)
                n_tok += sum(map(len, batch))
            else:
                outs.append(out[0])
                n_tok += out[1]
            bar.update(1)
    seconds = time.perf_counter() - t0
    if own_bar:
        bar.close()
    if pooling == "all":
        if n_total is not None:
            scattered: list = [None] * n_total
            for pos, i in enumerate(index):
                scattered[i] = outs[pos]
            outs = scattered
        return CaptureResult(outs, layers, n_tok, seconds, False)
    pooled = torch.cat(outs)
    if n_total is not None:
        acts = torch.empty_like(pooled)
        acts[torch.tensor(index)] = pooled
        pooled = acts
    return CaptureResult(pooled, layers, n_tok, seconds, False)


def mean_resid_norms(model, texts: list[str], *, batch_size: int = 16) -> torch.Tensor:
    """Mean L2 norm of the residual stream per layer over all non-BOS tokens: ``[n_layers]``.

    Steering strength is expressed relative to this (BOS excluded: Gemma's BOS residual is ~15x
    larger than other positions and would dominate the mean).
    """
    return residual_norm_profile(model, texts, batch_size=batch_size)["tokens"]


def residual_norm_profile(model, texts: list[str], *, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Per layer: the mean non-BOS token norm (``"tokens"``) and the mean BOS norm (``"bos"``)."""
    layers = tuple(range(model.cfg.n_layers))
    token_ids = tokenize(model, texts)
    bos_sum = torch.zeros(len(layers))
    tok_sum, tok_n = torch.zeros(len(layers)), 0
    pooler = _Pooler(layers, "all")
    with model.hooks(fwd_hooks=pooler.hooks()):
        for b in range(0, len(texts), batch_size):
            batch = token_ids[b: b + batch_size]
            per_text = _forward_batch(model, list(batch), layers, "all", 0, keep_bos=True, pooler=pooler)
            for t in per_text:           # [n_tokens incl. BOS, n_layers, d]
                norms = t.norm(dim=-1)
                bos_sum += norms[0]
                tok_sum += norms[1:].sum(0)
                tok_n += norms.shape[0] - 1
    return {"tokens": tok_sum / max(tok_n, 1), "bos": bos_sum / len(texts)}
