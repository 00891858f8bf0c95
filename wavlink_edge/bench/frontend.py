"""End-to-end files/s of `WavLink.iter_embed_audio` with the serial front end and with the decode/feature pool.

    python bench/frontend.py --model EXPORT_DIR [--clips 64] [--rounds 3] [--workers 0,1,2] [--precision fp32]

Real recordings (bench/data/wavlink_eval, 1-8 s .ogg); the settings are interleaved round-robin in one
process (the same files, the same session), so a loaded machine moves them together. The table goes to
bench/results/frontend_<host>.md and .json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run by path: run as this checkout's package module (wavlink_edge/run_by_path.py says why)
    import runpy
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "run_by_path.py"))["run"](__file__)

from wavlink_edge.bench.machine import describe
from wavlink_edge.runtime import WavLink

HERE = Path(__file__).resolve().parent
CLIPS = HERE / "data" / "wavlink_eval" / "audio" / "test"


def files_per_second(model: WavLink, paths: list[Path], workers: int, batch_size: int) -> float:
    start = time.perf_counter()
    results = list(model.iter_embed_audio(paths, batch_size=batch_size, decode_workers=workers))
    seconds = time.perf_counter() - start
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} clips failed, e.g. {failed[0]}")
    return len(paths) / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("exports/wavlink-base"))
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", default="0,1,2", help="comma list of decode workers (0 = serial)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    paths = sorted(CLIPS.glob("*.ogg"))[: args.clips]
    if not paths:
        print(f"no clips in {CLIPS}", file=sys.stderr)
        return 2
    model = WavLink.from_pretrained(args.model, precision=args.precision)
    settings = [int(w) for w in args.workers.split(",")]
    files_per_second(model, paths[:8], 0, args.batch_size)  # warm-up: sessions, allocator, file cache
    rates: dict[int, list[float]] = {w: [] for w in settings}
    for _ in range(args.rounds):
        for workers in settings:
            rates[workers].append(files_per_second(model, paths, workers, args.batch_size))
    machine = describe()
    result = {"model": str(args.model), "precision": args.precision, "provider": model.audio_session.providers[0],
              "clips": len(paths), "clip_dir": str(CLIPS.relative_to(HERE.parent)), "batch_size": args.batch_size,
              "rounds": args.rounds, "files_per_second": {str(w): r for w, r in rates.items()},
              "median": {str(w): statistics.median(r) for w, r in rates.items()}, "machine": machine}
    base = statistics.median(rates[settings[0]])
    lines = [f"# Front end: end-to-end files/s ({len(paths)} real clips, {args.precision}, "
             f"{model.audio_session.providers[0]}, batch {args.batch_size})", "",
             f"`python bench/frontend.py --model {args.model} --clips {args.clips} --rounds {args.rounds} "
             f"--workers {args.workers}`, round-robin, median of {args.rounds} rounds. Machine: "
             f"{machine['cpu_model']}, {machine['usable_cores']} usable cores.", "",
             "| decode workers | files/s (median) | all rounds | vs serial |", "|---|---|---|---|"]
    for workers, r in rates.items():
        label = "0 (serial, in the encoder's thread)" if workers == 0 else str(workers)
        lines.append(f"| {label} | {statistics.median(r):.1f} | {', '.join(f'{x:.1f}' for x in r)} | "
                     f"{statistics.median(r) / base:.2f}x |")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    host = "gpu" if machine["gpus"] else "cpu"
    (args.out / f"frontend_{host}.json").write_text(json.dumps(result, indent=2, default=str))
    (args.out / f"frontend_{host}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
