"""DPM head (SPEC §5): BN-neck, learnable prototypes P, Hierarchical Mask Generator, masked prototypes.

    f = BN(v)                                    BN-neck, bias frozen [pred]
    P ∈ R^{C×D}                                  Eq. 8, xavier-uniform (DPM)
    m = HMG(taps) ∈ (0,1)^{D_m}                  Eq. 9, 20-21 (starts at 0.5)
    id logits   = f · Pᵀ                         Eq. 14 (L_id)
    mask logits = ArcFace_{s,m}(cos_{i,c})       Eq. 15-16 (L_mask), cos from Eq. 10's masked prototypes
    coarse logits = v_p · Tᵀ                     Eq. 13 (L_coarse), T frozen, when MODEL.DPMPP.TEXT_PROTOTYPES is set

Where the mask acts (MODEL.DPMPP.MASKED_PROTOTYPE, paper Table VI):
    "visual": cos = masked_prototype_cosine(f, P, m) (D_m = D; MASK_SIDE / MASK_BEFORE_NORM: Table IV);
    "text":   cos = masked_prototype_cosine(v_p, T, m), the mask is generated in D_m = D_t;
    "none":   cos = ⟨f̂, P̂_c⟩, no mask generator (the angular-margin branch without a mask).
MODEL.DPMPP.DPM_ENABLED False removes the margin branch and the mask (a plain prototype classifier).

The head reads two kinds of input:
* token mode (the ``DPMPP`` meta-arch, MODEL.BACKBONE.NAME ``build_clip_vit_backbone``): the backbone's
  output dict (cls, proj, taps, patch_tokens, grid); HMG taps = the tapped blocks' patch tokens on the
  patch grid; HMG_ENABLED False -> the final patch tokens only;
* map mode (fast-reid's stock ``Baseline`` with any fast-reid backbone): a 4-D map. With
  ``build_tapped_resnet_backbone`` it packs the stage taps (see ``backbones/tapped_cnn.py``); with any
  other backbone the final map is the only tap. v = pool(final map) (MODEL.HEADS.POOL_LAYER), then an
  optional bias-free linear reduction to MODEL.HEADS.EMBEDDING_DIM (fast-reid's EmbeddingHead neck).
  Training returns what ``Baseline.losses`` reads: ``cls_outputs`` = the ArcFace masked logits, so
  fast-reid's CrossEntropyLoss trains L_mask (weight MODEL.LOSSES.CE.SCALE = λ) — and with it P, HMG
  and the backbone; ``pred_class_logits`` = f·Pᵀ (accuracy); ``features`` = pooled v (NECK_FEAT
  "before") or f ("after") for the triplet. The plain L_id term has no slot in stock ``Baseline`` and
  is not trained there (with DPM_ENABLED False, ``cls_outputs`` are the plain logits, i.e. L_id).
  Eval returns f, or ``pack_descriptor_and_mask(f, m)`` with masked matching (:func:`emits_query_masks`).
"""
import logging

import torch
import torch.nn.functional as F
from torch import nn

from fastreid.layers import pooling
from fastreid.modeling.heads.build import REID_HEADS_REGISTRY

from ...model_outputs import emits_query_masks, has_mask_generator, pack_descriptor_and_mask
from ..backbones.tapped_cnn import TAPPED_BACKBONES, TapLayout
from ..hmg import HierarchicalMaskGenerator, tokens_to_grid
from ..losses import MASK_SIDES, arcface_logits, masked_prototype_cosine
from .bnneck import BNNeck

# emits_query_masks / has_mask_generator: defined in fastreid_dpmpp.model_outputs (the model -> evaluator contract)
__all__ = ["DPMHead", "MASKED_PROTOTYPES", "TOKEN_BACKBONES", "emits_query_masks", "has_mask_generator",
           "load_frozen_text_prototypes"]

logger = logging.getLogger("fastreid.dpmpp.dpm_head")

