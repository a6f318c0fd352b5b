"""Does a folder match an image-folder layout? Finds the class folders and their files.

Everything here runs before any image is decoded, so a wrong path or layout fails in
milliseconds with a message that names the folder and the layout expected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .base import SPLITS
from .errors import DataError
from .images import is_image_file

LAYOUTS = {
    # age_gap (seed 001) and cats_dogs (seed 004): the split is fixed by the folders.
    "splits": "<root>/{train,validation,test}/<class>/<images>",
    # gender_resolution (seed 000): a_resized/, b_resized/; the split is drawn by the loader.
    "classes": "<root>/<class>/<images>",
}
ALL = "all"  # the single group of files in the "classes" layout, before it is split

Classes = Sequence[str] | Mapping[str, str] | None


@dataclass
class Listing:
    """What a scan of the folder found.

    Attributes:
        class_names: Label names, in label order.
        folders: Class folder of each (group, label); group is a split name, or ALL.
        files: (group, file, label) of every image file, sorted.
        other_files: Non-image files in class folders; counted as skipped.
    """

    class_names: list[str]
    folders: dict[tuple[str, int], Path] = field(default_factory=dict)
    files: list[tuple[str, Path, int]] = field(default_factory=list)
    other_files: list[Path] = field(default_factory=list)

    def identity(self, root: Path) -> list[tuple[str, int, int]]:
        """Relative path, size and mtime of every file: changes whenever the content may."""
        paths = sorted([f for _, f, _ in self.files] + self.other_files)
        return [(str(p.relative_to(root)), *_size_mtime(p)) for p in paths]


def layout_error(path: Path, layout: str, problem: str) -> DataError:
    """A one-line DataError: the path, what was wrong, the layout expected."""
    return DataError(f"{path}: {problem}; expected layout {layout!r}: {LAYOUTS[layout]}")


def scan(root: Path, layout: str, classes: Classes = None) -> Listing:
    """Find the class folders and their files.

    Args:
        root: The dataset folder.
        layout: A key of LAYOUTS.
        classes: Class folder names in label order, or a mapping folder -> label name;
            None: every subfolder, sorted.

    Raises:
        DataError: The folder does not match the layout.
    """
    if layout not in LAYOUTS:
        raise DataError(
            f"{root}: unknown layout {layout!r}; expected one of "
            f"{', '.join(f'{k!r} ({v})' for k, v in LAYOUTS.items())}"
        )
    _check_root(root, layout)
    groups = _split_folders(root) if layout == "splits" else {ALL: root}
    folder_names, class_names = _class_folders(next(iter(groups.values())), layout, classes)
    listing = Listing(class_names)
    for group, group_folder in groups.items():
        if classes is None:
            _check_no_extra_classes(group_folder, layout, folder_names)
        for label, name in enumerate(folder_names):
            folder = group_folder / name
            if not folder.is_dir():
                raise layout_error(folder, layout, "class folder missing")
            listing.folders[group, label] = folder
            for path in _files_under(folder):
                if is_image_file(path):
                    listing.files.append((group, path, label))
                else:
                    listing.other_files.append(path)
    return listing


def _check_root(root: Path, layout: str) -> None:
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "folder does not exist"
        raise layout_error(root, layout, what)
    if not any(not p.name.startswith(".") for p in root.iterdir()):
        raise layout_error(root, layout, "folder is empty")


def _split_folders(root: Path) -> dict[str, Path]:
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        found = _subfolders(root)
        hint = ""
        if found and len(missing) == len(SPLITS):
            hint = f" (found {', '.join(found)}: layout='classes'?)"
        raise layout_error(root, "splits", f"missing split folder {', '.join(missing)}{hint}")
    return {s: root / s for s in SPLITS}


def _class_folders(folder: Path, layout: str, classes: Classes) -> tuple[list[str], list[str]]:
    """(folder names, class names), both in label order."""
    if isinstance(classes, Mapping):
        folder_names, class_names = [str(k) for k in classes], [str(v) for v in classes.values()]
    elif classes is not None:
        folder_names = class_names = [str(c) for c in classes]
    else:
        folder_names = class_names = _subfolders(folder)
        if layout == "classes" and folder_names and set(folder_names) <= set(SPLITS):
            found = ", ".join(folder_names)
            raise layout_error(folder, layout, f"found split folders {found} (layout='splits'?)")
    if not folder_names:
        raise layout_error(folder, layout, "no class folders")
    if len(set(folder_names)) < 2:
        problem = f"only one class folder {folder_names[0]!r}, need two or more"
        raise layout_error(folder, layout, problem)
    return folder_names, class_names


def _check_no_extra_classes(folder: Path, layout: str, folder_names: list[str]) -> None:
    # With inferred classes, a folder present in validation/test but not in train would
    # silently be ignored. (Explicit `classes` select folders, so extras are fine there.)
    extra = sorted(set(_subfolders(folder)) - set(folder_names))
    if extra:
        problem = f"class folder {', '.join(extra)} not in the other splits"
        raise layout_error(folder, layout, problem)


def _files_under(folder: Path) -> list[Path]:
    """Every non-hidden file below `folder` (subfolders included), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, f) for f in filenames if not f.startswith(".")]
    return sorted(found)


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _size_mtime(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns
