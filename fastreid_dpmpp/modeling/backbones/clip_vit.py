"""ViT backbone for ReID (SPEC §1): the visual tower of an open_clip CLIP model (family "clip") or a
timm ViT (family "vanilla"), run by our own forward so that later modules get what they need:

- overlapping patch embedding, Eq. 1: N = ⌊(H−P)/S+1⌋ · ⌊(W−P)/S+1⌋ patches on an (Hp, Wp) grid;
- Eq. 2: Z0 = [x_cls; E x_1; …; E x_N] + P_pos + λ_sie · S[cam], the camera term on every token
  (SIE_MODE "all", the paper) or on the class token only ("cls", CLIP-ReID);
- v (class token after the final norm), v_p = v · W_proj, the patch tokens of tapped blocks before
  the final norm (HMG / SPS), and the last block's class-token attention logits (HEM, Eq. 18).
"""
import copy
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastreid.modeling.backbones.build import BACKBONE_REGISTRY

from .weights import (load_clip_visual_weights, load_clip_weights, load_timm_vit_weights,
                      resize_position_embedding)

logger = logging.getLogger("fastreid.dpmpp.clip_vit")

FAMILIES = ("clip", "vanilla")
SIE_MODES = ("all", "cls")

# open_clip model names -> timm ViTs of the same shape, for the vanilla family.
OPEN_CLIP_TO_TIMM = {
    "ViT-S-16": "vit_small_patch16_224",
    "ViT-S-32": "vit_small_patch32_224",
    "ViT-B-16": "vit_base_patch16_224",
    "ViT-B-32": "vit_base_patch32_224",
    "ViT-L-14": "vit_large_patch14_224",
    "ViT-L-16": "vit_large_patch16_224",
    "ViT-H-14": "vit_huge_patch14_224",
}


# ----------------------------------------------------------------------------- grid helpers
def _pair(value, name: str) -> Tuple[int, int]:
    values = tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else (value, value)))
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise ValueError(f"{name} must be one or two integers, got {value!r}")
    return values


def patch_grid(image_size, patch_size, stride) -> Tuple[int, int]:
    """(Hp, Wp) of an overlapping patch embedding, Eq. 1: ⌊(H−P)/S+1⌋ × ⌊(W−P)/S+1⌋."""
    (height, width), (patch_h, patch_w), (stride_h, stride_w) = (
        _pair(image_size, "image size"), _pair(patch_size, "patch size"), _pair(stride, "stride"))
    if not (1 <= stride_h <= patch_h and 1 <= stride_w <= patch_w):
        raise ValueError(f"patch stride {(stride_h, stride_w)} (MODEL.BACKBONE.STRIDE_SIZE) must be between 1 "
                         f"and the patch size {(patch_h, patch_w)}")
    if height < patch_h or width < patch_w:
        raise ValueError(f"input size {(height, width)} (INPUT.SIZE_TRAIN) is smaller than the patch size "
                         f"{(patch_h, patch_w)}: no patch grid fits")
    return (height - patch_h) // stride_h + 1, (width - patch_w) // stride_w + 1


def taps_to_indices(taps: Sequence[int], depth: int, config_key: str = "MODEL.VIT.TAPS") -> List[int]:
    """1-based block numbers -> 0-based indices, checked against the depth."""
    taps = [int(t) for t in taps]
    bad = [t for t in taps if not 1 <= t <= depth]
    if bad:
        raise ValueError(f"{config_key}={tuple(taps)}: block numbers are 1-based and must lie in 1..{depth} "
                         f"(the backbone has {depth} blocks); out of range: {bad}")
    if len(set(taps)) != len(taps):
        raise ValueError(f"{config_key}={tuple(taps)} lists a block twice")
    return [t - 1 for t in taps]


# ----------------------------------------------------------------------------- tower access
def _patch_conv(visual: nn.Module, family: str) -> nn.Conv2d:
    return visual.conv1 if family == "clip" else visual.patch_embed.proj


def _tower_grid(visual: nn.Module, family: str) -> Tuple[int, int]:
    return tuple(int(v) for v in (visual.grid_size if family == "clip" else visual.patch_embed.grid_size))


def _position_table(visual: nn.Module, family: str) -> torch.Tensor:
    """(1 + N, D) position embedding, class position first."""
    return visual.positional_embedding if family == "clip" else visual.pos_embed[0]


