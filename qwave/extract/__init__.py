"""Audio files or rendered spectrogram images -> embedding table (front ends, backbones, layouts, writer)."""

from qwave.extract.backbones import BACKBONES, Backbone, BackboneOptions, load_backbone
from qwave.extract.layouts import LAYOUTS, Item, Layout, read_layout
from qwave.extract.pipeline import ExtractConfig, ExtractResult, extract_table

__all__ = [
    "BACKBONES", "Backbone", "BackboneOptions", "load_backbone",
    "LAYOUTS", "Item", "Layout", "read_layout",
    "ExtractConfig", "ExtractResult", "extract_table",
]
