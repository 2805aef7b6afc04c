"""bfloat16 against float32 on the real default model: the same vectors, the same accuracy, the same layer."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import real_model
from emolib.capture import capture
from emolib.data import load_neutral, load_stories
from emolib.pipeline import CorpusActivations
from emolib.precision import dtype_agreement

from emolib.models import native_bf16

# Where bfloat16 is emulated (a CPU without AVX-512 BF16 or AMX) it runs about 100x slower than float32, and
# the book computes in float32 there, so there is no bfloat16 result to check.
pytestmark = [pytest.mark.real_model,
              pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no native bfloat16; the book "
                                                                "computes in float32 here")]

EMOTIONS = ["afraid", "calm", "furious", "joyful", "sad", "ashamed"]  # six families, both valences and arousals (top-5 needs >= 5)


def test_bfloat16_changes_no_conclusion_on_the_default_model():
    bf16 = real_model("gemma-3-270m", dtype="bfloat16")
    fp32 = real_model("gemma-3-270m", dtype="float32")
    stories = [s for s in load_stories() if s.emotion in EMOTIONS]
    neutral = [n.render() for n in load_neutral()[:24]]
    s_res = capture(bf16, [s.text for s in stories], start=10, use_cache=False)
    n_res = capture(bf16, neutral, start=10, use_cache=False)
    ca = CorpusActivations(EMOTIONS, stories, s_res.activations, n_res.activations, s_res.layers, s_res, n_res,
                           "test", tuple(neutral))
    assert s_res.activations.dtype.is_floating_point and str(s_res.activations.dtype) == "torch.float32"
    a = dtype_agreement(ca, fp32, compute_dtype="bfloat16", emotions=EMOTIONS, neutral_texts=neutral, n_neutral=24,
                        start=10, seed=0)
    m = a.metrics()
    assert m["dtypes"] == ["float32", "bfloat16"]
    # vectors: near-identical direction at every layer, for every emotion
    assert min(m["cosine_median_by_layer"]) > 0.99, m["cosine_median_by_layer"]
    assert m["cosine_min"] > 0.95, m["cosine_min"]
    # held-out accuracy: at most one story's difference at any layer
    assert m["max_abs_top1_difference"] <= 1 / m["n_heldout"] + 1e-9
    # the layer choice: bf16's choice scores, in float32, within one story of float32's own best
    f = np.asarray(m["heldout_top1_by_layer"]["float32"])
    assert abs(f[a.layers.index(m["chosen_layer"]["bfloat16"])] - f[a.layers.index(m["chosen_layer"]["float32"])]) \
        <= 1 / m["n_heldout"] + 1e-9 or m["same_layer"]
