"""What every ViT meta-architecture of this project shares: input normalisation, camera ids for SIE,
SPT occlusion synthesis during training (SPEC §4), and the test descriptor (SPEC §1)."""
import torch
import torch.nn.functional as F
from torch import nn

from fastreid.modeling.backbones import build_backbone

from ..patch_hiding import check_hiding, sample_hidden_rectangles


class ViTReIDMetaArch(nn.Module):
    """Base class. Subclasses define ``training_losses(outputs, targets, spt_info) -> dict of losses`` and may
    extend ``inference_outputs(outputs)``."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(1, -1, 1, 1), False)
        self.descriptor = cfg.MODEL.DPMPP.DESCRIPTOR
        if self.descriptor not in DESCRIPTORS:
            raise ValueError(f"MODEL.DPMPP.DESCRIPTOR must be one of {sorted(DESCRIPTORS)}, got {self.descriptor!r}")
        if self.backbone.embed_dim is None and "vp" in DESCRIPTORS[self.descriptor]:
            # a vanilla ViT has no CLIP projection: its descriptor is the v (or BN(v)) part alone
            self.descriptor = "bn_cls" if "bn_v" in DESCRIPTORS[self.descriptor] else "cls"
        self.sie_at_test = bool(cfg.MODEL.VIT.SIE_AT_TEST)
        hiding = cfg.MODEL.VIT.HIDE_PATCHES
        check_hiding(hiding.PROB, hiding.AREA)
        self.hide_prob, self.hide_area = float(hiding.PROB), tuple(float(a) for a in hiding.AREA)
        # The SPT synthesiser (SPEC §4), owned and attached by the SPT training hook, None otherwise. A plain
        # attribute, not a submodule (SPTSynthesizer is no nn.Module): its frozen SPS model is neither trained,
        # nor saved in this model's checkpoints, nor moved by .to().
        self.spt = None

    # ------------------------------------------------------------------ plumbing
    @property
    def device(self):
        return self.pixel_mean.device

    def attach_spt(self, synthesizer):
        """Called by the SPT training hook (fastreid_dpmpp.engine.stage3_spt_hook), which owns ``synthesizer``; None
        detaches it."""
        self.spt = synthesizer

    def preprocess_image(self, batched_inputs):
        images = batched_inputs["images"] if isinstance(batched_inputs, dict) else batched_inputs
        images = images.to(self.device, non_blocking=True)
        # Out of place: fast-reid's flip test re-feeds the same (already normalised) tensor.
        return (images - self.pixel_mean) / self.pixel_std

    def camera_ids(self, batched_inputs):
        """Camera ids for SIE; None at test when MODEL.VIT.SIE_AT_TEST is False."""
        if not self.training and not self.sie_at_test:
            return None
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

    def training_visibility(self, batch):
        """(B, N) bool patches each training image may attend to (MODEL.VIT.HIDE_PATCHES), or None when off."""
        if self.hide_prob <= 0.0:
            return None
        hidden = sample_hidden_rectangles(batch, self.backbone.grid_size, self.hide_prob, self.hide_area)
        return (~hidden).to(self.device)

    def training_forward(self, images, camids, targets):
        """One training pass (with SPT synthesis when attached) -> dict of named losses."""
        spt_info = None
        patch_transform = None
        if self.spt is not None:
            spt_info = self.spt.synthesize(images, camids, targets)
            patch_transform = spt_info["patch_transform"]
        outputs = self.backbone.forward_features(images, camids, patch_transform=patch_transform,
                                                 visible_patches=self.training_visibility(images.shape[0]))
        return self.training_losses(outputs, targets, spt_info)

    def features_of(self, outputs):
        """Every per-image feature an evaluation may compare, by name: "v" (CLS feature), "vp" (CLIP projection,
        CLIP family), plus what the subclass's necks and heads add (``neck_features``, e.g. "bn_v", "mask")."""
        features = {"v": outputs["cls"]}
        if outputs.get("proj") is not None:
            features["vp"] = outputs["proj"]
        features.update(self.neck_features(outputs))
        return features

    def neck_features(self, outputs):
        """Subclasses: e.g. {"bn_v": BN(v)} and, for mask models, {"mask": m}."""
        return {}

    def test_descriptor(self, outputs):
        """The MODEL.DPMPP.DESCRIPTOR descriptor (see ``DESCRIPTORS``), L2-normalised."""
        return descriptor_layout(self.descriptor, self.features_of(outputs))[0]

    def inference_outputs(self, outputs):
        return self.test_descriptor(outputs)

    @torch.no_grad()
    def named_features(self, batched_inputs, use_cameras=True, with_patch_tokens=False):
        """``features_of`` for a batch (eval mode); ``use_cameras`` False leaves the camera embedding out;
        ``with_patch_tokens`` adds "patch_tokens" (B, N, D), the last block's tokens after the final norm."""
        images = self.preprocess_image(batched_inputs)
        camids = batched_inputs["camids"].to(self.device).long() if use_cameras and "camids" in batched_inputs else None
        outputs = self.backbone.forward_features(images, camids)
        features = self.features_of(outputs)
        if with_patch_tokens:
            features["patch_tokens"] = outputs["patch_tokens"]
        return features


# MODEL.DPMPP.DESCRIPTOR -> the features it concatenates (each part L2-normalised when there are two, then the
# whole): "concat" = L2(concat[v, v_p]) as CLIP-ReID tests (one normalisation over both parts, SPEC §1);
# "cls" = v; "bn_cls" = BN(v); "proj" = v_p; "concat_bn" = concat[L2 BN(v), L2 v_p] / sqrt 2 [ours].
DESCRIPTORS = {"concat": ("v", "vp"), "cls": ("v",), "bn_cls": ("bn_v",), "proj": ("vp",),
               "concat_bn": ("bn_v", "vp")}


def descriptor_layout(name, features):
    """(descriptor (B, W), {feature name: first dim of its part}) of DESCRIPTORS[name] built from ``features``.
    A mask over v acts on the part of "v" or "bn_v"; a mask over v_p on the part of "vp"."""
    parts = DESCRIPTORS[name]
    missing = [p for p in parts if p not in features]
    if missing:
        raise ValueError(f"MODEL.DPMPP.DESCRIPTOR {name!r} needs {missing}, which this model does not compute")
    tensors = [features[p] for p in parts]
    if name == "concat_bn":
        tensors = [F.normalize(t, dim=1) for t in tensors]
    descriptor = F.normalize(torch.cat(tensors, dim=1), dim=1)
    offsets, start = {}, 0
    for part, tensor in zip(parts, tensors):
        offsets[part] = start
        start += tensor.shape[1]
    return descriptor, offsets


def head_config(cfg, backbone):
    """A copy of ``cfg`` whose head dimensions match the built backbone (D = width, D_t = CLIP projection)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.BACKBONE.FEAT_DIM = backbone.width
    cfg.MODEL.HEADS.EMBEDDING_DIM = backbone.embed_dim or 0
    return cfg
