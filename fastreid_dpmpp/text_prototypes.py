"""The Stage I output file: the coarse text prototypes T ∈ R^{C×D_t} (SPEC §2, Eq. 12).

The file is a plain dict (loads with ``torch.load(weights_only=True)``)::

    {"prototypes": (C, D_t) float tensor, row c = text feature of training label c,
     "num_classes": C,
     "identities": [C identity keys in label order, as strings],
     "embed_dim": D_t}

The identity keys are those of fast-reid's ``CommDataset.pids`` (e.g. "OccludedDuke_5"), whose sorted order
defines the training labels. Stage III loads T with :func:`load_text_prototypes`, passing its own training
set's keys, so a file written for another dataset, split or identity order is refused.
"""
import logging

import torch

from .checkpoint import atomic_torch_save, trusted_torch_load

logger = logging.getLogger("fastreid.dpmpp.text_prototypes")

__all__ = ["TextPrototypeMismatchError", "save_text_prototypes", "read_text_prototypes",
           "load_text_prototypes", "identity_keys", "CONFIG_KEY"]

CONFIG_KEY = "MODEL.DPMPP.TEXT_PROTOTYPES"
REQUIRED_KEYS = ("prototypes", "num_classes", "identities", "embed_dim")


class TextPrototypeMismatchError(ValueError):
    """The T file does not belong to the training set it is loaded for."""


def identity_keys(identities):
    """Identity keys as strings (fast-reid's training pids are "<dataset>_<pid>" strings already)."""
    return [str(i) for i in identities]


def save_text_prototypes(path, prototypes, identities):
    """Write T atomically. ``prototypes``: (C, D_t); ``identities``: the C keys in label order."""
    if not isinstance(prototypes, torch.Tensor) or prototypes.dim() != 2:
        raise ValueError(f"text prototypes must be a (C, D_t) tensor, got "
                         f"{type(prototypes).__name__} {tuple(getattr(prototypes, 'shape', ()))}")
    identities = identity_keys(identities)
    if len(identities) != prototypes.shape[0]:
        raise ValueError(f"{prototypes.shape[0]} text prototypes but {len(identities)} identity keys")
    if len(set(identities)) != len(identities):
        raise ValueError("the identity keys of the text prototypes are not unique")
    atomic_torch_save({
        "prototypes": prototypes.detach().float().cpu().contiguous(),
        "num_classes": int(prototypes.shape[0]),
        "identities": identities,
        "embed_dim": int(prototypes.shape[1]),
    }, path)
    logger.info("Saved %d text prototypes (D_t=%d) to %s", prototypes.shape[0], prototypes.shape[1], path)


def read_text_prototypes(path):
    """The checked content of a T file (the dict above); raises naming ``path`` when it is missing or malformed."""
    if not path:
        raise FileNotFoundError(f"{CONFIG_KEY} is empty: no Stage I text-prototype file given "
                                f"(run tools/train_stage1.py first)")
    try:
        data = trusted_torch_load(path, what=f"text-prototype file ({CONFIG_KEY})")
    except FileNotFoundError:
        raise FileNotFoundError(f"text-prototype file '{path}' ({CONFIG_KEY}) does not exist; run Stage I "
                                f"(tools/train_stage1.py) to create it") from None
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED_KEYS):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"text-prototype file '{path}' is not a Stage I output: expected keys "
                         f"{list(REQUIRED_KEYS)}, found {found}")
    prototypes, num_classes, embed_dim = data["prototypes"], data["num_classes"], data["embed_dim"]
    if not isinstance(prototypes, torch.Tensor) or prototypes.dim() != 2 \
            or tuple(prototypes.shape) != (num_classes, embed_dim) or len(data["identities"]) != num_classes:
        raise ValueError(f"text-prototype file '{path}' is inconsistent: prototypes "
                         f"{tuple(getattr(prototypes, 'shape', ()))}, num_classes {num_classes}, embed_dim "
                         f"{embed_dim}, {len(data['identities'])} identities")
    return data


def load_text_prototypes(path, expected_identities=None, expected_dim=None):
    """T (C, D_t) from ``path``, checked against the training identities (label order) and D_t.

    Raises TextPrototypeMismatchError naming the file when C, the identity order or D_t differ.
    """
    data = read_text_prototypes(path)
    prototypes = data["prototypes"].float()
    if expected_identities is not None:
        expected = identity_keys(expected_identities)
        stored = identity_keys(data["identities"])
        if len(stored) != len(expected):
            raise TextPrototypeMismatchError(
                f"text-prototype file '{path}' ({CONFIG_KEY}) holds C={len(stored)} identities but the training "
                f"set has C={len(expected)}: it was written for another dataset or split; rerun Stage I")
        first = next((i for i, (a, b) in enumerate(zip(stored, expected)) if a != b), None)
        if first is not None:
            raise TextPrototypeMismatchError(
                f"text-prototype file '{path}' ({CONFIG_KEY}) lists the identities in another order: first "
                f"mismatch at label {first}: file has {stored[first]!r}, training set has {expected[first]!r}")
    if expected_dim is not None and prototypes.shape[1] != int(expected_dim):
        raise TextPrototypeMismatchError(
            f"text-prototype file '{path}' ({CONFIG_KEY}) has D_t={prototypes.shape[1]} but the model's "
            f"projected feature v_p has {int(expected_dim)} dimensions")
    return prototypes
