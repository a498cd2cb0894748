"""ReIDViT backbone (SPEC §1): Eq. 1 grid, position-embedding resize, SIE (Eq. 2), taps, HEM attention
logits, patch transforms, weight files, QuickGELU, the vanilla (timm) family and fast-reid's Baseline.

Reference computations are written here independently: naive loops, open_clip's / timm's own block
and tower forwards, nn.MultiheadAttention's attention weights and F.interpolate."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastreid_dpmpp  # noqa: F401  (fast-reid fixes first)
from fastreid.config import get_cfg
from fastreid_dpmpp.config import add_dpmpp_config
from fastreid_dpmpp.modeling.backbones.clip_vit import (
    ReIDViT, build_clip_model, build_clip_vit_backbone, patch_grid)
from fastreid_dpmpp.modeling.backbones.weights import resize_position_embedding

TINY = ["MODEL.VIT.WEIGHTS", "", "MODEL.VIT.WIDTH", 64, "MODEL.VIT.LAYERS", 4, "MODEL.VIT.HEADS", 4, "MODEL.VIT.EMBED_DIM", 32,
        "MODEL.VIT.TEXT_WIDTH", 32, "MODEL.VIT.TEXT_LAYERS", 1, "MODEL.VIT.TEXT_HEADS", 2,
        "INPUT.SIZE_TRAIN", [128, 64], "MODEL.BACKBONE.STRIDE_SIZE", (12, 12), "MODEL.VIT.TAPS", (1, 2, 3, 4),
        "MODEL.BACKBONE.FEAT_DIM", 64, "MODEL.BACKBONE.DROP_PATH_RATIO", 0.0, "MODEL.BACKBONE.SIE_COE", 1.5]


def tiny_cfg(*overrides):
    cfg = get_cfg()
    add_dpmpp_config(cfg)
    cfg.merge_from_list(TINY + list(overrides))
    return cfg


def build(*overrides, seed=0):
    torch.manual_seed(seed)
    return build_clip_vit_backbone(tiny_cfg(*overrides)).eval()


def images(batch=3, seed=1):
    return torch.randn(batch, 3, 128, 64, generator=torch.Generator().manual_seed(seed))


def manual_clip_forward(backbone, patch_tokens, extra=None):
    """Naive CLIP forward with open_clip's own blocks; ``extra`` (B, 1+N, D) is added after the position
    embedding. Returns v, v_p, the input and output of every block."""
    v = backbone.visual
    batch = patch_tokens.shape[0]
    x = torch.cat([v.class_embedding.expand(batch, 1, -1), patch_tokens], 1) + v.positional_embedding
    if extra is not None:
        x = x + extra
    x = v.ln_pre(x)
    inputs, outputs = [], []
    for blk in v.transformer.resblocks:
        inputs.append(x)
        x = blk(x)
        outputs.append(x)
    cls = v.ln_post(x[:, 0])
    return cls, cls @ v.proj, inputs, outputs


# ----------------------------------------------------------------------------- Eq. 1 and shapes
def test_patch_grid_follows_eq1_hand_values():
    assert patch_grid((256, 128), 16, 12) == (21, 10)   # (240/12+1) x floor(112/12+1)
    assert patch_grid((256, 128), 16, 16) == (16, 8)
    assert patch_grid((128, 64), 16, 12) == (10, 5)     # floor(112/12+1) x (48/12+1)
    assert patch_grid((384, 128), 16, 11) == (34, 11)   # floor(368/11)+1 x floor(112/11)+1
    with pytest.raises(ValueError, match="INPUT.SIZE_TRAIN"):
        patch_grid((8, 64), 16, 12)
    with pytest.raises(ValueError, match="STRIDE_SIZE"):
        patch_grid((128, 64), 16, 0)
    with pytest.raises(ValueError, match="STRIDE_SIZE"):
        patch_grid((128, 64), 16, 17)


def test_vit_b16_at_256x128_stride12_has_210_patches():
    cfg = get_cfg()
    add_dpmpp_config(cfg)
    cfg.merge_from_list(["MODEL.BACKBONE.STRIDE_SIZE", (12, 12), "MODEL.VIT.NUM_CAMERAS", 8])
    with torch.device("meta"):  # real ViT-B-16 config, shapes only
        vit = build_clip_vit_backbone(cfg)
        out = vit.forward_features(torch.empty(2, 3, 256, 128))
    assert vit.grid_size == (21, 10) and vit.num_patches == 210 and vit.patch_size == (16, 16)
    assert (vit.width, vit.embed_dim, vit.num_heads, vit.depth) == (768, 512, 12, 12)
    assert vit.tap_indices == [1, 3, 9, 11]
    assert tuple(vit.position_embedding.shape) == (211, 768)
    assert tuple(out["cls"].shape) == (2, 768) and tuple(out["proj"].shape) == (2, 512)
    assert tuple(out["attn_logits"].shape) == (2, 12, 210)
    assert [tuple(t.shape) for t in out["taps"]] == [(2, 210, 768)] * 4


def test_embed_patches_is_an_overlapping_conv_flattened_row_major():
    vit = build()
    x = images(2)
    tokens = vit.embed_patches(x)
    assert vit.grid_size == (10, 5) and tokens.shape == (2, 50, 64)
    weight = vit.visual.conv1.weight  # (D, 3, 16, 16), no bias in CLIP
    for i in range(10):
        for j in range(5):
            patch = x[:, :, 12 * i:12 * i + 16, 12 * j:12 * j + 16]
            expected = torch.einsum("bchw,dchw->bd", patch, weight)
            torch.testing.assert_close(tokens[:, i * 5 + j], expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="SIZE_TRAIN"):
        vit.embed_patches(torch.randn(1, 3, 256, 128))


# ----------------------------------------------------------------------------- position embedding
def reference_resize(table, old, new):
    grid = table[1:].reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bilinear", align_corners=False)
    return torch.cat([table[:1], grid[0].permute(1, 2, 0).reshape(new[0] * new[1], -1)])


def test_position_resize_keeps_class_row_and_matches_interpolate():
    table = torch.randn(1 + 14 * 14, 8)
    resized = resize_position_embedding(table, (14, 14), (21, 10))
    assert resized.shape == (211, 8)
    assert torch.equal(resized[0], table[0])
    torch.testing.assert_close(resized, reference_resize(table, (14, 14), (21, 10)))
    # a constant grid stays constant under bilinear resizing
    const = torch.cat([torch.zeros(1, 3), torch.ones(49, 3)])
    torch.testing.assert_close(resize_position_embedding(const, (7, 7), (10, 5))[1:], torch.ones(50, 3))


def test_backbone_resizes_a_square_tower_once_at_build():
    from open_clip.transformer import VisionTransformer
    torch.manual_seed(0)
    tower = VisionTransformer(image_size=112, patch_size=16, width=32, layers=2, heads=2, mlp_ratio=2.0,
                              output_dim=16)
    original = tower.positional_embedding.detach().clone()  # 7x7 grid + class
    vit = ReIDViT(tower, "clip", image_size=(128, 64), stride=(12, 12), tap_blocks=(1, 2))
    torch.testing.assert_close(vit.position_embedding.detach(), reference_resize(original, (7, 7), (10, 5)))
    assert vit.visual.conv1.stride == (12, 12)
    again = ReIDViT(vit.visual, "clip", image_size=(128, 64), stride=(12, 12))  # idempotent
    torch.testing.assert_close(again.position_embedding, vit.position_embedding)


# ----------------------------------------------------------------------------- forward vs references
def test_forward_matches_open_clip_tower_and_manual_loop():
    vit = build()
    x = images()
    with torch.no_grad():
        out = vit.forward_features(x)
        cls, proj, _, outputs = manual_clip_forward(vit, vit.embed_patches(x))
        torch.testing.assert_close(out["proj"], vit.visual(x), rtol=1e-4, atol=1e-5)  # open_clip's forward
        torch.testing.assert_close(out["cls"], cls, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["proj"], proj, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["patch_tokens"], vit.visual.ln_post(outputs[-1])[:, 1:],
                                   rtol=1e-4, atol=1e-5)
        fmap = vit(x)
    assert fmap.shape == (3, 64, 1, 1)
    torch.testing.assert_close(fmap[:, :, 0, 0], out["cls"])
    assert out["grid"] == (10, 5)


@pytest.mark.parametrize("mode", ["all", "cls"])
def test_sie_adds_lambda_times_camera_row_to_the_right_tokens(mode):
    vit = build("MODEL.VIT.NUM_CAMERAS", 3, "MODEL.VIT.SIE_MODE", mode)
    assert vit.sie_embed.shape == (3, 64) and vit.sie_coe == 1.5
    x, camids = images(), torch.tensor([2, 0, 1])
    with torch.no_grad():
        tokens = vit.embed_patches(x)
        out = vit.forward_tokens(tokens, camids)
        off = vit.forward_tokens(tokens, None)
        extra = torch.zeros(3, 51, 64)
        rows = 1.5 * vit.sie_embed[camids]
        if mode == "all":
            extra += rows[:, None, :]
        else:
            extra[:, 0] = rows
        cls, proj, _, _ = manual_clip_forward(vit, tokens, extra)
        plain_cls, _, _, _ = manual_clip_forward(vit, tokens)
    torch.testing.assert_close(out["cls"], cls, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["proj"], proj, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(off["cls"], plain_cls, rtol=1e-4, atol=1e-5)
    assert (out["cls"] - off["cls"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="negative"):  # ids >= the rows are unseen cameras (test_real_data_robustness)
        vit.forward_tokens(tokens, torch.tensor([0, 1, -1]))


def test_sie_modes_differ_and_disabled_sie_ignores_camids():
    all_mode = build("MODEL.VIT.NUM_CAMERAS", 3, "MODEL.VIT.SIE_MODE", "all")
    cls_mode = build("MODEL.VIT.NUM_CAMERAS", 3, "MODEL.VIT.SIE_MODE", "cls")
    torch.testing.assert_close(all_mode.sie_embed, cls_mode.sie_embed)
    x, camids = images(), torch.tensor([1, 1, 2])
    with torch.no_grad():
        assert (all_mode.forward_features(x, camids)["cls"] - cls_mode.forward_features(x, camids)["cls"]).abs().max() > 1e-3
    for overrides in (["MODEL.VIT.NUM_CAMERAS", 0], ["MODEL.VIT.NUM_CAMERAS", 3, "MODEL.VIT.SIE_ENABLED", False]):
        vit = build(*overrides)
        assert vit.sie_embed is None
        with torch.no_grad():
            torch.testing.assert_close(vit.forward_features(x, camids)["cls"], vit.forward_features(x)["cls"])


def test_taps_are_pre_norm_outputs_of_the_named_blocks():
    vit = build("MODEL.VIT.TAPS", (3, 1))
    assert vit.tap_indices == [2, 0]
    with torch.no_grad():
        tokens = vit.embed_patches(images())
        out = vit.forward_tokens(tokens)
        _, _, _, outputs = manual_clip_forward(vit, tokens)
    assert len(out["taps"]) == 2
    torch.testing.assert_close(out["taps"][0], outputs[2][:, 1:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["taps"][1], outputs[0][:, 1:], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="MODEL.VIT.TAPS"):
        build("MODEL.VIT.TAPS", (2, 4, 10, 12))


def test_attention_logits_match_manual_qk_and_mha_weights_and_carry_gradients():
    vit = build()
    tokens = vit.embed_patches(images())
    out = vit.forward_tokens(tokens)
    logits = out["attn_logits"]
    assert logits.shape == (3, 4, 50)
    with torch.no_grad():
        _, _, inputs, _ = manual_clip_forward(vit, tokens)
        blk = vit.visual.transformer.resblocks[-1]
        h = blk.ln_1(inputs[-1])
        w, b, dim = blk.attn.in_proj_weight, blk.attn.in_proj_bias, 64
        q = h[:, 0] @ w[:dim].T + b[:dim]
        k = h[:, 1:] @ w[dim:2 * dim].T + b[dim:2 * dim]
        expected = torch.zeros(3, 4, 50)
        for head in range(4):
            sl = slice(16 * head, 16 * head + 16)
            expected[:, head] = (k[:, :, sl] * q[:, None, sl]).sum(-1) / math.sqrt(16)
        torch.testing.assert_close(logits.detach(), expected, rtol=1e-4, atol=1e-5)
        # nn.MultiheadAttention's own softmax, renormalised over the patches, is softmax(logits)
        _, weights = blk.attn(h, h, h, need_weights=True, average_attn_weights=False)
        to_patches = weights[:, :, 0, 1:] / weights[:, :, 0, 1:].sum(-1, keepdim=True)
        torch.testing.assert_close(logits.detach().softmax(-1), to_patches, rtol=1e-4, atol=1e-6)
    logits.square().sum().backward()
    assert vit.visual.transformer.resblocks[0].attn.in_proj_weight.grad.abs().sum() > 0
    assert vit.visual.conv1.weight.grad.abs().sum() > 0


def test_patch_transform_acts_before_class_token_and_position_embedding():
    vit = build()
    x = images()
    seen = []

    def record_and_zero(tokens):
        seen.append(tokens.detach().clone())
        return torch.zeros_like(tokens)

    mask = (torch.arange(50) % 3 == 0).float()[None, :, None]
    with torch.no_grad():
        out = vit.forward_features(x, patch_transform=record_and_zero)
        cls, proj, _, _ = manual_clip_forward(vit, torch.zeros(3, 50, 64))
        torch.testing.assert_close(seen[0], vit.embed_patches(x))
        torch.testing.assert_close(out["cls"], cls, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["proj"], proj, rtol=1e-4, atol=1e-5)
        masked = vit.forward_features(x, patch_transform=lambda t: t * mask)
        cls_masked, _, _, _ = manual_clip_forward(vit, vit.embed_patches(x) * mask)
        torch.testing.assert_close(masked["cls"], cls_masked, rtol=1e-4, atol=1e-5)


def test_drop_path_schedule_and_train_mode_randomness():
    vit = build("MODEL.BACKBONE.DROP_PATH_RATIO", 0.3)
    assert isinstance(vit.drop_paths[0], nn.Identity)
    assert [round(m.drop_prob, 6) for m in vit.drop_paths[1:]] == [0.1, 0.2, 0.3]
    x = images()
    vit.train()
    torch.manual_seed(0)
    a = vit(x)
    torch.manual_seed(1)
    b = vit(x)
    assert not torch.allclose(a, b)
    vit.eval()
    torch.testing.assert_close(vit(x), vit(x))


# ----------------------------------------------------------------------------- QuickGELU
def test_quick_gelu_switch_changes_activation_only():
    from open_clip.transformer import QuickGELU
    torch.manual_seed(0)
    quick = build_clip_model(tiny_cfg("MODEL.VIT.QUICK_GELU", True))
    torch.manual_seed(0)
    exact = build_clip_model(tiny_cfg("MODEL.VIT.QUICK_GELU", False))
    for (k, a), (_, b) in zip(quick.state_dict().items(), exact.state_dict().items()):
        assert torch.equal(a, b), k
    mlp = quick.visual.transformer.resblocks[0].mlp
    assert isinstance(mlp.gelu, QuickGELU) and isinstance(exact.visual.transformer.resblocks[0].mlp.gelu, nn.GELU)
    h = torch.randn(2, 5, 64)
    hidden = mlp.c_fc(h)
    torch.testing.assert_close(mlp(h), mlp.c_proj(hidden * torch.sigmoid(1.702 * hidden)))
    x = images()
    with torch.no_grad():
        assert (quick.visual(x) - exact.visual(x)).abs().max() > 1e-4


# ----------------------------------------------------------------------------- weight files
def _same_outputs(a, b):
    x = images()
    with torch.no_grad():
        oa, ob = a.forward_features(x), b.forward_features(x)
    torch.testing.assert_close(oa["cls"], ob["cls"], rtol=0, atol=0)
    torch.testing.assert_close(oa["proj"], ob["proj"], rtol=0, atol=0)


def test_open_clip_state_dict_round_trips(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    source = build_clip_model(tiny_cfg())
    state = source.state_dict()
    files = {
        "plain.pt": lambda p: torch.save(state, p),
        "wrapped.pth": lambda p: torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, p),
        "model.safetensors": lambda p: save_file({k: v.contiguous() for k, v in state.items()}, str(p)),
        "visual_only.pt": lambda p: torch.save(source.visual.state_dict(), p),
    }
    reference = build_clip_vit_backbone(tiny_cfg()).eval()
    reference.visual.load_state_dict(source.visual.state_dict())
    text = torch.randint(0, 49408, (2, 77))
    for name, save in files.items():
        path = tmp_path / name
        save(path)
        loaded = build("MODEL.VIT.WEIGHTS", str(path), seed=5)
        _same_outputs(reference, loaded)
        if name != "wrapped.pth":  # the whole-CLIP loader shares the file reading checked above
            continue
        torch.manual_seed(7)
        clip = build_clip_model(tiny_cfg("MODEL.VIT.WEIGHTS", str(path)))
        with torch.no_grad():
            torch.testing.assert_close(clip.encode_text(text), source.encode_text(text), rtol=0, atol=0)


class _Node(nn.Module):
    pass


def _torchscript_holder(state, extras):
    """A scripted module tree holding ``state`` under the same dotted names (OpenAI's release format)."""
    root = _Node()
    for key, value in list(state.items()) + list(extras.items()):
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, _Node())
            module = module._modules[part]
        if key in extras:
            setattr(module, leaf, value)  # a plain tensor attribute, not part of the state dict
        else:
            module.register_buffer(leaf, value)
    return torch.jit.script(root)


