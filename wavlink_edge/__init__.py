"""WavLink Edge: WavLink audio-text embeddings exported, quantized and served torch-free.

Stages, each a subpackage (a later stage may import an earlier one, never the reverse):
runtime (torch-free base layer) <- export <- quantization <- train <- bench.
"""
__version__ = "0.2.0"