def _set_position_table(visual: nn.Module, family: str, table: torch.Tensor):
    param = nn.Parameter(table.detach().clone())
    if family == "clip":
        visual.positional_embedding = param
    else:
        visual.pos_embed = nn.Parameter(param.data.unsqueeze(0))


def _check_tower(visual: nn.Module, family: str):
    """Refuse tower variants whose token layout / blocks our forward does not reproduce."""
    if family == "clip":
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
        if not isinstance(visual, VisionTransformer):
            raise ValueError(f"family 'clip' needs an open_clip VisionTransformer tower, got {type(visual).__name__}")
        if visual.attn_pool is not None or visual.pool_type != "tok":
            raise ValueError("open_clip towers with attentional / average pooling are not supported")
        for blk in visual.transformer.resblocks:
            if not (isinstance(blk, ResidualAttentionBlock) and blk.attn.batch_first
                    and blk.attn._qkv_same_embed_dim and not hasattr(blk, "ln_1_kv")):
                raise ValueError("open_clip tower blocks must be batch-first ResidualAttentionBlocks "
                                 "with nn.MultiheadAttention self-attention")
        if not isinstance(visual.patch_dropout, nn.Identity):
            raise ValueError("open_clip patch dropout is not supported (it drops tokens of the grid)")
    else:
        from timm.layers import Attention
        from timm.models.vision_transformer import Block, VisionTransformer
        if not isinstance(visual, VisionTransformer):
            raise ValueError(f"family 'vanilla' needs a timm VisionTransformer, got {type(visual).__name__}")
        if (getattr(visual, "cls_token", None) is None or getattr(visual, "reg_token", None) is not None
                or getattr(visual, "no_embed_class", False) or getattr(visual, "pos_embed", None) is None
                or getattr(visual, "dynamic_img_size", False)):
            raise ValueError("the timm ViT must have a class token, no register tokens, a learned position "
                             "embedding that covers the class token and a fixed image size")
        if not isinstance(getattr(visual, "patch_drop", nn.Identity()), nn.Identity):
            raise ValueError("timm patch dropout is not supported (it drops tokens of the grid)")
        for blk in visual.blocks:
            if type(blk) is not Block or type(blk.attn) is not Attention:
                raise ValueError("timm ViT blocks must be plain timm Block / Attention modules")


def fit_tower_to_grid(visual: nn.Module, family: str, image_size, stride) -> Tuple[int, int]:
    """Make ``visual`` embed patches with the overlapping ``stride`` for inputs of ``image_size``.

    Sets the patch conv's stride and resizes the tower's position table from its current grid to
    the Eq. 1 grid (bilinear, class position kept) — once, here, not at every forward. Idempotent.
    Returns the grid (Hp, Wp).
    """
    conv = _patch_conv(visual, family)
    image_size, stride = _pair(image_size, "image size"), _pair(stride, "stride")
    grid = patch_grid(image_size, conv.kernel_size, stride)
    old_grid = _tower_grid(visual, family)
    if old_grid != grid:
        table = _position_table(visual, family)
        _set_position_table(visual, family, resize_position_embedding(table.detach(), old_grid, grid))
    conv.stride = stride
    if family == "clip":
        visual.grid_size, visual.image_size = grid, image_size
    else:
        embed = visual.patch_embed
        embed.grid_size, embed.img_size, embed.num_patches = grid, image_size, grid[0] * grid[1]
    rows = _position_table(visual, family).shape[0]
    if rows != 1 + grid[0] * grid[1]:
        raise ValueError(f"the tower's position embedding has {rows} rows, expected {1 + grid[0] * grid[1]} "
                         f"for a class token plus a {grid[0]}x{grid[1]} grid")
    return grid


