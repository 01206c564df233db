"""Peak memory of an explanation figure as the photo grows (issue 25, item 4).

For each size (1, 12 and 108 megapixels, 4:3) a JPEG photo is written once, then a fresh Python process
loads the shipped shapes-clip, explains the photo with attention_eclip, and writes its figure as PNG
(300 dpi) with ``Explanation.save_figure``. The process reports its own peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, Linux: KiB) twice: after the explanation (the model, the
decoded photo and the map) and after the figure; the difference is what drawing the figure added.

The figure draws a copy of at most ``faithclip.report.figures.DRAW_MAX_PIXELS`` pixels, so the figure's
part should stay flat in the photo's size; what still grows is the decoded photo itself (3 bytes a pixel,
held by the explanation as ``source_image``).

    python benchmarks/bench_figure_memory.py            # 1, 12, 108 MP
    python benchmarks/bench_figure_memory.py --sizes 1 12
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, warnings
warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning above 89 MP
from PIL import Image
Image.MAX_IMAGE_PIXELS = None
import faithclip
path, out = sys.argv[1], sys.argv[2]
model = faithclip.load()
ex = faithclip.explain(model, path, "a red square")
after_explain = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ex.save_figure(out)
after_figure = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"explain_kib": after_explain, "figure_kib": after_figure}))
"""


def photo(path: Path, megapixels: float) -> tuple[int, int]:
    """A 4:3 JPEG of ``megapixels`` with smooth gradients and some texture (written by a child process, so
    that this process's memory stays small)."""
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    height = int(round(width * 3 / 4))
    code = (
        "import sys, numpy as np; from PIL import Image; Image.MAX_IMAGE_PIXELS = None; w, h = int(sys.argv[2]), int(sys.argv[3]);"
        "x = np.linspace(0, 255, w, dtype=np.float32); y = np.linspace(0, 255, h, dtype=np.float32)[:, None];"
        "rgb = np.empty((h, w, 3), np.uint8); rgb[..., 0] = x; rgb[..., 1] = y; rgb[..., 2] = (x[None, :] * 0.5 + y * 0.5) % 256;"
        "Image.fromarray(rgb).save(sys.argv[1], quality=90)"
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(width), str(height)], check=True)
    return width, height


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 12, 108], help="megapixels")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for megapixels in args.sizes:
            source = Path(folder) / f"photo-{megapixels:g}mp.jpg"
            width, height = photo(source, megapixels)
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(source), str(Path(folder) / "figure.png")],
                check=True,
                capture_output=True,
                text=True,
                env={"OMP_NUM_THREADS": "1", **__import__("os").environ},
            )
            peak = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(
                {
                    "megapixels": megapixels,
                    "width": width,
                    "height": height,
                    "explain_peak_mib": peak["explain_kib"] / 1024,
                    "figure_peak_mib": peak["figure_kib"] / 1024,
                }
            )
            source.unlink()
    print(f"{'photo':>20}  {'peak after explain':>18}  {'peak after figure':>17}  {'figure added':>12}")
    for row in rows:
        print(
            f"{row['width']:>7}x{row['height']:<6} {row['megapixels']:>4g} MP  {row['explain_peak_mib']:>14.0f} MiB"
            f"  {row['figure_peak_mib']:>13.0f} MiB  {row['figure_peak_mib'] - row['explain_peak_mib']:>8.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
