"""What an engine fed by the stock processor sees: its tiles against the model card's.

``python -m benchmarks.stock_processor [--quick]``. Not a speed benchmark: it measures how the
tiles of transformers' stock InternVL image processor (``GotOcr2ImageProcessor``, what
``AutoProcessor`` loads from a ``vltools convert`` export, and what engines reproduce) differ
from the card's ``load_image`` (vltools.images, bit-exact with the card):

1. the grid: the stock ``get_optimal_tiled_canvas`` against the card's grid for every row of
   ``tests/reference/tiling_grids.tsv`` (4,500 sizes and tile limits) and for a sweep of sizes;
2. the pixels, where the grids agree: max and mean absolute difference of ``pixel_values``
   (normalised units, and in 8-bit levels of the worst channel) for the sample photos, for the
   torchvision backend (the default) and the PIL backend.

Prints a readable table and one JSON line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from benchmarks._common import machine, parser

REPO = Path(__file__).resolve().parent.parent


def grid_differences(rows: list[tuple[int, int, int, int, int, int]]) -> list[tuple]:
    """Rows ``(w, h, min, max, card_cols, card_rows)`` whose stock grid differs."""
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    out = []
    for w, h, lo, hi, cols, rows_ in rows:
        stock = get_optimal_tiled_canvas((h, w), (448, 448), lo, hi)
        if tuple(stock) != (cols, rows_):
            out.append((w, h, lo, hi, (cols, rows_), tuple(stock)))
    return out


def reference_rows() -> list[tuple[int, int, int, int, int, int]]:
    path = REPO / "tests" / "reference" / "tiling_grids.tsv"
    with path.open(encoding="utf-8") as f:
        return [
            tuple(int(r[k]) for k in ("width", "height", "min_num", "max_num", "cols", "rows"))
            for r in csv.DictReader(f, delimiter="\t")
        ]


def sweep_rows(step: int) -> list[tuple[int, int, int, int, int, int]]:
    from vltools.tiling import plan_tiles

    rows = []
    for max_num in (6, 12):
        for w in range(step, 4097, step):
            for h in range(step, 4097, step):
                g = plan_tiles(w, h, min_num=1, max_num=max_num)
                rows.append((w, h, 1, max_num, g.cols, g.rows))
    return rows


def pixel_differences(names: list[str], max_num: int) -> list[dict]:
    from PIL import Image
    from transformers.models.got_ocr2 import (
        GotOcr2ImageProcessor,
        GotOcr2ImageProcessorPil,
    )

    from vltools.constants import IMAGENET_MEAN, IMAGENET_STD
    from vltools.data import sample
    from vltools.images import load_image

    kwargs = {
        "crop_to_patches": True,
        "min_patches": 1,
        "max_patches": max_num,
        "size": {"height": 448, "width": 448},
        "resample": 3,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
    }
    level = 255 * float(max(IMAGENET_STD))  # normalised units per 8-bit level, worst channel
    out = []
    images = [(name, Image.open(sample(name)).convert("RGB")) for name in names]
    # worst case for a resize: 8-bit noise, shrunk (2400x1600 -> 3x2 grid) and enlarged
    rng = np.random.default_rng(0)
    for w, h in ((2400, 1600), (300, 200)):
        noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        images.append((f"noise {w}x{h}", Image.fromarray(noise)))
    for name, image in images:
        card = load_image(image, max_num=max_num, exif_transpose=False).pixel_values.numpy()
        row = {"image": name, "size": f"{image.width}x{image.height}", "tiles": card.shape[0]}
        for backend, cls in (
            ("torchvision", GotOcr2ImageProcessor),
            ("pil", GotOcr2ImageProcessorPil),
        ):
            stock = np.asarray(cls(**kwargs)(images=[image], return_tensors="np")["pixel_values"])
            if stock.shape != card.shape:
                row[backend] = f"grid differs: {stock.shape[0]} tiles"
                continue
            diff = np.abs(stock.astype(np.float64) - card.astype(np.float64))
            row[backend] = {
                "max_abs": round(float(diff.max()), 4),
                "mean_abs": round(float(diff.mean()), 5),
                "max_levels": round(float(diff.max()) * level, 1),
                "mean_levels": round(float(diff.mean()) * level, 3),
                "share_over_1_level": round(float((diff * level > 1).mean()), 4),
            }
        out.append(row)
    return out


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    print(machine())
    ref = reference_rows()
    ref_diff = grid_differences(ref)
    sweep = sweep_rows(256 if args.quick else 64)
    sweep_diff = grid_differences(sweep)
    print(f"reference grids: {len(ref_diff)} of {len(ref)} differ")
    for row in ref_diff[:8]:
        print("  ", row)
    print(f"size sweep (max_num 6 and 12): {len(sweep_diff)} of {len(sweep)} differ")
    for row in sweep_diff[:8]:
        print("  ", row)
    photos = [
        "photo_cat.jpg",
        "photo_coffee.jpg",
        "photo_astronaut.jpg",
        "photo_rocket.jpg",
        "chart.png",
        "document.png",
        "panorama.png",
    ]
    pixels = pixel_differences(photos, 12)
    for row in pixels:
        print(row)
    print(
        json.dumps(
            {
                "name": "stock_processor_vs_card",
                "reference_grids_differ": [len(ref_diff), len(ref)],
                "sweep_grids_differ": [len(sweep_diff), len(sweep)],
                "examples": [list(map(str, r)) for r in (ref_diff + sweep_diff)[:6]],
                "pixels": pixels,
            }
        )
    )


if __name__ == "__main__":
    main()