# ----------------------------------------------------------------------------- the backbone
class ReIDViT(nn.Module):
    """CLIP / timm ViT for ReID with overlapping patches, SIE and the outputs of SPEC §1.

    Args:
        visual: an open_clip ``VisionTransformer`` (family "clip") or a timm ``VisionTransformer``
            (family "vanilla"); it is adapted in place to ``image_size`` / ``stride``.
        image_size: (H, W) of the input images.
        stride: (s, s) patch stride (Eq. 1).
        num_cameras: rows of the SIE table S; 0 disables SIE.
        sie_mode: "all" (Eq. 2, every token) or "cls" (class token only).
        sie_coe: λ_sie.
        tap_blocks: 1-based numbers of the blocks whose patch tokens are returned as "taps".
        drop_path: stochastic-depth rate of the last block (linear from 0 over the blocks); the
            tower's own drop-path modules, if any, are not used.
    """

    def __init__(self, visual: nn.Module, family: str = "clip", image_size=(256, 128), stride=(16, 16),
                 num_cameras: int = 0, sie_mode: str = "cls", sie_coe: float = 1.0,
                 tap_blocks: Sequence[int] = (), drop_path: float = 0.0):
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"MODEL.VIT.FAMILY must be one of {FAMILIES}, got {family!r}")
        if sie_mode not in SIE_MODES:
            raise ValueError(f"MODEL.VIT.SIE_MODE must be one of {SIE_MODES}, got {sie_mode!r}")
        if int(num_cameras) < 0:
            raise ValueError(f"MODEL.VIT.NUM_CAMERAS must be >= 0, got {num_cameras}")
        _check_tower(visual, family)
        self.visual = visual
        self.family = family
        self.image_size = _pair(image_size, "image size")
        self.stride = _pair(stride, "stride")
        self.grid_size = fit_tower_to_grid(visual, family, self.image_size, self.stride)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.patch_size = tuple(int(v) for v in _patch_conv(visual, family).kernel_size)

        blocks = self._blocks()
        self.depth = len(blocks)
        self.width = _position_table(visual, family).shape[1]
        self.num_heads = blocks[0].attn.num_heads
        proj = getattr(visual, "proj", None) if family == "clip" else None
        self.embed_dim = int(proj.shape[1]) if proj is not None else None
        self.tap_indices = taps_to_indices(tap_blocks, self.depth)

        self.num_cameras = int(num_cameras)
        self.sie_mode = sie_mode
        self.sie_coe = float(sie_coe)
        if self.num_cameras > 0:
            self.sie_embed = nn.Parameter(torch.empty(self.num_cameras, self.width))
            nn.init.trunc_normal_(self.sie_embed, std=0.02)
        else:
            self.register_parameter("sie_embed", None)

        from timm.layers import DropPath
        rates = [float(drop_path) * i / max(self.depth - 1, 1) for i in range(self.depth)]
        self.drop_paths = nn.ModuleList(DropPath(r) if r > 0 else nn.Identity() for r in rates)

    # ---------------------------------------------------------------- tower parts
    def _blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks if self.family == "clip" else self.visual.blocks

    def _class_token(self) -> torch.Tensor:
        return self.visual.class_embedding if self.family == "clip" else self.visual.cls_token.reshape(-1)

    def _pre_blocks(self, x: torch.Tensor) -> torch.Tensor:
        if self.family == "clip":
            return self.visual.ln_pre(x)
        return self.visual.norm_pre(self.visual.pos_drop(x))

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.ln_post(x) if self.family == "clip" else self.visual.norm(x)

    @property
    def position_embedding(self) -> torch.Tensor:
        """(1 + N, D) position table on the (Hp, Wp) grid, class position first."""
        return _position_table(self.visual, self.family)

    @property
    def proj(self) -> Optional[torch.Tensor]:
        """CLIP's visual projection W_proj (D, D_t), or None."""
        return self.visual.proj if self.family == "clip" else None

    # ---------------------------------------------------------------- attention and blocks
    def _attention(self, attn: nn.Module, x: torch.Tensor, want_cls_logits: bool,
                   key_mask: Optional[torch.Tensor] = None):
        """Multi-head self-attention from the block's own weights; ``key_mask`` (B, 1, 1, L) bool: the tokens
        every token may attend to (None: all).

        Returns the attention output and, if asked, the class token's pre-softmax logits towards
        the patches, q_cls·k_i / sqrt(d_head), shape (B, h, N).
        """
        batch, length, _ = x.shape
        heads = attn.num_heads
        if self.family == "clip":
            qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
            attn_dropout = attn.dropout
        else:
            qkv = attn.qkv(x)
            attn_dropout = attn.attn_drop.p
        inner = qkv.shape[-1] // 3
        head_dim = inner // heads
        q, k, v = qkv.view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.family == "vanilla":
            q, k = attn.q_norm(q), attn.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask,
                                             dropout_p=attn_dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch, length, inner)
        if self.family == "clip":
            out = attn.out_proj(out)
        else:
            out = getattr(attn, "norm", nn.Identity())(out)
            gate = getattr(attn, "gate", None)
            if gate is not None:
                out = out * gate(x).sigmoid()
            out = attn.proj_drop(attn.proj(out))
        logits = None
        if want_cls_logits:
            logits = (q[:, :, :1] @ k[:, :, 1:].transpose(-2, -1)).squeeze(2) * head_dim ** -0.5
        return out, logits

    def _block(self, blk: nn.Module, x: torch.Tensor, drop_path: nn.Module, want_cls_logits: bool,
               key_mask: Optional[torch.Tensor] = None):
        if self.family == "clip":
            norm1, scale1, norm2, scale2 = blk.ln_1, blk.ls_1, blk.ln_2, blk.ls_2
        else:
            norm1, scale1, norm2, scale2 = blk.norm1, blk.ls1, blk.norm2, blk.ls2
        attn_out, logits = self._attention(blk.attn, norm1(x), want_cls_logits, key_mask)
        x = x + drop_path(scale1(attn_out))
        x = x + drop_path(scale2(blk.mlp(norm2(x))))
        return x, logits

    def _add_sie(self, x: torch.Tensor, camids) -> torch.Tensor:
        """+ λ_sie · S[cam] on every token ("all", Eq. 2) or on the class token ("cls"). An id >= the table's rows
        is a camera training never saw (data/cameras.py maps test cameras so): it gets the mean of the rows."""
        if camids is None or self.sie_embed is None:
            return x
        camids = torch.as_tensor(camids, device=x.device).long().reshape(-1)
        if camids.numel() != x.shape[0]:
            raise ValueError(f"got {camids.numel()} camera ids for a batch of {x.shape[0]} images")
        if int(camids.min()) < 0:
            raise ValueError(f"camera id {int(camids.min())} is negative: ids must be >= 0 (0..{self.num_cameras - 1}"
                             f" = the training cameras of the SIE table, larger = a camera training never saw)")
        unseen = camids >= self.num_cameras
        rows = torch.where(unseen[:, None], self.sie_embed.mean(0, keepdim=True),
                           self.sie_embed[camids.clamp(max=self.num_cameras - 1)])
        if not torch.jit.is_tracing() and bool(unseen.any()):
            noted = self.__dict__.setdefault("_unseen_cameras_noted", set())
            new = sorted(set(camids[unseen].tolist()) - noted)
            if new:
                noted.update(new)
                logger.info("SIE: camera id(s) %s are beyond the %d training cameras: mean camera embedding",
                            new, self.num_cameras)
        sie = (self.sie_coe * rows).to(x.dtype).unsqueeze(1)
        if self.sie_mode == "all":
            return x + sie
        return torch.cat([x[:, :1] + sie, x[:, 1:]], dim=1)

    # ---------------------------------------------------------------- fine-tuning controls
    def layer_id(self, name: str) -> int:
        """Depth of parameter ``name`` (relative to this module) for layer-wise LR decay: 0 = embeddings (patch,
        class token, position table, SIE, pre-norm), i + 1 = block i, depth + 1 = final norm and projection."""
        blocks = "visual.transformer.resblocks." if self.family == "clip" else "visual.blocks."
        if name.startswith(blocks):
            return int(name[len(blocks):].split(".")[0]) + 1
        embeddings = ("visual.conv1", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre",
                      "visual.patch_embed", "visual.cls_token", "visual.pos_embed", "visual.norm_pre", "sie_embed")
        return 0 if name.startswith(embeddings) else self.depth + 1

    def freeze_first_blocks(self, count: int):
        """Freeze the embeddings and the first ``count`` blocks (MODEL.VIT.FREEZE_BLOCKS); the camera table stays
        trainable (it is not pretrained)."""
        if not 0 <= int(count) <= self.depth:
            raise ValueError(f"MODEL.VIT.FREEZE_BLOCKS must be in 0..{self.depth} (the blocks), got {count}")
        if count == 0:
            return
        for name, parameter in self.named_parameters():
            if name != "sie_embed" and self.layer_id(name) <= int(count):
                parameter.requires_grad_(False)
        logger.info("Frozen: the embeddings and the first %d of %d blocks (MODEL.VIT.FREEZE_BLOCKS)", count, self.depth)

    # ---------------------------------------------------------------- public forward API
    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Overlapping patch embedding E x_i (Eq. 1): (B, 3, H, W) -> (B, N, D), row-major over (Hp, Wp)."""
        if images.dim() != 4:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        conv = _patch_conv(self.visual, self.family)
        grid = patch_grid(images.shape[-2:], conv.kernel_size, self.stride)
        if grid != self.grid_size:
            raise ValueError(f"input size {tuple(images.shape[-2:])} gives a {grid} patch grid, but the backbone "
                             f"was built for {self.image_size} (INPUT.SIZE_TRAIN), grid {self.grid_size}")
        tokens = conv(images.to(conv.weight.dtype)).flatten(2).transpose(1, 2)
        if self.family == "vanilla":
            tokens = getattr(self.visual.patch_embed, "norm", nn.Identity())(tokens)
        return tokens

    def forward_tokens(self, patch_tokens: torch.Tensor, camids=None,
                       visible_patches: Optional[torch.Tensor] = None) -> Dict[str, object]:
        """Transformer over patch embeddings (B, N, D) (Eq. 2 and the blocks). ``visible_patches`` (B, N) bool:
        the patches every token may attend to (the class token always may); the others are left out of all
        attention, so the class token never sees them (their own outputs are still computed). None: all.

        Returns a dict with
          "cls": v (B, D), class token after the final norm;
          "proj": v_p = v · W_proj (B, D_t), or None for the vanilla family;
          "taps": [(B, N, D)] patch tokens output by the tapped blocks, before the final norm;
          "patch_tokens": (B, N, D) last block's patch tokens after the final norm;
          "attn_logits": (B, h, N) last block's class-token attention logits towards the patches,
              pre-softmax, scaled by 1/sqrt(d_head) (differentiable, for HEM);
          "grid": (Hp, Wp).
        """
        if patch_tokens.dim() != 3 or patch_tokens.shape[1:] != (self.num_patches, self.width):
            raise ValueError(f"expected patch tokens (B, {self.num_patches}, {self.width}) for the "
                             f"{self.grid_size} grid, got {tuple(patch_tokens.shape)}")
        batch, dtype = patch_tokens.shape[0], patch_tokens.dtype
        cls_token = self._class_token().to(dtype).view(1, 1, -1).expand(batch, -1, -1)
        x = torch.cat([cls_token, patch_tokens], dim=1) + self.position_embedding.to(dtype)
        x = self._pre_blocks(self._add_sie(x, camids))

        key_mask = self._key_mask(visible_patches, batch)
        tapped, logits = {}, None
        blocks = self._blocks()
        for index, blk in enumerate(blocks):
            x, logits = self._block(blk, x, self.drop_paths[index], want_cls_logits=index == len(blocks) - 1,
                                    key_mask=key_mask)
            if index in self.tap_indices:
                tapped[index] = x[:, 1:]
        taps = [tapped[i] for i in self.tap_indices]

        normed = self._final_norm(x)
        cls_feat = normed[:, 0]
        proj = cls_feat @ self.proj.to(dtype) if self.proj is not None else None
        return {"cls": cls_feat, "proj": proj, "taps": taps, "patch_tokens": normed[:, 1:],
                "attn_logits": logits, "grid": self.grid_size}

    def _key_mask(self, visible_patches: Optional[torch.Tensor], batch: int) -> Optional[torch.Tensor]:
        if visible_patches is None:
            return None
        if tuple(visible_patches.shape) != (batch, self.num_patches):
            raise ValueError(f"visible_patches must be (B, N) = ({batch}, {self.num_patches}) for the "
                             f"{self.grid_size} grid, got {tuple(visible_patches.shape)}")
        visible = visible_patches.to(device=self.position_embedding.device, dtype=torch.bool)
        return torch.cat([visible.new_ones(batch, 1), visible], dim=1)[:, None, None, :]

    def forward_features(self, images: torch.Tensor, camids=None,
                         patch_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                         visible_patches: Optional[torch.Tensor] = None):
        """embed_patches -> optional ``patch_transform(tokens)`` (SPS masking, SPT mixing; applied
        before the class token and the position embedding) -> forward_tokens (``visible_patches``: see there)."""
        tokens = self.embed_patches(images)
        if patch_transform is not None:
            transformed = patch_transform(tokens)
            if transformed.shape != tokens.shape:
                raise ValueError(f"patch_transform changed the token shape {tuple(tokens.shape)} to "
                                 f"{tuple(transformed.shape)}")
            tokens = transformed
        return self.forward_tokens(tokens, camids, visible_patches)

    def forward(self, images: torch.Tensor, camids=None) -> torch.Tensor:
        """fast-reid backbone contract: the CLS feature v as a (B, D, 1, 1) map."""
        return self.forward_features(images, camids)["cls"][:, :, None, None]


# ----------------------------------------------------------------------------- builders
def _size_train(cfg) -> Tuple[int, int]:
    return _pair(cfg.INPUT.SIZE_TRAIN, "INPUT.SIZE_TRAIN")


def _override(value, key: str) -> int:
    value = int(value)
    if value < 0:
        raise ValueError(f"{key} must be >= 0 (0 keeps the architecture's value), got {value}")
    return value


def _arch_description(cfg) -> str:
    vit = cfg.MODEL.VIT
    overrides = {k: vit[k] for k in ("WIDTH", "LAYERS", "HEADS", "EMBED_DIM", "TEXT_WIDTH", "TEXT_LAYERS",
                                     "TEXT_HEADS") if int(vit[k])}
    suffix = f" with overrides {overrides}" if overrides else ""
    return f"'{vit.ARCH}' (MODEL.VIT.ARCH, family {vit.FAMILY}){suffix}"


def _pretrain_grid(cfg) -> Optional[Tuple[int, int]]:
    """MODEL.VIT.PRETRAIN_GRID (h, w) of the weights file's position table; (0, 0) = infer it."""
    grid = tuple(int(v) for v in cfg.MODEL.VIT.PRETRAIN_GRID)
    if len(grid) != 2 or min(grid) < 0:
        raise ValueError(f"MODEL.VIT.PRETRAIN_GRID must be two integers >= 0 (0, 0 = infer), got {grid}")
    return grid if all(grid) else None


