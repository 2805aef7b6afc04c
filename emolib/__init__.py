"""emolib: the computations behind the emotion-concepts book.

Submodules are imported explicitly (``from emolib.models import load_model``) so that
``python -m emolib.models`` and light tools do not pay for torch and TransformerLens at import.
"""

import warnings

# tqdm.auto (imported by transformers) warns in every executed chapter that ipywidgets is missing;
# the book shows plain progress text, so the warning is only noise in the published outputs.
warnings.filterwarnings("ignore", message="IProgress not found")

__all__ = ["__version__"]
__version__ = "0.1.0"
