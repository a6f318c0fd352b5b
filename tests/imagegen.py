"""Generate small image-folder datasets with a learnable class signal, for tests.

`make_image_folder` writes either layout `sweeps.data` loads ("splits" or "classes"),
optionally with the mess real folders have: mixed sizes and formats, grayscale, RGBA
and palette images, upper-case extensions, hidden files, and broken files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SPLITS = ("train", "validation", "test")

# Cycled through when odd=True; "png" alone otherwise.
ODD_KINDS = ("png", "jpg", "gray_png", "rgba_png", "JPEG", "bmp", "palette_png", "webp",
             "tif", "gif")  # fmt: skip
# Unreadable files; the first three have image extensions, ".txt" does not.
BROKEN_KINDS = ("zero_byte", "text_as_jpg", "truncated_png", "txt")


@dataclass
class GeneratedFolder:
    """What `make_image_folder` wrote.

    Attributes:
        root: The dataset folder.
        classes: Class folder names, in the order a loader sorts them.
        counts: Readable images per group and class; the group is a split name, or
            "all" for the "classes" layout.
        broken: Unreadable files written (each should be counted as skipped).
    """

    root: Path
    classes: list[str]
    counts: dict[str, dict[str, int]]
    broken: int

    @property
    def total(self) -> int:
        """Readable images in the whole folder."""
        return sum(sum(per_class.values()) for per_class in self.counts.values())


def make_image_folder(
    root: str | Path,
    layout: str = "splits",
    classes: Sequence[str] = ("old", "young"),
    per_class: int | Mapping[str, int] | None = None,
    size: tuple[int, int] = (24, 24),
    broken: int = 0,
    odd: bool = True,
    seed: int = 0,
) -> GeneratedFolder:
    """Write an image folder dataset.

    Args:
        root: Folder to create (may exist).
        layout: "splits" (root/{train,validation,test}/<class>/) or "classes" (root/<class>/).
        classes: Class folder names.
        per_class: Readable images per class: an int, or for "splits" a mapping split ->
            int. Default 6/3/3 for "splits", 12 for "classes".
        size: (height, width) of the images; with odd=True sizes vary around it.
        broken: How many unreadable files to add, cycling through BROKEN_KINDS.
        odd: Mix formats, sizes and modes, and add a hidden file per class folder.
        seed: Seed of the pixel noise and sizes.

    Returns:
        What was written, to compare the loader's result against.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    groups = _group_counts(layout, per_class)
    counts: dict[str, dict[str, int]] = {}
    for group, n in groups.items():
        base = root / group if layout == "splits" else root
        counts[group] = {}
        for label, name in enumerate(classes):
            folder = base / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                kind = ODD_KINDS[(i + label) % len(ODD_KINDS)] if odd else "png"
                image = _class_image(label, len(classes), _image_size(size, i, odd), rng)
                _write_image(folder / f"{name}_{i:03d}", image, kind)
            if odd:
                (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
            counts[group][name] = n
    folders = [(root / g if layout == "splits" else root) / c for g in groups for c in classes]
    for i in range(broken):
        _write_broken(folders[i % len(folders)] / f"broken_{i:03d}", BROKEN_KINDS[i % 4])
    return GeneratedFolder(root, sorted(classes), counts, broken)


def _group_counts(layout: str, per_class: int | Mapping[str, int] | None) -> dict[str, int]:
    if layout == "classes":
        if isinstance(per_class, Mapping):
            raise ValueError("layout 'classes' takes per_class as an int")
        return {"all": 12 if per_class is None else per_class}
    if layout != "splits":
        raise ValueError(f"unknown layout {layout!r}")
    if per_class is None:
        per_class = {"train": 6, "validation": 3, "test": 3}
    if isinstance(per_class, int):
        per_class = dict.fromkeys(SPLITS, per_class)
    return {split: per_class[split] for split in SPLITS}


def _image_size(size: tuple[int, int], i: int, odd: bool) -> tuple[int, int]:
    if not odd:
        return size
    # Smaller, larger and non-square files, so that loaders must resize.
    scale_h, scale_w = [(1, 1), (2, 2), (1, 1.5), (0.75, 1), (1.25, 0.8)][i % 5]
    return max(4, round(size[0] * scale_h)), max(4, round(size[1] * scale_w))


def _class_image(
    label: int, num_classes: int, size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Brightness rises with the label and stripes alternate direction: both survive
    grayscale conversion, resizing and JPEG, so a tiny model can learn them."""
    h, w = size
    level = 50 + 150 * label / max(1, num_classes - 1)
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = np.sin((yy if label % 2 == 0 else xx) * np.pi / 2) * 30
    tint = np.array([1.0, 0.9, 0.8]) if label % 2 == 0 else np.array([0.8, 0.9, 1.0])
    pixels = (level + stripes)[..., None] * tint + rng.normal(0, 8, (h, w, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _write_image(stem: Path, rgb: np.ndarray, kind: str) -> None:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if kind == "gray_png":
        cv2.imwrite(f"{stem}.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    elif kind == "rgba_png":
        alpha = np.full(rgb.shape[:2], 255, np.uint8)
        alpha[: rgb.shape[0] // 4] = 0  # a transparent band: loaders drop alpha, keep RGB
        cv2.imwrite(f"{stem}.png", np.dstack([bgr, alpha]))
    elif kind in ("palette_png", "gif"):
        _write_with_pillow(stem, rgb, kind)
    else:
        ext = {"jpg": ".jpg", "JPEG": ".JPEG"}.get(kind, f".{kind}")
        # imencode + write_bytes: cv2.imwrite picks the codec from the extension and
        # does not know ".JPEG" in upper case.
        ok, encoded = cv2.imencode(ext.lower(), bgr)
        assert ok, kind
        Path(f"{stem}{ext}").write_bytes(encoded.tobytes())


def _write_with_pillow(stem: Path, rgb: np.ndarray, kind: str) -> None:
    from PIL import Image  # palette PNG and GIF are easiest to write with Pillow

    palette = Image.fromarray(rgb).quantize(colors=64)
    palette.save(f"{stem}.{'png' if kind == 'palette_png' else 'gif'}")


def _write_broken(stem: Path, kind: str) -> None:
    if kind == "zero_byte":
        Path(f"{stem}.jpg").write_bytes(b"")
    elif kind == "text_as_jpg":
        Path(f"{stem}.jpg").write_text("this is not an image\n")
    elif kind == "truncated_png":
        noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        encoded = cv2.imencode(".png", noise)[1].tobytes()
        Path(f"{stem}.png").write_bytes(encoded[: len(encoded) // 2])
    else:
        Path(f"{stem}.txt").write_text("notes about the dataset\n")
