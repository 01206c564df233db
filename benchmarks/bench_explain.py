"""Explanation cost vs a plain forward on ViT-B/16 and B/32 (random weights). Same as `faithclip bench`.

python benchmarks/bench_explain.py [--arch B/16] [--k 1 --k 100] [--no-memory]
"""

import sys

from faithclip.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
