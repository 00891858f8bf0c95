"""CLI: python -m wavlink_edge.train.corpus {generate,export-eval} ..."""
from __future__ import annotations

import argparse
import json

from wavlink_edge.runtime.arguments import add_deprecated_alias

from .generate import export_eval, generate

TINY = {"n_train": 24, "n_test": 12}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write the corpus (FLAC + Clotho CSVs + metadata + data card)")
    g.add_argument("--out", required=True)
    g.add_argument("--n-train", type=int, default=3000)
    g.add_argument("--n-test", type=int, default=600)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=2)
    g.add_argument("--quick", action="store_true", help=f"tens of clips for tests ({TINY})")
    add_deprecated_alias(g, "--tiny", "--quick", action="store_true")
    e = sub.add_parser("export-eval", help="compress a generated split into the committed eval folder")
    e.add_argument("--from", dest="src", required=True)
    e.add_argument("--out", default="bench/data/wavlink_eval")
    e.add_argument("--split", default="test")
    e.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    if a.cmd == "generate":
        sizes = TINY if a.quick else {"n_train": a.n_train, "n_test": a.n_test}
        stats = generate(a.out, seed=a.seed, workers=a.workers, **sizes)
        for s in stats["splits"].values():
            s.pop("compositions")
        print(json.dumps(stats, indent=1))
    else:
        print(json.dumps(export_eval(a.src, a.out, a.split, a.workers)))


if __name__ == "__main__":
    main()