def test_openai_torchscript_archive_loads_without_jit(tmp_path, monkeypatch):
    torch.manual_seed(0)
    source = build_clip_model(tiny_cfg())
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in source.state_dict().items()}
    extras = {"transformer.resblocks.0.attn_mask": torch.ones(77, 77)}
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(_torchscript_holder(state, extras), str(path))

    def refuse(*args, **kwargs):
        raise AssertionError("the loader must not run torch.jit.load")

    monkeypatch.setattr(torch.jit, "load", refuse)
    loaded = build("MODEL.VIT.WEIGHTS", str(path), seed=3)
    reference = build()
    reference.visual.load_state_dict({k[len("visual."):]: v.float() for k, v in state.items()
                                      if k.startswith("visual.")})
    _same_outputs(reference, loaded)


def test_square_224_style_checkpoint_is_resized_to_the_grid_on_load(tmp_path):
    torch.manual_seed(0)
    square = build_clip_model(tiny_cfg("INPUT.SIZE_TRAIN", [112, 112], "MODEL.BACKBONE.STRIDE_SIZE", (16, 16)))
    path = tmp_path / "square.pt"
    torch.save(square.state_dict(), path)
    vit = build("MODEL.VIT.WEIGHTS", str(path))
    original = square.visual.positional_embedding.detach()
    assert original.shape == (50, 64)
    torch.testing.assert_close(vit.position_embedding.detach(), reference_resize(original, (7, 7), (10, 5)))
    assert torch.equal(vit.visual.conv1.weight, square.visual.conv1.weight)


