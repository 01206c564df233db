"""What the data fingerprint of a resumable evaluation costs on 50,000 files (issue 11).

Creates an ImageNet-style folder (``--classes`` directories, ``--files`` files in all, ``--size`` random
bytes each; the fingerprint hashes bytes, it does not decode images) in a temporary directory, then times

- listing: ``imagenet_folder(root)`` (finding the cases; paid before this change too),
- stat only: one ``os.stat`` per file (what the old size-only fingerprint read),
- cold: ``LabelledSet.fingerprint`` with an empty digest cache (every file read and SHA-256 hashed), plus
  writing the cache,
- cached: the same with the cache of the cold pass (what every resume of the run pays).

    python benchmarks/bench_data_hashing.py [--files 50000] [--classes 100] [--size 2048]

"Cold" means no digest cache; the files were just written, so they are in the OS page cache (dropping it
needs root). Reading them from a cold disk adds the disk's read time for the set's bytes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from faithclip.data.digests import FileDigests
from faithclip.data.folders import imagenet_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--size", type=int, default=2048, help="bytes per file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary) / "data"
        per_class = -(-args.files // args.classes)
        written = 0
        for label in range(args.classes):
            directory = root / f"n{label:05d}"
            directory.mkdir(parents=True)
            for index in range(min(per_class, args.files - written)):
                (directory / f"{index:05d}.jpg").write_bytes(os.urandom(args.size))
                written += 1
        total_mb = written * args.size / 1e6

        started = time.perf_counter()
        data = imagenet_folder(root)
        listing = time.perf_counter() - started

        started = time.perf_counter()
        for load in data.cases:
            os.stat(load.path)
        stat_only = time.perf_counter() - started

        cache = Path(temporary) / "run" / ".data-digests.json"
        started = time.perf_counter()
        digests = FileDigests(cache)
        cold_fingerprint = data.fingerprint(digests)
        digests.save()
        cold = time.perf_counter() - started

        started = time.perf_counter()
        cached_fingerprint = data.fingerprint(FileDigests(cache))
        cached = time.perf_counter() - started
        assert cached_fingerprint == cold_fingerprint

        print(f"{written} files of {args.size} bytes ({total_mb:.0f} MB) in {args.classes} class directories")
        print(f"listing (imagenet_folder)      {listing:7.2f} s")
        print(f"stat only (old size-only key)  {stat_only:7.2f} s")
        print(
            f"fingerprint, cold (no cache)   {cold:7.2f} s   ({total_mb / cold:.0f} MB/s, cache "
            f"{cache.stat().st_size / 1e6:.1f} MB)"
        )
        print(f"fingerprint, cached            {cached:7.2f} s")


if __name__ == "__main__":
    main()
