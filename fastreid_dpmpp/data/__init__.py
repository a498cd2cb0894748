"""Datasets of the plugin. Importing this package registers them in fast-reid's ``DATASET_REGISTRY``;
the synthetic benchmark generator lives in :mod:`fastreid_dpmpp.data.synthetic`."""
from .datasets import (  # noqa: F401
    DatasetLayoutError,
    DatasetNotFoundError,
    EmptySplitError,
    FileNamePatternError,
    OccludedDuke,
    OccludedDukeHolisticQuery,
    OccludedREID,
)
