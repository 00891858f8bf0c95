"""Torch-free WavLink runtime: audio files in, Matryoshka embeddings out (numpy + onnxruntime).

    from wavlink_edge.runtime import WavLink
    model = WavLink.from_pretrained("exports/wavlink-base")
    audio = model.embed_audio(["clip.flac", (samples, 44100)], dim=128)
    text = model.embed_text(["a phone is ringing"], dim=128)
    model.similarity(audio, text)
"""
from wavlink_edge.runtime.errors import (
    AudioInputError,
    BackendUnavailableError,
    InputError,
    ModelFilesError,
    TextInputError,
    WavLinkError,
)
from wavlink_edge.runtime.lyrics import Lyrics, fused_similarity
from wavlink_edge.runtime.model import AudioEmbedding, WavLink
from wavlink_edge.runtime.vectors import cosine, normalize, similarity, truncate

__all__ = [
    "WavLink", "AudioEmbedding", "Lyrics", "fused_similarity", "similarity", "normalize", "truncate", "cosine",
    "WavLinkError", "ModelFilesError", "InputError", "AudioInputError", "TextInputError", "BackendUnavailableError",
]
