"""Adding migradetect layer-data tuples to a viewer, and finding them again."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from napari.layers import Layer

from migradetect.layers import METADATA_KEY


def add_layers(viewer: Any, tuples: Iterable[tuple[Any, dict[str, Any], str]]) -> list[Layer]:
    """Add layer tuples to ``viewer``; a layer of the same name is replaced, not duplicated."""
    added = []
    for data, kwargs, kind in tuples:
        name = kwargs.get("name")
        if name is not None and name in viewer.layers:
            viewer.layers.remove(name)
        added.append(viewer.add_layer(Layer.create(data, kwargs, kind)))
    return added


def meta(layer: Layer) -> dict[str, Any]:
    """What migradetect recorded about ``layer`` ({} for other layers)."""
    value = layer.metadata.get(METADATA_KEY) if layer.metadata else None
    return value if isinstance(value, dict) else {}


def find_layers(viewer: Any, role: str) -> list[Layer]:
    """Layers of ``viewer`` that migradetect made with this role (``migrasomes``, ...)."""
    return [layer for layer in viewer.layers if meta(layer).get("role") == role]


def find_layer(viewer: Any, role: str, movie_dir: str | None = None) -> Layer | None:
    """The last layer with ``role`` (of the same results folder when given), or None."""
    found = [layer for layer in find_layers(viewer, role)
             if movie_dir is None or meta(layer).get("movie_dir") == movie_dir]
    return found[-1] if found else None


def camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, else ``viewer.camera``)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera
