"""Where the review finds its network: a ``.tflite`` file, or a model package directory.

The review worker and ``smartgate review --model`` accept both. For a package every file's hash
is checked against its manifest before the interpreter sees it. The signature is checked where
packages enter the gate (install, activation) and, with the gate's trusted keys, by the review
worker before it loads one (`inference.worker`); ``smartgate review --model`` checks hashes only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from inference.package.manifest import MANIFEST_FILE, PackageError, load_manifest

if TYPE_CHECKING:
    from inference.reviewer import Reviewer

__all__ = ["is_package", "open_reviewer", "resolve_model_path"]


def is_package(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / MANIFEST_FILE).is_file()


def resolve_model_path(path: Path | None) -> Path | None:
    """The ``.tflite`` to load for ``path`` (None: the shipped model)."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_dir():
        return path
    if not is_package(path):
        raise PackageError(f"{path} is a directory but not a model package (no {MANIFEST_FILE})")
    manifest = load_manifest(path)
    manifest.check_files(path)
    return path / manifest.model_file


def open_reviewer(path: Path | None, num_threads: int = 1) -> Reviewer:
    """The reviewer for ``path``: an adapted package (fitted normal-traffic model beside the
    network) reviews with `inference.adaptation.AdaptedReviewer`, anything else with `Reviewer`."""
    from inference.adaptation.reviewer import ADAPTATION_FILE, AdaptedReviewer
    from inference.reviewer import Reviewer

    model = resolve_model_path(path)
    if path is not None and is_package(Path(path)) and (Path(path) / ADAPTATION_FILE).is_file():
        assert model is not None
        return AdaptedReviewer.from_package(Path(path), model, num_threads)
    return Reviewer(model, num_threads)
