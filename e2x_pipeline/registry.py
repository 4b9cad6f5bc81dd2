"""Registries of the library's pluggable kinds: explanation methods and detector architectures.

This module sits at the bottom of the library and imports none of it, so the config can take its
choices from here without importing the explainers or detectors (which import the config).

* :data:`EXPLAINERS`: every :class:`~e2x_pipeline.explain.base.Explainer` subclass that sets a
  ``name`` registers itself when its class is defined. The first lookup imports every module of
  ``e2x_pipeline.explain``, so a new method is one new file there; a class defined anywhere else
  (a user's module, a test) registers the same way once it is imported.
* :data:`ARCHITECTURES`: ``model.arch`` name -> the detector module that builds it and the
  module and class of its :class:`~e2x_pipeline.detectors.base.Detector` adapter.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """name -> class, filled by the classes themselves; ``discover`` names the package whose
    modules are imported on first use."""

    def __init__(self, kind: str, discover: str | None = None) -> None:
        self.kind = kind
        self._discover = discover
        self._discovered = False
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> None:
        old = self._items.get(name)
        if old is not None and _qualname(old) != _qualname(item):
            raise ValueError(
                f"{self.kind} {name!r} is registered twice: {_qualname(old)}, {_qualname(item)}"
            )
        self._items[name] = item

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a class defined for a while only, e.g. in a test)."""
        self._items.pop(name, None)

    def _load(self) -> None:
        if self._discovered or self._discover is None:
            return
        self._discovered = True
        package = importlib.import_module(self._discover)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{self._discover}.{info.name}")

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {self.names()}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _qualname(item: Any) -> str:
    return f"{getattr(item, '__module__', '?')}.{getattr(item, '__qualname__', item)}"


EXPLAINERS: Registry[Any] = Registry("explanation method", discover="e2x_pipeline.explain")

# arch name -> (module with its ``build`` function, module with its Detector class, class name),
# modules relative to e2x_pipeline.detectors. ``custom`` (a user's entry point) is not listed.
ARCHITECTURES: dict[str, tuple[str, str, str]] = {
    "compact_ssd": ("compact_ssd", "ssd", "SSDDetector"),
    "ssd300_vgg16": ("ssd", "ssd", "SSDDetector"),
    "ssdlite320_mobilenet_v3_large": ("ssd", "ssd", "SSDDetector"),
    "retinanet_resnet50_fpn": ("retinanet", "retinanet", "RetinaNetDetector"),
    "retinanet_resnet50_fpn_v2": ("retinanet", "retinanet", "RetinaNetDetector"),
    "fcos_resnet50_fpn": ("fcos", "fcos", "FCOSDetector"),
    "fasterrcnn_resnet50_fpn": ("faster_rcnn", "faster_rcnn", "FasterRCNNDetector"),
    "fasterrcnn_resnet50_fpn_v2": ("faster_rcnn", "faster_rcnn", "FasterRCNNDetector"),
    "fasterrcnn_mobilenet_v3_large_fpn": ("faster_rcnn", "faster_rcnn", "FasterRCNNDetector"),
}

# The input side each architecture is built for, used when ``model.image_size`` is not set: the
# compact SSD's training size, SSD300's fixed 300 px, SSDlite's 320 px, and torchvision's
# ``min_size=800`` (shorter side) for its FPN detectors, so real images are not shrunk.
NATIVE_IMAGE_SIZE: dict[str, int] = {
    "compact_ssd": 128,
    "ssd300_vgg16": 300,
    "ssdlite320_mobilenet_v3_large": 320,
    "retinanet_resnet50_fpn": 800,
    "retinanet_resnet50_fpn_v2": 800,
    "fcos_resnet50_fpn": 800,
    "fasterrcnn_resnet50_fpn": 800,
    "fasterrcnn_resnet50_fpn_v2": 800,
    "fasterrcnn_mobilenet_v3_large_fpn": 800,
}
