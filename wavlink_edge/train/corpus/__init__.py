"""Deterministic, seeded audio–caption corpus from offline sound sources (see DATA_CARD.md it writes)."""
from .generate import export_eval, generate, load_split

__all__ = ["generate", "load_split", "export_eval"]
