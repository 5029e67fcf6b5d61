"""Container images: references, the inventory of built manifests, mirror and preload plans."""

from .inventory import ImageUse, Inventory, scan
from .refs import ImageRef, NotAReference, normalize, parse, try_parse

__all__ = ["ImageRef", "ImageUse", "Inventory", "NotAReference", "normalize", "parse", "scan", "try_parse"]
