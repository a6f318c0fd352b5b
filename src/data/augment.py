"""What train-time augmentation to apply, in the documents' ImageDataGenerator units.

TensorFlow-free, so configs can be validated without importing it; `keras_layers()` builds
the Keras 3 preprocessing layers (`ImageDataGenerator` does not exist in Keras 3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import DataError

FLIPS = ("horizontal", "vertical", "horizontal_and_vertical")
FILL_MODES = ("nearest", "reflect", "wrap", "constant")


@dataclass(frozen=True)
class AugmentSpec:
    """Random augmentation of training batches; every field off by default.

    The units are those of Keras 2's `ImageDataGenerator`, so a study config copies the
    numbers from its source document (e.g. seed 004: rotation=40, shift=0.2, shear=0.2,
    zoom=0.2, flip="horizontal").
    """

    flip: str | None = None  # horizontal_flip=True is "horizontal"
    rotation: float = 0.0  # rotation_range: degrees, uniform in [-rotation, rotation]
    shift: float = 0.0  # width/height_shift_range: fraction of width and of height
    # shear_range is an angle in DEGREES in ImageDataGenerator, so the documents' 0.2 is a
    # 0.2 degree shear (nearly none), not Keras 3 RandomShear's factor 0.2 (about 11
    # degrees). Kept in degrees to reproduce what the documents actually ran.
    shear: float = 0.0
    zoom: float = 0.0  # zoom_range: height and width each scaled by 1 +- zoom, independently
    fill_mode: str = "nearest"

    def __post_init__(self) -> None:
        checks = {
            "flip": self.flip is None or self.flip in FLIPS,
            "rotation": 0 <= self.rotation <= 180,
            "shift": 0 <= self.shift < 1,
            "shear": 0 <= self.shear < 45,  # RandomShear accepts factors tan(angle) < 1
            "zoom": 0 <= self.zoom < 1,
            "fill_mode": self.fill_mode in FILL_MODES,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise DataError(
                f"augment: invalid {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}; "
                f"expected flip in {FLIPS} or None, rotation 0..180 degrees, shift and zoom "
                f"in [0, 1), shear 0..45 degrees, fill_mode in {FILL_MODES}"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> AugmentSpec | None:
        """Build from a config mapping; None when it is empty or turns nothing on.

        Raises:
            DataError: A key that is not a field (a typo would otherwise silently disable
                that augmentation).
        """
        if not d:
            return None
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise DataError(f"augment: unknown key {', '.join(unknown)}; valid: {', '.join(names)}")
        spec = cls(**{key: value for key, value in d.items() if value is not None})
        return spec if spec.active else None

    @property
    def active(self) -> bool:
        """Whether any augmentation is switched on."""
        return bool(self.flip or self.rotation or self.shift or self.shear or self.zoom)

    def keras_layers(self, seed: int = 0) -> list[Any]:
        """The Keras 3 preprocessing layers that apply this spec, in order."""
        import keras

        fill = {"fill_mode": self.fill_mode, "seed": seed}
        layers = []
        if self.rotation:
            layers.append(keras.layers.RandomRotation(self.rotation / 360, **fill))
        if self.shift:
            layers.append(keras.layers.RandomTranslation(self.shift, self.shift, **fill))
        if self.shear:
            # ImageDataGenerator shears along x only, by an angle; RandomShear takes the
            # shear factor tan(angle).
            factor = math.tan(math.radians(self.shear))
            layers.append(keras.layers.RandomShear(x_factor=factor, y_factor=0.0, **fill))
        if self.zoom:
            layers.append(keras.layers.RandomZoom(self.zoom, self.zoom, **fill))
        if self.flip:
            layers.append(keras.layers.RandomFlip(self.flip, seed=seed))
        return layers
