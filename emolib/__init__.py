"""emolib: the computations behind the emotion-concepts book.

Submodules are imported explicitly (``from emolib.models import load_model``) so that
``python -m emolib.models`` and light tools do not pay for torch and TransformerLens at import.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
