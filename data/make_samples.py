"""Write the generated sample images in vltools/samples/ and convert the photographs.

Run from the repository root: ``python data/make_samples.py``. The output is deterministic.
The photographs are converted from the images that scikit-image ships (CC0 / public domain,
see data/README.md); that step runs only where scikit-image is installed, since the JPEGs
are committed. The sample video has its own script, ``data/make_sample_video.py``.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# the samples ship inside the package (package data), so that an installed vltools has them
DATA = Path(__file__).resolve().parent.parent / "vltools" / "samples"
PHOTOS = {  # scikit-image file -> our name
    "coffee.png": "photo_coffee.jpg",
    "chelsea.png": "photo_cat.jpg",
    "astronaut.png": "photo_astronaut.jpg",
    "rocket.jpg": "photo_rocket.jpg",
}


def font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def panorama(width: int = 3200, height: int = 480) -> Image.Image:
    """A very wide synthetic landscape (aspect 6.7:1) with labelled markers every 400 px."""
    rng = random.Random(0)
    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    for y in range(height):  # sky gradient
        t = y / height
        draw.line([(0, y), (width, y)], fill=(int(90 + 120 * t), int(150 + 80 * t), 235))
    draw.ellipse([2350, 60, 2470, 180], fill=(255, 225, 120))  # sun
    for layer, (base, amp, colour) in enumerate(
        [(250, 110, (110, 120, 150)), (320, 80, (70, 110, 80)), (400, 40, (40, 80, 45))]
    ):
        phase = [rng.uniform(0, 2 * math.pi) for _ in range(3)]
        points = [
            (
                x,
                base
                - amp
                * (
                    0.5 * math.sin(x / 310 + phase[0])
                    + 0.3 * math.sin(x / 97 + phase[1])
                    + 0.2 * math.sin(x / 41 + phase[2])
                ),
            )
            for x in range(0, width + 1, 8)
        ]
        draw.polygon([(0, height), *points, (width, height)], fill=colour)
        del layer
    for x in range(0, width, 400):  # markers that show where the tiles fall
        draw.line([(x, 0), (x, 24)], fill=(255, 255, 255), width=3)
        draw.text((x + 6, 4), f"x={x}", fill=(255, 255, 255), font=font(18))
    return img


def document(width: int = 850, height: int = 3300) -> Image.Image:
    """A tall, page-like image (aspect 1:3.9) with headings, paragraphs and a table."""
    rng = random.Random(1)
    img = Image.new("RGB", (width, height), (252, 252, 248))
    draw = ImageDraw.Draw(img)
    words = (
        "tile grid aspect ratio thumbnail token image model vision language patch "
        "pixel shuffle context budget frame attention layer head prompt"
    ).split()
    y = 60
    section = 1
    while y < height - 200:
        draw.text(
            (60, y),
            f"{section}. Section {section}: how dynamic tiling works",
            fill=(20, 20, 60),
            font=font(30),
        )
        y += 60
        for _ in range(rng.randint(6, 10)):
            line = " ".join(rng.choice(words) for _ in range(rng.randint(8, 12)))
            draw.text((60, y), line.capitalize() + ".", fill=(40, 40, 40), font=font(20))
            y += 30
        if section % 3 == 0:  # a small table
            for r in range(4):
                for c in range(4):
                    x0, y0 = 60 + c * 180, y + r * 36
                    draw.rectangle([x0, y0, x0 + 180, y0 + 36], outline=(80, 80, 80))
                    draw.text(
                        (x0 + 8, y0 + 8),
                        f"r{r}c{c} = {rng.randint(0, 999)}",
                        fill=(0, 0, 0),
                        font=font(16),
                    )
            y += 4 * 36
        y += 50
        section += 1
    draw.text((width // 2 - 40, height - 60), "page 1", fill=(90, 90, 90), font=font(20))
    return img


def chart(path: Path) -> None:
    """A bar-and-line chart drawn with matplotlib (object API)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug"]
    sales = [12, 15, 11, 18, 22, 19, 25, 28]
    ax.bar(months, sales, color="#4C72B0", label="units sold")
    ax2 = ax.twinx()
    ax2.plot(
        months,
        [3.1, 3.0, 3.4, 3.2, 3.6, 3.9, 3.8, 4.2],
        color="#DD8452",
        marker="o",
        label="price (EUR)",
    )
    ax.set_title("Monthly sales and price")
    ax.set_ylabel("units (thousands)")
    ax2.set_ylabel("price (EUR)")
    fig.legend(loc="upper left", bbox_to_anchor=(0.08, 0.9))
    fig.savefig(path, metadata={"Software": None})


def main() -> None:
    panorama().save(DATA / "panorama.png", optimize=True)
    document().save(DATA / "document.png", optimize=True)
    chart(DATA / "chart.png")
    try:
        import skimage
    except ImportError:
        print("scikit-image not installed: kept the committed photographs")
    else:
        source = Path(skimage.__file__).parent / "data"
        for name, ours in PHOTOS.items():
            Image.open(source / name).convert("RGB").save(DATA / ours, quality=90)
    for path in sorted(DATA.iterdir()):
        print(f"{path.name:28s} {path.stat().st_size / 1024:8.1f} KiB")


if __name__ == "__main__":
    main()
