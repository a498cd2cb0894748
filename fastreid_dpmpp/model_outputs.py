"""The model -> evaluator contract of masked matching (SPEC §6): what a model returns in eval, and when.

fast-reid's ``inference_on_dataset`` wants ONE tensor per batch (it averages the model's output over the image and
its flip, then calls the evaluator's ``process``), so a model with masked matching returns

    cat([g, m̄], dim=1)     (B, 2·W)

with g the W-dimensional test descriptor and m̄ the HMG mask laid over the descriptor's dimensions: the mask values
where it acts, ones where the descriptor is compared unmasked (e.g. m̄ = [m, 1…1] for g = concat[v, v_p] and a mask
over v). :func:`pack_descriptor_and_mask` builds it (the models: ``DPMHead`` in map mode, the ``DPMPP``
meta-architecture) and :func:`unpack_descriptor_and_mask` splits it in half (``MaskedReidEvaluator``, the ONNX
export, the search tool), so the evaluator needs no knowledge of the model's widths.

Who emits masks: :func:`emits_query_masks` (a DPMHead with a mask generator and TEST.MASKED_MATCHING.ENABLED); the
models and the trainer's evaluator choice ask the same function. Any other model returns the descriptor alone.

This module sits below ``modeling`` and ``evaluation`` (it imports only torch): both import it, neither imports the
other.
"""
import torch

__all__ = ["pack_descriptor_and_mask", "unpack_descriptor_and_mask", "has_mask_generator", "emits_query_masks"]


def has_mask_generator(cfg):
    """True when the config gives the head an HMG (DPM branch on and a prototype to mask)."""
    return bool(cfg.MODEL.DPMPP.DPM_ENABLED) and cfg.MODEL.DPMPP.MASKED_PROTOTYPE != "none"


def emits_query_masks(cfg):
    """True when a model built from ``cfg`` returns cat([descriptor, mask]) in eval (masked matching):
    a DPMHead with a mask generator and TEST.MASKED_MATCHING.ENABLED. The models (``DPMHead``, the ``DPMPP``
    meta-architecture) decide what to return with this test, and the trainer picks the evaluator with it."""
    return (cfg.MODEL.HEADS.NAME == "DPMHead" and bool(cfg.TEST.MASKED_MATCHING.ENABLED)
            and has_mask_generator(cfg))


def pack_descriptor_and_mask(descriptor, mask, offset=0):
    """(B, W) descriptor and (B, D_m) mask acting on descriptor dims [offset, offset + D_m) ->
    (B, 2W) = cat([descriptor, mask laid over the descriptor with ones elsewhere])."""
    if descriptor.dim() != 2 or mask.dim() != 2 or mask.shape[0] != descriptor.shape[0] \
            or offset < 0 or offset + mask.shape[1] > descriptor.shape[1]:
        raise ValueError(
            f"model_outputs.py: a {tuple(mask.shape)} mask at offset {offset} does not fit the "
            f"{tuple(descriptor.shape)} descriptor")
    width, mask_dim = descriptor.shape[1], mask.shape[1]
    ones = descriptor.new_ones
    laid = torch.cat([ones(mask.shape[0], offset), mask.to(descriptor.dtype),
                      ones(mask.shape[0], width - offset - mask_dim)], dim=1)
    return torch.cat([descriptor, laid], dim=1)


def unpack_descriptor_and_mask(features):
    """(N, 2W) -> descriptors (N, W), masks (N, W): the inverse of :func:`pack_descriptor_and_mask`."""
    if features.dim() != 2 or features.shape[1] % 2:
        raise ValueError(
            f"model_outputs.py: MaskedReidEvaluator expects model outputs cat([descriptor, mask]) of even "
            f"width (see pack_descriptor_and_mask), got {tuple(features.shape)}; is the model a DPMHead "
            "model with TEST.MASKED_MATCHING.ENABLED?")
    return features.chunk(2, dim=1)