def _open_clip_config(cfg) -> dict:
    import open_clip
    arch = str(cfg.MODEL.VIT.ARCH)
    if arch.startswith("hf-hub:"):
        raise ValueError(f"MODEL.VIT.ARCH={arch!r}: hf-hub model configs would be downloaded; use a local "
                         f"open_clip model name such as 'ViT-B-16'")
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        vit_names = [m for m in open_clip.list_models() if m.startswith("ViT-")]
        raise ValueError(f"MODEL.VIT.ARCH={arch!r} is not an open_clip model config; e.g. {vit_names[:8]}")
    model_cfg = copy.deepcopy(model_cfg)
    vision = model_cfg["vision_cfg"]
    if vision.get("timm_model_name") or not isinstance(vision.get("layers", 12), int):
        raise ValueError(f"MODEL.VIT.ARCH={arch!r} has no open_clip ViT visual tower (timm or ResNet tower)")
    if model_cfg.get("text_cfg", {}).get("hf_model_name"):
        raise ValueError(f"MODEL.VIT.ARCH={arch!r} uses a Hugging Face text tower, which is not supported")
    return model_cfg


def _apply_clip_overrides(model_cfg: dict, cfg) -> dict:
    vit = cfg.MODEL.VIT
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    head_width = vision.get("head_width", 64)
    width = _override(vit.WIDTH, "MODEL.VIT.WIDTH") or vision.get("width", 768)
    heads = _override(vit.HEADS, "MODEL.VIT.HEADS") or vision.get("width", 768) // head_width
    if width % heads:
        raise ValueError(f"visual width {width} (MODEL.VIT.WIDTH) is not divisible by {heads} heads (MODEL.VIT.HEADS)")
    vision.update(width=width, head_width=width // heads)
    vision["layers"] = _override(vit.LAYERS, "MODEL.VIT.LAYERS") or vision.get("layers", 12)
    vision["image_size"] = _size_train(cfg)
    model_cfg["embed_dim"] = _override(vit.EMBED_DIM, "MODEL.VIT.EMBED_DIM") or model_cfg["embed_dim"]
    for key, name in (("width", "TEXT_WIDTH"), ("layers", "TEXT_LAYERS"), ("heads", "TEXT_HEADS")):
        text[key] = _override(vit[name], f"MODEL.VIT.{name}") or text.get(key)
    if text["width"] % text["heads"]:
        raise ValueError(f"text width {text['width']} (MODEL.VIT.TEXT_WIDTH) is not divisible by "
                         f"{text['heads']} heads (MODEL.VIT.TEXT_HEADS)")
    return model_cfg


def _clip_model_config(cfg) -> dict:
    model_cfg = _apply_clip_overrides(_open_clip_config(cfg), cfg)
    model_cfg.pop("quick_gelu", None)  # MODEL.VIT.QUICK_GELU decides
    return model_cfg


def build_clip_model(cfg) -> nn.Module:
    """The whole open_clip CLIP (visual + text) of ``cfg.MODEL.VIT.ARCH`` with the config's overrides.

    Image size INPUT.SIZE_TRAIN; the visual tower already embeds patches with the overlapping stride
    MODEL.BACKBONE.STRIDE_SIZE on the Eq. 1 grid; QuickGELU per MODEL.VIT.QUICK_GELU; weights from
    the local file MODEL.VIT.WEIGHTS ("" = random init). Never downloads.
    """
    from open_clip.model import CLIP, CustomTextCLIP
    model_cfg = _clip_model_config(cfg)
    model_class = CustomTextCLIP if model_cfg.pop("custom_text", False) else CLIP
    model = model_class(**model_cfg, quick_gelu=bool(cfg.MODEL.VIT.QUICK_GELU))
    fit_tower_to_grid(model.visual, "clip", _size_train(cfg), _pair(cfg.MODEL.BACKBONE.STRIDE_SIZE,
                                                                    "MODEL.BACKBONE.STRIDE_SIZE"))
    if cfg.MODEL.VIT.WEIGHTS:
        load_clip_weights(model, cfg.MODEL.VIT.WEIGHTS, _arch_description(cfg), source_grid=_pretrain_grid(cfg),
                          allow_torchscript_loader=bool(cfg.MODEL.VIT.ALLOW_TORCHSCRIPT_LOADER))
    return model


def build_clip_visual(cfg) -> nn.Module:
    """Only the visual tower of ``build_clip_model(cfg)`` (same initialisation for the same seed, same
    grid), without building the text tower; weights are the ``visual.*`` part of MODEL.VIT.WEIGHTS
    (a file holding only the tower's own keys also works)."""
    from open_clip.model import _build_vision_tower
    model_cfg = _clip_model_config(cfg)
    visual = _build_vision_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"],
                                 quick_gelu=bool(cfg.MODEL.VIT.QUICK_GELU))
    fit_tower_to_grid(visual, "clip", _size_train(cfg), _pair(cfg.MODEL.BACKBONE.STRIDE_SIZE,
                                                              "MODEL.BACKBONE.STRIDE_SIZE"))
    if cfg.MODEL.VIT.WEIGHTS:
        load_clip_visual_weights(visual, cfg.MODEL.VIT.WEIGHTS, _arch_description(cfg),
                                 source_grid=_pretrain_grid(cfg),
                                 allow_torchscript_loader=bool(cfg.MODEL.VIT.ALLOW_TORCHSCRIPT_LOADER))
    return visual