MASKED_PROTOTYPES = ("visual", "text", "none")
TOKEN_BACKBONES = ("build_clip_vit_backbone",)  # backbones whose DPMPP meta-arch hands the head a token dict


def _check_choices(cfg):
    dpmpp = cfg.MODEL.DPMPP
    if dpmpp.MASKED_PROTOTYPE not in MASKED_PROTOTYPES:
        raise ValueError(f"MODEL.DPMPP.MASKED_PROTOTYPE must be one of {MASKED_PROTOTYPES}, got "
                         f"{dpmpp.MASKED_PROTOTYPE!r}")
    if dpmpp.MASK_SIDE not in MASK_SIDES:
        raise ValueError(f"MODEL.DPMPP.MASK_SIDE must be one of {MASK_SIDES}, got {dpmpp.MASK_SIDE!r}")


def load_frozen_text_prototypes(path, num_classes, dim):
    """T (C, D_t) from the Stage I file, checked against C = MODEL.HEADS.NUM_CLASSES and D_t.

    (The identity-order check needs the training set's identity keys, which a head built from the config
    does not have; ``fastreid_dpmpp.text_prototypes.load_text_prototypes`` does it when given them.)
    """
    from ...text_prototypes import load_text_prototypes
    prototypes = load_text_prototypes(path, expected_dim=dim)
    if prototypes.shape[0] != num_classes:
        raise ValueError(f"text-prototype file '{path}' (MODEL.DPMPP.TEXT_PROTOTYPES) holds C={prototypes.shape[0]} "
                         f"prototypes but the training set has MODEL.HEADS.NUM_CLASSES={num_classes} identities")
    return prototypes


def _map_mode_layout(cfg):
    name = cfg.MODEL.BACKBONE.NAME
    if name in TAPPED_BACKBONES:
        return TAPPED_BACKBONES[name](cfg)
    return TapLayout(extra_channels=(), final_channels=int(cfg.MODEL.BACKBONE.FEAT_DIM), final_is_tap=True)


