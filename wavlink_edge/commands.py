"""Every ``wavlink-edge`` command that lives in a build stage, in one table.

The runtime's own commands (embed, embed-text, similarity, info, verify, lyrics, index, search) are
defined in ``wavlink_edge/runtime/``. The commands below belong to stages that need torch and friends,
so the table names each one's module and the extra that makes it importable: ``wavlink-edge --help``
stays torch-free and instant, and ``wavlink-edge export`` on an install without ``[export]`` says
which extra to install in one line instead of an ImportError traceback. Each command's options are
the argument parser next to its module's ``main(argv)``; ``python export/to_onnx.py`` (the path in
the docs) runs the same ``main``.

To add a command: write ``main(argv: list[str] | None = None) -> int`` in its stage module (argparse
inside, as its neighbours do), then add one row here. A benchmark goes into ``BENCHMARKS``
(``wavlink-edge bench NAME``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageCommand:
    module: str  # imported only when the command runs; its main(argv) -> exit code
    extra: str  # the pip extra that installs what the module imports
    help: str


STAGE_COMMANDS = {
    "export": StageCommand("wavlink_edge.export.to_onnx", "export",
                           "export both towers to ONNX and validate them (python export/to_onnx.py)"),
    "assemble": StageCommand("wavlink_edge.export.assemble", "export",
                             "assemble a WavLink checkpoint from Hugging Face directories"),
    "quantize": StageCommand("wavlink_edge.quantization.quantize", "export",
                             "add fp16 / INT8 artifacts to an export, each gated on measured fidelity"),
    "tensorrt": StageCommand("wavlink_edge.export.to_tensorrt", "trt",
                             "build TensorRT engines for an export (a host with TensorRT 10/11)"),
    "train": StageCommand("wavlink_edge.train.train", "bench", "train the demo heads (the model card's recipe)"),
    "corpus": StageCommand("wavlink_edge.train.corpus.__main__", "export",
                           "generate the training corpus or the eval split from Debian sound packages"),
    "probe": StageCommand("wavlink_edge.bench.probe", "bench", "frozen-embedding linear probe of one or more exports"),
}

BENCHMARKS = {
    "latency": StageCommand("wavlink_edge.bench.latency", "bench", "latency of every backend x precision vs PyTorch"),
    "recall": StageCommand("wavlink_edge.bench.recall", "bench", "retrieval recall per backend, precision and dim"),
    "all": StageCommand("wavlink_edge.bench.run_all", "bench", "latency + encoders + recall + plots + README"),
    "encoders": StageCommand("wavlink_edge.bench.encoders", "bench", "every audio encoder interleaved in one process"),
    "scale": StageCommand("wavlink_edge.bench.scale", "bench", "throughput with workers / Ray, and the vector index"),
    "formats": StageCommand("wavlink_edge.bench.formats", "bench", "embeddings of compressed copies of the clips"),
    "large": StageCommand("wavlink_edge.bench.large", "bench", "load time, RSS and latency of a (large) export"),
    "wealy": StageCommand("wavlink_edge.bench.wealy", "bench", "WEALY lyrics pipeline speed"),
    "gpu": StageCommand("wavlink_edge.bench.gpu", "bench", "fused fp16 audio on CUDA vs PyTorch SDPA fp16 (a CUDA host)"),
    "frontend": StageCommand("wavlink_edge.bench.frontend", "bench", "end-to-end files/s with and without the decode pool"),
}
