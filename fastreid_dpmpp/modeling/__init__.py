"""Importing registers the backbones, heads and meta-architectures into fast-reid's registries."""
from . import backbones, heads, meta_arch  # noqa: F401
