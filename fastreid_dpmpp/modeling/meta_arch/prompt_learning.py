"""Stage I meta-architecture (SPEC §2): ID-specific prompt learning on a frozen CLIP text tower.

``CLIPPromptLearning`` is what fast-reid's trainer machinery trains in Stage I. Its input is a batch of cached
image features v_p (computed once by the frozen image encoder, see ``fastreid_dpmpp.engine.stage1``):

* training: ``forward({"features": (B, D_t), "targets": (B,)})`` -> ``{"loss_i2t", "loss_t2i"}``, the image-to-text
  and text-to-image supervised contrastive losses (temperature 1, raw features) between the batch's images and the
  text features of the batch's identities (one per image, as CLIP-ReID);
* eval: ``forward({"targets": labels})`` (or a label tensor) -> the text features of those identities (B, D_t).

Only the prompt context ``prompt_learner.ctx`` is trainable. The frozen text tower is left out of checkpoints when it
comes from a weights file (MODEL.VIT.WEIGHTS, rebuilt identically on resume); a random-init tower (tests, demo)
cannot be rebuilt from the config, so it is saved with the context.
"""
import logging

import torch
from torch import nn

from fastreid.config import configurable
from fastreid.modeling.meta_arch.build import META_ARCH_REGISTRY

from ..losses.supcon import supervised_contrastive_loss
from ..stage1_prompts import PromptLearner, TextEncoder

logger = logging.getLogger("fastreid.dpmpp.prompt_learning")

__all__ = ["CLIPPromptLearning", "prompt_learning_losses"]

TEXT_ENCODER_PREFIX = "text_encoder."


def prompt_learning_losses(image_features, text_features, labels):
    """SPEC §2: L_i2t (image anchors vs the batch's texts) and L_t2i (text anchors vs the batch's images),
    text_features[b] being the text feature of identity labels[b]."""
    return {
        "loss_i2t": supervised_contrastive_loss(image_features, text_features, labels, labels),
        "loss_t2i": supervised_contrastive_loss(text_features, image_features, labels, labels),
    }


@META_ARCH_REGISTRY.register()
class CLIPPromptLearning(nn.Module):
    @configurable
    def __init__(self, *, clip_model, num_classes, n_ctx=4, template="A photo of a X X X X person.",
                 save_text_encoder=True, chunk_size=64):
        """
        Args:
            clip_model: an open_clip ``CLIP``; its text tower is frozen and kept, the rest is not stored.
            num_classes: C, training identities.
            n_ctx, template: STAGE1.N_CTX, STAGE1.PROMPT (Eq. 11).
            save_text_encoder: keep the frozen text tower in ``state_dict`` (needed when it is randomly initialised).
            chunk_size: identities per forward pass in :meth:`all_text_features`.
        """
        super().__init__()
        self.prompt_learner = PromptLearner(clip_model.token_embedding, clip_model.context_length, num_classes,
                                            n_ctx=n_ctx, template=template)
        self.text_encoder = TextEncoder(clip_model)
        self.save_text_encoder = bool(save_text_encoder)
        self.chunk_size = int(chunk_size)

    @classmethod
    def from_config(cls, cfg):
        if str(cfg.MODEL.VIT.FAMILY).lower() != "clip":
            raise ValueError(f"Stage I prompt learning needs CLIP's text tower, but MODEL.VIT.FAMILY is "
                             f"{cfg.MODEL.VIT.FAMILY!r} (use 'clip')")
        num_classes = int(cfg.MODEL.HEADS.NUM_CLASSES)
        if num_classes < 1:
            raise ValueError(f"CLIPPromptLearning needs MODEL.HEADS.NUM_CLASSES >= 1 (the number of training "
                             f"identities), got {num_classes}")
        from ..backbones.clip_vit import build_clip_model
        return {
            "clip_model": build_clip_model(cfg),
            "num_classes": num_classes,
            "n_ctx": int(cfg.STAGE1.N_CTX),
            "template": str(cfg.STAGE1.PROMPT),
            "save_text_encoder": not cfg.MODEL.VIT.WEIGHTS,
        }

    # ------------------------------------------------------------------ plumbing
    @property
    def device(self):
        return self.prompt_learner.ctx.device

    @property
    def num_classes(self):
        return self.prompt_learner.num_classes

    @property
    def embed_dim(self):
        return self.text_encoder.embed_dim

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        if not self.save_text_encoder:
            prefix = kwargs.get("prefix", "")
            for key in [k for k in state if k.startswith(prefix + TEXT_ENCODER_PREFIX)]:
                del state[key]
        return state

    def load_state_dict(self, state_dict, strict=True, assign=False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        if not self.save_text_encoder:  # rebuilt from MODEL.VIT.WEIGHTS, not expected in the file
            result.missing_keys[:] = [k for k in result.missing_keys if not k.startswith(TEXT_ENCODER_PREFIX)]
        if strict and (result.missing_keys or result.unexpected_keys):
            raise RuntimeError(f"CLIPPromptLearning.load_state_dict: missing keys {result.missing_keys[:5]}, "
                               f"unexpected keys {result.unexpected_keys[:5]}")
        return result

    # ------------------------------------------------------------------ text features
    def text_features(self, labels):
        """t_c for each label (Eq. 12), differentiable w.r.t. the context: (B, D_t)."""
        return self.text_encoder(self.prompt_learner(labels), self.prompt_learner.eot_index)

    @torch.no_grad()
    def all_text_features(self, chunk_size=None):
        """T: the text features of all C identities in label order, computed in chunks without grad: (C, D_t)."""
        chunk = int(chunk_size or self.chunk_size)
        labels = torch.arange(self.num_classes, device=self.device)
        return torch.cat([self.text_features(part) for part in labels.split(chunk)], dim=0).float()

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs):
        if not self.training:
            labels = batched_inputs["targets"] if isinstance(batched_inputs, dict) else batched_inputs
            return self.text_features(torch.as_tensor(labels, device=self.device))
        features = batched_inputs["features"].to(self.device).float()
        targets = batched_inputs["targets"].to(self.device).long()
        if features.shape[1] != self.embed_dim:
            raise ValueError(f"cached image features have {features.shape[1]} dimensions but the text tower "
                             f"projects to D_t={self.embed_dim}: the cache was computed with another model")
        return prompt_learning_losses(features, self.text_features(targets).float(), targets)
