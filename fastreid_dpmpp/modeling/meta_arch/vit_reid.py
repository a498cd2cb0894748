"""What every ViT meta-architecture of this project shares: input normalisation, camera ids for SIE,
SPT occlusion synthesis during training (SPEC §4), and the test descriptor (SPEC §1)."""
import torch
import torch.nn.functional as F
from torch import nn

from fastreid.modeling.backbones import build_backbone


class ViTReIDMetaArch(nn.Module):
    """Base class. Subclasses define ``training_losses(outputs, targets, spt_info) -> dict of losses`` and may
    extend ``inference_outputs(outputs)``."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(1, -1, 1, 1), False)
        self.descriptor = cfg.MODEL.DPMPP.DESCRIPTOR
        if self.descriptor not in ("concat", "cls"):
            raise ValueError(f"MODEL.DPMPP.DESCRIPTOR must be 'concat' or 'cls', got {self.descriptor!r}")
        if self.descriptor == "concat" and self.backbone.embed_dim is None:
            self.descriptor = "cls"  # a vanilla ViT has no CLIP projection
        # The SPT synthesiser holds a frozen SPS model: kept out of the module tree so that it is neither
        # trained, nor saved in this model's checkpoints, nor moved by .to().
        self._spt = [None]

    # ------------------------------------------------------------------ plumbing
    @property
    def device(self):
        return self.pixel_mean.device

    @property
    def spt(self):
        return self._spt[0]

    def attach_spt(self, synthesizer):
        """Called by the SPT training hook (fastreid_dpmpp.engine.spt_hook)."""
        self._spt[0] = synthesizer

    def preprocess_image(self, batched_inputs):
        images = batched_inputs["images"] if isinstance(batched_inputs, dict) else batched_inputs
        images = images.to(self.device, non_blocking=True)
        # Out of place: fast-reid's flip test re-feeds the same (already normalised) tensor.
        return (images - self.pixel_mean) / self.pixel_std

    def camera_ids(self, batched_inputs):
        if isinstance(batched_inputs, dict) and "camids" in batched_inputs:
            return batched_inputs["camids"].to(self.device).long()
        return None

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs):
        images = self.preprocess_image(batched_inputs)
        camids = self.camera_ids(batched_inputs)
        if not self.training:
            return self.inference_outputs(self.backbone.forward_features(images, camids))

        targets = batched_inputs["targets"].to(self.device).long()
        return self.training_forward(images, camids, targets)

    def training_forward(self, images, camids, targets):
        """One training pass (with SPT synthesis when attached) -> dict of named losses."""
        spt_info = None
        patch_transform = None
        if self.spt is not None:
            spt_info = self.spt.synthesize(images, camids, targets)
            patch_transform = spt_info["patch_transform"]
        outputs = self.backbone.forward_features(images, camids, patch_transform=patch_transform)
        return self.training_losses(outputs, targets, spt_info)

    def test_descriptor(self, outputs):
        """concat[v, v_p] (CLIP-ReID) or v, L2-normalised (SPEC §1)."""
        if self.descriptor == "concat":
            return F.normalize(torch.cat([outputs["cls"], outputs["proj"]], dim=1), dim=1)
        return F.normalize(outputs["cls"], dim=1)

    def inference_outputs(self, outputs):
        return self.test_descriptor(outputs)


def head_config(cfg, backbone):
    """A copy of ``cfg`` whose head dimensions match the built backbone (D = width, D_t = CLIP projection)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.BACKBONE.FEAT_DIM = backbone.width
    cfg.MODEL.HEADS.EMBEDDING_DIM = backbone.embed_dim or 0
    return cfg