def timm_name_for(arch: str) -> str:
    """timm model name of the vanilla family; open_clip names such as "ViT-B-16" are mapped."""
    base = arch[: -len("-quickgelu")] if arch.endswith("-quickgelu") else arch
    return OPEN_CLIP_TO_TIMM.get(base, arch)


def build_vanilla_vit(cfg) -> nn.Module:
    """A timm ViT (no text branch, no projection) for the vanilla family, on the Eq. 1 grid."""
    import timm
    vit = cfg.MODEL.VIT
    name = timm_name_for(str(vit.ARCH))
    if not timm.is_model(name):
        raise ValueError(f"MODEL.VIT.ARCH={vit.ARCH!r}: '{name}' is not a timm model name "
                         f"(e.g. 'vit_base_patch16_224') nor one of {sorted(OPEN_CLIP_TO_TIMM)}")
    kwargs = dict(pretrained=False, num_classes=0, img_size=_size_train(cfg))
    for key, name_kw in (("WIDTH", "embed_dim"), ("LAYERS", "depth"), ("HEADS", "num_heads")):
        if _override(vit[key], f"MODEL.VIT.{key}"):
            kwargs[name_kw] = int(vit[key])
    try:
        model = timm.create_model(name, **kwargs)
    except AssertionError as e:
        raise ValueError(f"cannot build timm '{name}' with {kwargs} (MODEL.VIT.WIDTH/LAYERS/HEADS): {e}") from e
    fit_tower_to_grid(model, "vanilla", _size_train(cfg), _pair(cfg.MODEL.BACKBONE.STRIDE_SIZE,
                                                                "MODEL.BACKBONE.STRIDE_SIZE"))
    if vit.WEIGHTS:
        load_timm_vit_weights(model, vit.WEIGHTS, _arch_description(cfg), source_grid=_pretrain_grid(cfg))
    return model