@REID_HEADS_REGISTRY.register()
class DPMHead(nn.Module):
    """See the module docstring. Built from the config like every fast-reid head."""

    def __init__(self, cfg):
        super().__init__()
        _check_choices(cfg)
        dpmpp, heads = cfg.MODEL.DPMPP, cfg.MODEL.HEADS
        self.num_classes = int(heads.NUM_CLASSES)
        if self.num_classes < 0:
            raise ValueError(f"MODEL.HEADS.NUM_CLASSES must be >= 0, got {heads.NUM_CLASSES}")
        if self.num_classes == 0:  # as fast-reid's heads: an inference-only model (eval-only with the base config)
            logger.info("MODEL.HEADS.NUM_CLASSES is 0: DPMHead has no prototypes (inference only)")
        self.token_mode = cfg.MODEL.BACKBONE.NAME in TOKEN_BACKBONES
        self.masked_prototype = dpmpp.MASKED_PROTOTYPE if dpmpp.DPM_ENABLED else None
        self.mask_side = dpmpp.MASK_SIDE
        self.mask_before_norm = bool(dpmpp.MASK_BEFORE_NORM)
        self.arcface_scale = float(cfg.MODEL.LOSSES.MASK.S)
        self.arcface_margin = float(cfg.MODEL.LOSSES.MASK.M)
        self.emits_masks = emits_query_masks(cfg)
        self.hierarchical = False
        self.neck_feat = heads.NECK_FEAT

        feat_dim = int(cfg.MODEL.BACKBONE.FEAT_DIM)
        if self.token_mode:
            self.proj_dim = int(heads.EMBEDDING_DIM)  # D_t (set by head_config from the backbone)
            self.feature_dim = feat_dim
            self.tap_channels = (feat_dim,) * len(cfg.MODEL.VIT.TAPS)
            self.final_channels = feat_dim
        else:
            self._build_map_neck(cfg, feat_dim)

        self.bottleneck = BNNeck(self.feature_dim)
        self.prototypes = nn.Parameter(torch.empty(self.num_classes, self.feature_dim))
        if self.num_classes > 0:
            nn.init.xavier_uniform_(self.prototypes)
        self._build_text_prototypes(cfg)
        self.mask_generator = self._build_mask_generator(cfg) if has_mask_generator(cfg) else None

    # ------------------------------------------------------------------ construction
    def _build_map_neck(self, cfg, feat_dim):
        self.map_layout = _map_mode_layout(cfg)
        self.tap_channels = self.map_layout.tap_channels
        self.final_channels = self.map_layout.final_channels
        self.proj_dim = 0
        pool_type = cfg.MODEL.HEADS.POOL_LAYER
        if not hasattr(pooling, pool_type):
            raise ValueError(f"MODEL.HEADS.POOL_LAYER={pool_type!r} is not one of fast-reid's {pooling.__all__}")
        self.pool_layer = getattr(pooling, pool_type)()
        embedding_dim = int(cfg.MODEL.HEADS.EMBEDDING_DIM)
        self.embedding = nn.Linear(feat_dim, embedding_dim, bias=False) if embedding_dim > 0 else None
        self.feature_dim = embedding_dim if embedding_dim > 0 else feat_dim
        if self.neck_feat not in ("before", "after"):
            raise ValueError(f"MODEL.HEADS.NECK_FEAT must be 'before' or 'after', got {self.neck_feat!r}")

    def _build_text_prototypes(self, cfg):
        path = cfg.MODEL.DPMPP.TEXT_PROTOTYPES if self.num_classes > 0 else ""  # T only serves training
        if self.masked_prototype == "text" and not cfg.MODEL.DPMPP.TEXT_PROTOTYPES:
            raise ValueError("MODEL.DPMPP.MASKED_PROTOTYPE='text' masks the Stage I text prototypes T: set "
                             "MODEL.DPMPP.TEXT_PROTOTYPES to the Stage I output file")
        if path and self.proj_dim <= 0:
            raise ValueError("MODEL.DPMPP.TEXT_PROTOTYPES needs the CLIP projection v_p (a CLIP ViT in the DPMPP "
                             f"meta-architecture); this head has none (MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME})")
        prototypes = load_frozen_text_prototypes(path, self.num_classes, self.proj_dim) if path else None
        # A frozen buffer: saved with the model, never trained (SPEC §5: T frozen).
        self.register_buffer("text_prototypes", prototypes, persistent=True)

    def _build_mask_generator(self, cfg):
        mask_dim = self.proj_dim if self.masked_prototype == "text" else self.feature_dim
        hierarchical = bool(cfg.MODEL.DPMPP.HMG_ENABLED)
        if hierarchical and not self.token_mode and cfg.MODEL.BACKBONE.NAME not in TAPPED_BACKBONES:
            logger.warning("MODEL.DPMPP.HMG_ENABLED: backbone %s packs no stage taps; the mask is generated from "
                           "its final map only (use build_tapped_resnet_backbone for hierarchical taps)",
                           cfg.MODEL.BACKBONE.NAME)
            hierarchical = False
        self.hierarchical = hierarchical
        if hierarchical:
            return HierarchicalMaskGenerator(list(self.tap_channels), num_taps=len(self.tap_channels),
                                             out_dim=mask_dim, gates=cfg.MODEL.DPMPP.HMG_GATES,
                                             reduction=cfg.MODEL.DPMPP.HMG_REDUCTION, pool=cfg.MODEL.DPMPP.HMG_POOL)
        return HierarchicalMaskGenerator([self.final_channels], num_taps=1, out_dim=mask_dim,
                                         reduction=cfg.MODEL.DPMPP.HMG_REDUCTION, pool=cfg.MODEL.DPMPP.HMG_POOL)

    # ------------------------------------------------------------------ pieces
    @property
    def mask_dim(self):
        return None if self.mask_generator is None else self.mask_generator.out_dim

    def _token_taps(self, outputs):
        grid = outputs["grid"]
        if self.hierarchical:
            return [tokens_to_grid(tokens, grid) for tokens in outputs["taps"]]
        return [tokens_to_grid(outputs["patch_tokens"], grid)]

    def _map_taps(self, feature_map):
        taps, final = self.map_layout.split(feature_map)
        return (taps if self.hierarchical else [final]), final

    def mask_from(self, inputs):
        """m (B, D_m) from the backbone output dict (token mode) or packed map (map mode); None without HMG."""
        if self.mask_generator is None:
            return None
        taps = self._token_taps(inputs) if self.token_mode else self._map_taps(inputs)[0]
        return self.mask_generator(taps)

    def mask_cosine(self, features, projected, mask):
        """cos_{i,c} of L_mask (Eq. 15): on (f, P) or, for MASKED_PROTOTYPE "text", on (v_p, T)."""
        if self.masked_prototype == "none":
            return F.normalize(features, dim=1) @ F.normalize(self.prototypes, dim=1).t()
        if self.masked_prototype == "text":
            features, prototypes = projected, self.text_prototypes
        else:
            prototypes = self.prototypes
        return masked_prototype_cosine(features, prototypes, mask, side=self.mask_side,
                                       before_norm=self.mask_before_norm)

    def branch_outputs(self, features, mask, targets=None, projected=None):
        """f = BN(v) and the logits of every branch.

        Returns dict: ``features`` f (B, D); ``id_logits`` f·Pᵀ (B, C); ``mask`` m or None;
        ``mask_logits`` ArcFace logits (B, C) when the DPM branch is on and ``targets`` are given, else None;
        ``coarse_logits`` v_p·Tᵀ (B, C) when T and v_p exist, else None.
        """
        neck = self.bottleneck(features)
        result = {"features": neck, "id_logits": neck @ self.prototypes.t(), "mask": mask,
                  "mask_logits": None, "coarse_logits": None}
        if self.masked_prototype is not None and targets is not None:
            cosine = self.mask_cosine(neck, projected, mask)
            result["mask_logits"] = arcface_logits(cosine, targets, self.arcface_scale, self.arcface_margin)
        if self.text_prototypes is not None and projected is not None:
            result["coarse_logits"] = projected @ self.text_prototypes.t().to(projected.dtype)
        return result

    # ------------------------------------------------------------------ forward
    def forward(self, features, targets=None):
        if isinstance(features, dict):
            if not self.token_mode:
                raise ValueError("DPMHead got a token dict but was built for a feature map (MODEL.BACKBONE.NAME "
                                 f"is not one of {TOKEN_BACKBONES})")
            return self.branch_outputs(features["cls"], self.mask_from(features), targets, features.get("proj"))
        if self.token_mode:
            raise ValueError(f"DPMHead with MODEL.BACKBONE.NAME in {TOKEN_BACKBONES} runs in the DPMPP "
                             "meta-architecture (it needs the patch tokens), not on a 4-D feature map")
        return self._baseline_forward(features, targets)

    def _baseline_forward(self, feature_map, targets):
        """fast-reid ``Baseline`` interface (module docstring)."""
        taps, final = self._map_taps(feature_map)
        pooled = self.pool_layer(final)[..., 0, 0]
        v = self.embedding(pooled) if self.embedding is not None else pooled
        wants_mask = self.mask_generator is not None and (self.training or self.emits_masks)
        mask = self.mask_generator(taps) if wants_mask else None
        if not self.training:
            neck = self.bottleneck(v)
            return pack_descriptor_and_mask(neck, mask) if self.emits_masks else neck
        outputs = self.branch_outputs(v, mask, targets)
        cls_outputs = outputs["mask_logits"] if outputs["mask_logits"] is not None else outputs["id_logits"]
        return {
            "cls_outputs": cls_outputs,
            "pred_class_logits": outputs["id_logits"],
            "features": pooled if self.neck_feat == "before" else outputs["features"],
        }