def test_weight_file_errors_name_file_key_and_mismatch(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MODEL\.VIT\.WEIGHTS.*nowhere\.pt"):
        build("MODEL.VIT.WEIGHTS", str(tmp_path / "nowhere.pt"))
    torch.manual_seed(0)
    path = tmp_path / "width64.pt"
    torch.save(build_clip_model(tiny_cfg()).state_dict(), path)
    with pytest.raises(ValueError, match=r"width64\.pt.*ViT-B-16.*conv1\.weight: file \(64, 3, 16, 16\) "
                                         r"vs model \(32, 3, 16, 16\)"):
        build("MODEL.VIT.WEIGHTS", str(path), "MODEL.VIT.WIDTH", 32)
    with pytest.raises(ValueError, match=r"unexpected keys.*transformer\.resblocks\.3\."):
        build("MODEL.VIT.WEIGHTS", str(path), "MODEL.VIT.LAYERS", 3, "MODEL.VIT.TAPS", (1, 2, 3))
    with pytest.raises(ValueError, match=r"missing keys.*visual\.transformer\.resblocks\.4\.ln_1\.weight"):
        build_clip_model(tiny_cfg("MODEL.VIT.WEIGHTS", str(path), "MODEL.VIT.LAYERS", 5))  # whole-CLIP loader
    text_only = tmp_path / "text_only.pt"
    torch.save({"token_embedding.weight": torch.zeros(3, 2)}, text_only)
    with pytest.raises(ValueError, match="no CLIP visual tower"):
        build("MODEL.VIT.WEIGHTS", str(text_only))
    pickled = tmp_path / "object.pth"
    torch.save({"model": _Node()}, pickled)
    with pytest.raises(ValueError, match="refusing"):
        build("MODEL.VIT.WEIGHTS", str(pickled))


# ----------------------------------------------------------------------------- vanilla family
VANILLA = ["MODEL.VIT.FAMILY", "vanilla", "MODEL.VIT.ARCH", "ViT-B-16"]


def test_vanilla_family_matches_timm_and_loads_timm_state_dicts(tmp_path):
    import timm
    vit = build(*VANILLA, "MODEL.VIT.NUM_CAMERAS", 2)
    assert vit.embed_dim is None and vit.proj is None and vit.grid_size == (10, 5)
    assert vit.visual.patch_embed.proj.stride == (12, 12) and vit.visual.embed_dim == 64
    x = images()
    with torch.no_grad():
        out = vit.forward_features(x)
        torch.testing.assert_close(out["cls"], vit.visual.forward_features(x)[:, 0], rtol=1e-4, atol=1e-5)
        assert out["proj"] is None and out["attn_logits"].shape == (3, 4, 50)
        assert (vit.forward_features(x, torch.tensor([0, 1, 1]))["cls"] - out["cls"]).abs().max() > 1e-3
        # class-token logits from the last block's own qkv projection
        h = vit.visual.norm_pre(torch.cat([vit.visual.cls_token.expand(3, 1, -1), vit.embed_patches(x)], 1)
                                + vit.visual.pos_embed)
        for blk in vit.visual.blocks[:-1]:
            h = blk(h)
        q, k, _ = vit.visual.blocks[-1].attn.qkv(vit.visual.blocks[-1].norm1(h)).chunk(3, dim=-1)
        expected = torch.einsum("bhd,bnhd->bhn", q[:, 0].reshape(3, 4, 16), k[:, 1:].reshape(3, 50, 4, 16)) / 4.0
        torch.testing.assert_close(out["attn_logits"], expected, rtol=1e-4, atol=1e-5)

    # a timm checkpoint at 224 px (14x14 grid) with a classifier head
    torch.manual_seed(0)
    timm_vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=5, embed_dim=64,
                                 depth=4, num_heads=4)
    path = tmp_path / "timm_vit.pth"
    torch.save(timm_vit.state_dict(), path)
    loaded = build(*VANILLA, "MODEL.VIT.WEIGHTS", str(path), seed=3)
    torch.testing.assert_close(loaded.position_embedding.detach(),
                               reference_resize(timm_vit.pos_embed[0].detach(), (14, 14), (10, 5)))
    assert torch.equal(loaded.visual.blocks[2].attn.qkv.weight, timm_vit.blocks[2].attn.qkv.weight)

    # round trip of the adapted tower through safetensors
    from safetensors.torch import save_file
    path = tmp_path / "vanilla.safetensors"
    save_file({k: v.contiguous() for k, v in loaded.visual.state_dict().items()}, str(path))
    again = build(*VANILLA, "MODEL.VIT.WEIGHTS", str(path), seed=9)
    with torch.no_grad():
        torch.testing.assert_close(again(x), loaded(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- fast-reid integration
def test_stock_baseline_trains_and_evaluates_with_the_backbone():
    from fastreid.modeling import build_model
    from fastreid.utils.events import EventStorage
    cfg = tiny_cfg("MODEL.DEVICE", "cpu", "MODEL.META_ARCHITECTURE", "Baseline",
                   "MODEL.BACKBONE.NAME", "build_clip_vit_backbone", "MODEL.HEADS.POOL_LAYER", "Identity",
                   "MODEL.HEADS.NUM_CLASSES", 5, "MODEL.LOSSES.NAME", ("CrossEntropyLoss", "TripletLoss"))
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model.backbone, ReIDViT)
    batch = {"images": torch.rand(8, 3, 128, 64) * 255, "targets": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])}
    model.train()
    with EventStorage(0):
        losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_triplet"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.visual.conv1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        feats = model({"images": torch.rand(4, 3, 128, 64) * 255})
    assert feats.shape == (4, 64) and torch.isfinite(feats).all()


def test_builder_rejects_bad_family_and_grid():
    with pytest.raises(ValueError, match="MODEL.VIT.FAMILY"):
        build("MODEL.VIT.FAMILY", "resnet")
    with pytest.raises(ValueError, match="INPUT.SIZE_TRAIN"):
        build("INPUT.SIZE_TRAIN", [8, 8])