def _num_cameras(cfg) -> int:
    vit = cfg.MODEL.VIT
    if not vit.SIE_ENABLED:
        return 0
    if int(vit.NUM_CAMERAS) <= 0:
        logger.info("SIE is off: MODEL.VIT.SIE_ENABLED is True but MODEL.VIT.NUM_CAMERAS is %s "
                    "(set it to the number of training cameras)", vit.NUM_CAMERAS)
        return 0
    return int(vit.NUM_CAMERAS)


@BACKBONE_REGISTRY.register()
def build_clip_vit_backbone(cfg) -> ReIDViT:
    """fast-reid backbone entry (MODEL.BACKBONE.NAME "build_clip_vit_backbone"): a ReIDViT from the config."""
    family = str(cfg.MODEL.VIT.FAMILY).lower()
    if family not in FAMILIES:
        raise ValueError(f"MODEL.VIT.FAMILY must be one of {FAMILIES}, got {cfg.MODEL.VIT.FAMILY!r}")
    if cfg.MODEL.BACKBONE.PRETRAIN_PATH and not cfg.MODEL.VIT.WEIGHTS:
        logger.warning("MODEL.BACKBONE.PRETRAIN_PATH (%s) is ignored by build_clip_vit_backbone; "
                       "put the weights file in MODEL.VIT.WEIGHTS", cfg.MODEL.BACKBONE.PRETRAIN_PATH)
    if family == "vanilla" and cfg.MODEL.VIT.QUICK_GELU:
        logger.info("MODEL.VIT.QUICK_GELU is ignored by the vanilla family (timm ViTs use GELU)")
    visual = build_clip_visual(cfg) if family == "clip" else build_vanilla_vit(cfg)
    backbone = ReIDViT(
        visual, family,
        image_size=_size_train(cfg),
        stride=_pair(cfg.MODEL.BACKBONE.STRIDE_SIZE, "MODEL.BACKBONE.STRIDE_SIZE"),
        num_cameras=_num_cameras(cfg),
        sie_mode=str(cfg.MODEL.VIT.SIE_MODE).lower(),
        sie_coe=cfg.MODEL.BACKBONE.SIE_COE,
        tap_blocks=cfg.MODEL.VIT.TAPS,
        drop_path=cfg.MODEL.BACKBONE.DROP_PATH_RATIO,
    )
    backbone.freeze_first_blocks(int(cfg.MODEL.VIT.FREEZE_BLOCKS))
    if int(cfg.MODEL.BACKBONE.FEAT_DIM) != backbone.width:
        logger.warning("MODEL.BACKBONE.FEAT_DIM is %s but the ViT width D is %d; fast-reid's heads read "
                       "FEAT_DIM", cfg.MODEL.BACKBONE.FEAT_DIM, backbone.width)
    logger.info("ReIDViT %s: grid %s (N=%d), D=%d, D_t=%s, heads=%d, depth=%d, taps (1-based) %s, SIE %s",
                family, backbone.grid_size, backbone.num_patches, backbone.width, backbone.embed_dim,
                backbone.num_heads, backbone.depth, [i + 1 for i in backbone.tap_indices],
                f"{backbone.sie_mode} x{backbone.num_cameras} λ={backbone.sie_coe}" if backbone.num_cameras else "off")
    return backbone
