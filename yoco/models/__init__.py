"""The model families, and the one table that names them (:mod:`yoco.models.registry`)."""

from yoco.models.registry import ARCHITECTURES, KINDS, PARTS, PRESETS, build, resolve

__all__ = ["ARCHITECTURES", "KINDS", "PARTS", "PRESETS", "build", "resolve"]
