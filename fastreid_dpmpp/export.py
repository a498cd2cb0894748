"""The inference model (SPEC §6: descriptor g and query mask m̄) as a plain tensor-in / tensor-out module, its
ONNX export (TorchScript exporter, opset ≥ 17) and an onnxruntime runner. Used by tools/export_onnx.py and
tools/search.py.

Exported graph: inputs ``images`` (B, 3, H, W) float32 in [0, 255] (the model normalises) and, when the model
has an SIE table, ``camids`` (B,) int64; outputs ``descriptor`` (B, W) (L2-normalised) and, with masked
matching, ``mask`` (B, W) (m̄: the HMG mask laid over the descriptor dims, ones where compared unmasked).
"""
import logging
import os
import warnings

import torch
from torch import nn

from .checkpoint import trusted_torch_load
from .model_outputs import unpack_descriptor_and_mask

__all__ = ["InferenceModel", "load_inference_model", "export_onnx", "run_onnx", "MIN_OPSET"]

logger = logging.getLogger("fastreid.dpmpp.export")
MIN_OPSET = 17


class InferenceModel(nn.Module):
    """Wraps a fast-reid meta-architecture in eval mode: (images[, camids]) -> descriptor[, mask]."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()
        self.masked = bool(getattr(model, "masked_matching", False))
        backbone = getattr(model, "backbone", None)
        # camera ids are an input only when the model adds the camera embedding at test (MODEL.VIT.SIE_AT_TEST)
        self.uses_camids = getattr(backbone, "sie_embed", None) is not None and getattr(model, "sie_at_test", True)
        self.eval()

    @property
    def output_names(self):
        return ["descriptor", "mask"] if self.masked else ["descriptor"]

    @property
    def input_names(self):
        return ["images", "camids"] if self.uses_camids else ["images"]

    def forward(self, images, camids=None):
        batch = {"images": images}
        if camids is not None:
            batch["camids"] = camids
        features = self.model(batch)
        if self.masked:
            descriptor, mask = unpack_descriptor_and_mask(features)
            return descriptor, mask
        return features


def _camera_rows_in(weights):
    if not weights or not os.path.isfile(weights):
        return 0
    state = trusted_torch_load(weights)
    state = state.get("model", state)
    table = state.get("backbone.sie_embed")
    return 0 if table is None else int(table.shape[0])


def load_inference_model(config_file, opts=()):
    """Config file + KEY VALUE opts (MODEL.WEIGHTS: the trained checkpoint; empty = random init) -> the
    eval-mode meta-architecture on MODEL.DEVICE, and its config. MODEL.VIT.NUM_CAMERAS 0 with SIE on is
    filled from the checkpoint's SIE table, so no dataset is needed."""
    import fastreid_dpmpp.modeling  # noqa: F401  (registration)
    from fastreid.modeling import build_model
    from fastreid.utils.checkpoint import Checkpointer

    from .engine import load_config

    cfg = load_config(config_file, opts)
    weights = cfg.MODEL.WEIGHTS
    if weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS: no checkpoint file {weights!r}")
    vit = cfg.MODEL.get("VIT")
    if vit is not None and vit.SIE_ENABLED and vit.NUM_CAMERAS == 0:
        cfg.defrost()
        vit.NUM_CAMERAS = _camera_rows_in(weights)
    model = build_model(cfg)
    if weights:
        Checkpointer(model).load(weights)
    return model.eval(), cfg


def export_onnx(model, path, image_size, opset=MIN_OPSET, batch_size=2):
    """Export ``InferenceModel(model)`` to ``path`` (written atomically) with a dynamic batch axis; returns the
    wrapper. image_size = (H, W)."""
    if opset < MIN_OPSET:
        raise ValueError(f"export.py: opset must be >= {MIN_OPSET}, got {opset}")
    wrapper = InferenceModel(model)
    height, width = image_size
    images = torch.rand(batch_size, 3, height, width, device=next(model.parameters()).device) * 255
    args = (images,)
    if wrapper.uses_camids:
        args = (images, torch.zeros(batch_size, dtype=torch.long, device=images.device))
    dynamic = {name: {0: "batch"} for name in wrapper.input_names + wrapper.output_names}
    temporary = f"{path}.tmp{os.getpid()}"
    # Shape checks in the model become trace-time constants (the shapes are fixed by the config): silence them.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(wrapper, args, temporary, input_names=wrapper.input_names,
                          output_names=wrapper.output_names, dynamic_axes=dynamic, opset_version=opset,
                          dynamo=False, do_constant_folding=True)
    os.replace(temporary, path)
    logger.info("wrote %s (inputs %s, outputs %s, opset %d)", path, wrapper.input_names, wrapper.output_names, opset)
    return wrapper


def run_onnx(path, images, camids=None):
    """onnxruntime (CPU) on numpy/tensor inputs -> dict output name -> numpy array."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {"images": np.asarray(images.cpu() if torch.is_tensor(images) else images, dtype=np.float32)}
    input_names = [i.name for i in session.get_inputs()]
    if "camids" in input_names:
        if camids is None:
            raise ValueError(f"export.py: {path} takes camera ids (SIE): pass camids")
        feeds["camids"] = np.asarray(camids.cpu() if torch.is_tensor(camids) else camids, dtype=np.int64)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))
