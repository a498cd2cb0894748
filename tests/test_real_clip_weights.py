"""Real CLIP weight files (issue 15, docs/REAL_CLIP_WEIGHTS.md): release files recognised by sha256 and logged
(source, architecture, parameter count, implied QUICK_GELU, a warning when the config contradicts the file);
OpenAI-layout TorchScript archives, scripted and traced, read by the restricted reader and by open_clip's own OpenAI
loader (opt-in MODEL.VIT.ALLOW_TORCHSCRIPT_LOADER) to equal tensors; open_clip's published checkpoint layouts.

The archives are written here from open_clip's OpenAI-architecture CLIP (QuickGELU, the fp16 conversion of OpenAI's
release, the text attention mask a plain attribute as in OpenAI's files) at a tiny size; nothing is downloaded."""
import hashlib
import json
import logging
import os

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, convert_weights_to_fp16

import fastreid_dpmpp  # noqa: F401  (fast-reid fixes first)
from fastreid.config import get_cfg
from fastreid_dpmpp.config import add_dpmpp_config
from fastreid_dpmpp.modeling.backbones import weights as W
from fastreid_dpmpp.modeling.backbones.clip_vit import build_clip_model, build_clip_vit_backbone

# The project's CLIP at the tiny size of the archives below (visual 64 wide, 2 blocks, joint 32; text 64 wide, 1 block;
# open_clip's OpenAI builder gives every 64 channels one head, so the text width must be a multiple of 64).
TINY = ["MODEL.VIT.WIDTH", 64, "MODEL.VIT.LAYERS", 2, "MODEL.VIT.HEADS", 4, "MODEL.VIT.EMBED_DIM", 32,
        "MODEL.VIT.TEXT_WIDTH", 64, "MODEL.VIT.TEXT_LAYERS", 1, "MODEL.VIT.TEXT_HEADS", 1,
        "INPUT.SIZE_TRAIN", [128, 64], "MODEL.BACKBONE.STRIDE_SIZE", (12, 12), "MODEL.VIT.TAPS", (1, 2),
        "MODEL.BACKBONE.FEAT_DIM", 64, "MODEL.BACKBONE.DROP_PATH_RATIO", 0.0]
KEY = "MODEL.VIT.ALLOW_TORCHSCRIPT_LOADER"


def tiny_cfg(*overrides):
    cfg = get_cfg()
    add_dpmpp_config(cfg)
    cfg.merge_from_list(TINY + list(overrides))
    return cfg


def backbone(*overrides):
    torch.manual_seed(11)  # the same random init everywhere: only the loaded weights can make two builds differ
    return build_clip_vit_backbone(tiny_cfg(*overrides)).eval()


def clip_model(*overrides):
    torch.manual_seed(11)
    return build_clip_model(tiny_cfg(*overrides)).eval()


def openai_layout_clip(seed=0):
    """open_clip's OpenAI-architecture CLIP as ``build_model_from_openai_state_dict`` makes it (QuickGELU, fp16
    conversion of OpenAI's release), with the text attention mask a plain tensor attribute as in OpenAI's files."""
    torch.manual_seed(seed)
    model = CLIP(32, CLIPVisionCfg(layers=2, width=64, patch_size=16, image_size=32),
                 CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1),
                 quick_gelu=True, cast_dtype=torch.float16)
    convert_weights_to_fp16(model)
    mask = model.attn_mask
    del model._buffers["attn_mask"]
    model.attn_mask = mask
    return model.eval()


def save_archive(model, path, kind):
    if kind == "scripted":
        module = torch.jit.script(model)
    else:  # traced, as OpenAI released its models: forward, encode_image and encode_text
        image, text = torch.ones(1, 3, 32, 32, dtype=torch.float16), torch.zeros(1, 77, dtype=torch.int)
        module = torch.jit.trace_module(model, dict(forward=(image, text), encode_image=(image,),
                                                    encode_text=(text,)))
    torch.jit.save(module, str(path))
    return str(path)


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """{"scripted"/"traced": path} of one tiny OpenAI-layout model, and the model."""
    folder = tmp_path_factory.mktemp("archives")
    model = openai_layout_clip()
    return {kind: save_archive(model, folder / f"ViT-tiny-{kind}.pt", kind) for kind in ("scripted", "traced")}, model


@pytest.fixture
def weights_log():
    """Records of the weights logger (a handler of its own: fast-reid's logger setup may stop propagation)."""
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("fastreid.dpmpp.weights")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def messages(records, level=logging.INFO):
    return [r.getMessage() for r in records if r.levelno == level]


def visual_weights_equal(a, b):
    sa, sb = a.visual.state_dict(), b.visual.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def same_features(a, b):
    x = torch.randn(2, 3, 128, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fa, fb = a.forward_features(x), b.forward_features(x)
    assert torch.equal(fa["cls"], fb["cls"]) and torch.equal(fa["proj"], fb["proj"])


def params(module_or_state):
    if isinstance(module_or_state, torch.nn.Module):
        return sum(p.numel() for p in module_or_state.parameters())
    return sum(v.numel() for v in module_or_state.values())


# ----------------------------------------------------------------------------- known releases
def test_release_registry_is_the_published_openai_addresses():
    """Every OpenAI release open_clip knows carries its sha256 in its address; the registry holds exactly those."""
    from open_clip.pretrained import get_pretrained_url, list_pretrained_models_by_tag
    names = [n for n in list_pretrained_models_by_tag("openai") if not n.endswith("-quickgelu")]
    assert len(names) == len(W.KNOWN_RELEASES) == 9
    for name in names:
        url = get_pretrained_url(name, "openai")
        sha256 = url.split("/")[-2]
        assert len(sha256) == 64 and W.KNOWN_RELEASES[sha256] == (W.KNOWN_RELEASES[sha256].name, name, True, url)
    b16 = W.KNOWN_RELEASES["5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"]
    assert b16.arch == "ViT-B-16" and b16.name == "OpenAI CLIP ViT-B/16" and b16.quick_gelu


def test_sha256_is_computed_only_for_archives_and_once_per_file_version(tmp_path, archives, monkeypatch):
    calls = []
    real = hashlib.file_digest

    def counting(f, name):
        calls.append(f.name)
        return real(f, name)

    monkeypatch.setattr(W.hashlib, "file_digest", counting)
    monkeypatch.setattr(W, "_SHA256_CACHE", {})
    path = str(tmp_path / "copy.pt")
    with open(archives[0]["scripted"], "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    with open(path, "rb") as f:
        expected = hashlib.sha256(f.read()).hexdigest()
    assert W.file_sha256(path) == expected and W.file_sha256(path) == expected
    W.read_weights_file(path)
    assert calls == [path]                                   # one hash for three uses
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a replaced file (new mtime) is hashed again
    assert W.file_sha256(path) == expected and len(calls) == 2
    state_dict_file = tmp_path / "plain.pt"
    torch.save(openai_layout_clip().float().state_dict(), state_dict_file)
    W.read_weights_file(str(state_dict_file))                # no published sha256 for state dicts: not hashed
    assert len(calls) == 2


def test_known_release_is_recognised_logged_and_checked_against_the_config(archives, monkeypatch, weights_log):
    paths, source = archives
    path = paths["scripted"]
    sha256 = W.file_sha256(path)
    fake = W.KnownRelease("OpenAI CLIP ViT-tiny", "ViT-tiny", True, f"https://example.invalid/{sha256}/ViT-tiny.pt")
    monkeypatch.setitem(W.KNOWN_RELEASES, sha256, fake)

    model = backbone("MODEL.VIT.WEIGHTS", path)
    [loaded] = [m for m in messages(weights_log) if m.startswith("Loaded CLIP visual weights")]
    assert f"Source: OpenAI CLIP ViT-tiny release (sha256 {sha256[:16]}... as published in {fake.url})" in loaded
    assert "read by the restricted reader" in loaded
    assert ("Architecture: 'ViT-tiny' (visual width 64, 2 blocks, patch 16, 2x2 position grid, joint width 32; "
            "text width 64, 1 blocks)") in loaded
    # loaded: the visual tower, its position table resized from 2x2 to the 10x5 grid
    assert params(model.visual) == params(source.visual) + (50 - 4) * 64
    assert f"Parameters: {params(source):,} in the file, {params(model.visual):,} loaded" in loaded
    assert "Implies MODEL.VIT.QUICK_GELU True (config: True)" in loaded
    assert not messages(weights_log, logging.WARNING)

    whole = clip_model("MODEL.VIT.WEIGHTS", path, "MODEL.VIT.QUICK_GELU", False)  # the whole CLIP, config contradicting
    [warning] = messages(weights_log, logging.WARNING)
    assert warning == (f"'{path}' is OpenAI CLIP ViT-tiny, trained with QuickGELU, but the model uses GELU "
                       "(MODEL.VIT.QUICK_GELU False): set MODEL.VIT.QUICK_GELU True")
    [loaded] = [m for m in messages(weights_log) if m.startswith("Loaded CLIP weights (visual + text)")]
    assert f"{params(source):,} in the file, {params(whole):,} loaded" in loaded
    assert "Implies MODEL.VIT.QUICK_GELU True (config: False)" in loaded

    with pytest.raises(ValueError, match=r"does not match the architecture .*missing keys.*The file is OpenAI CLIP "
                                         r"ViT-tiny \(sha256 checked\): set MODEL.VIT.ARCH 'ViT-tiny'"):
        backbone("MODEL.VIT.WEIGHTS", path, "MODEL.VIT.LAYERS", 3, "MODEL.VIT.TAPS", (1, 2, 3))


def test_unknown_archive_is_logged_as_such(archives, weights_log):
    path = archives[0]["traced"]
    backbone("MODEL.VIT.WEIGHTS", path)
    [loaded] = [m for m in messages(weights_log) if m.startswith("Loaded")]
    assert f"Source: TorchScript archive 'ViT-tiny-traced.pt', not a known release (sha256 {W.file_sha256(path)[:16]}" \
           in loaded
    assert "Architecture: visual width 64, 2 blocks" in loaded and "Implies MODEL.VIT.QUICK_GELU True" in loaded
    with pytest.raises(ValueError, match=r"shape mismatches.*\. The file holds visual width 64, 2 blocks, patch 16"):
        backbone("MODEL.VIT.WEIGHTS", path, "MODEL.VIT.WIDTH", 128)


def test_real_vit_b16_shapes_are_named_after_the_open_clip_config():
    with torch.device("meta"):
        state = CLIP(512, CLIPVisionCfg(layers=12, width=768, patch_size=16, image_size=224),
                     CLIPTextCfg(context_length=77, vocab_size=49408, width=512, heads=8, layers=12)).state_dict()
    assert W.describe_clip_state(state) == ("shapes of open_clip 'ViT-B-16': visual width 768, 12 blocks, patch 16, "
                                            "14x14 position grid, joint width 512; text width 512, 12 blocks")
    assert W.count_parameters(state) == 149_620_737   # ViT-B/16 CLIP as open_clip counts it


# ----------------------------------------------------------------------------- the two readers of archives
@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_both_readers_give_the_archive_tensors(archives, kind, monkeypatch):
    paths, source = archives
    real_jit_load = torch.jit.load

    def refuse(*args, **kwargs):
        raise AssertionError("the restricted reader must not run torch.jit.load")

    monkeypatch.setattr(torch.jit, "load", refuse)
    restricted = W.read_torchscript_tensors(paths[kind])
    monkeypatch.setattr(torch.jit, "load", real_jit_load)
    via_open_clip = W.read_torchscript_with_open_clip(paths[kind])

    expected = source.state_dict()
    assert set(via_open_clip) == set(expected)
    assert set(restricted) - set(expected) <= {"attn_mask"}   # the plain attribute survives only in scripted files
    for key, value in expected.items():
        assert restricted[key].dtype == value.dtype, key       # the stored precision (fp16 projections)
        assert torch.equal(restricted[key], value), key
        assert via_open_clip[key].dtype == torch.float32 and torch.equal(via_open_clip[key], value.float()), key
    assert restricted["visual.proj"].dtype == torch.float16


def _refused_archive(kind, archives, tmp_path, monkeypatch):
    """An archive of the same weights that the restricted reader cannot parse: a scripted model with a sparse tensor
    attribute (a rebuild function it does not allow), or the traced archive read as by a reader that lacks the
    tensor rebuild function the archive uses (as a future torch's archive could)."""
    if kind == "scripted":
        model = openai_layout_clip()
        model.sparse_note = torch.eye(3).to_sparse()
        return save_archive(model, tmp_path / "ViT-tiny-sparse.pt", "scripted"), "_rebuild_sparse_tensor"
    allowed = dict(W._TorchScriptUnpickler._ALLOWED)
    del allowed[("torch._utils", "_rebuild_tensor_v2")]
    monkeypatch.setattr(W._TorchScriptUnpickler, "_ALLOWED", allowed)
    return archives[0]["traced"], "_rebuild_tensor_v2"


@pytest.mark.parametrize("kind", ["scripted", "traced"])
def test_refused_archive_loads_only_with_the_opt_in_key_to_the_same_model(archives, kind, tmp_path, monkeypatch,
                                                                        weights_log):
    reference = backbone("MODEL.VIT.WEIGHTS", archives[0][kind])          # the restricted reader, no opt-in
    reference_clip = clip_model("MODEL.VIT.WEIGHTS", archives[0][kind])
    path, refused_global = _refused_archive(kind, archives, tmp_path, monkeypatch)

    jit_calls = []
    real_jit_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: jit_calls.append(a) or real_jit_load(*a, **k))
    with pytest.raises(ValueError, match=rf"MODEL.VIT.WEIGHTS: cannot read the TorchScript archive '.*' as plain "
                                         rf"weights without running its code: global 'torch._utils.{refused_global}' "
                                         rf"is not allowed .*set {KEY} True to load it with open_clip's OpenAI "
                                         rf"loader, which runs the archive's TorchScript code"):
        backbone("MODEL.VIT.WEIGHTS", path)
    assert not jit_calls                                                   # without the key no code of the file ran

    loaded = backbone("MODEL.VIT.WEIGHTS", path, KEY, True)
    assert len(jit_calls) == 1
    visual_weights_equal(reference, loaded)
    same_features(reference, loaded)
    assert any(m.startswith(f"{KEY} True: loading '{path}' with open_clip's OpenAI loader")
               for m in messages(weights_log, logging.WARNING))
    assert any(f"read by open_clip's OpenAI loader (torch.jit.load, {KEY} True)" in m for m in messages(weights_log))

    whole = clip_model("MODEL.VIT.WEIGHTS", path, KEY, True)               # the whole-CLIP builder passes the key too
    for key, value in reference_clip.state_dict().items():
        assert torch.equal(whole.state_dict()[key], value), key


def test_opt_in_reports_a_file_open_clip_cannot_load_either(tmp_path):
    path = tmp_path / "not-clip.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ValueError, match=rf"{KEY} True\) could not load '.*not-clip\.pt' either"):
        W.read_torchscript_with_open_clip(str(path))


# ----------------------------------------------------------------------------- open_clip's published layouts
def _open_clip_files(folder, state):
    """open_clip's checkpoint layouts of one state dict: a Hugging Face snapshot (``save_for_hf``: the state dict as
    .bin and .safetensors next to open_clip_config.json), a training checkpoint (``epoch_N.pt``: DDP's 'module.'
    prefix, optimizer state) and a plain state dict .pt / .bin."""
    from safetensors.torch import save_file
    snapshot = folder / "snapshot"
    snapshot.mkdir()
    torch.save(state, snapshot / "open_clip_pytorch_model.bin")
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "open_clip_model.safetensors"))
    (snapshot / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 32, "quick_gelu": False, "vision_cfg": {"width": 64, "layers": 2}},
        "preprocess_cfg": {"mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]}}))
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    torch.save({"epoch": 32, "name": "tiny-run", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "optimizer": optimizer.state_dict()}, folder / "epoch_32.pt")
    torch.save(state, folder / "plain.bin")
    old_logit = dict(state, logit_scale=state["logit_scale"].reshape(1))  # logit_scale of shape (1,), older versions
    torch.save(old_logit, folder / "plain.pt")
    return {"snapshot .bin": snapshot / "open_clip_pytorch_model.bin",
            "snapshot .safetensors": snapshot / "open_clip_model.safetensors",
            "snapshot directory": snapshot, "epoch_32.pt": folder / "epoch_32.pt",
            "plain .bin": folder / "plain.bin", "plain .pt": folder / "plain.pt"}


def test_open_clip_published_layouts_load(tmp_path, weights_log):
    source = clip_model("MODEL.VIT.QUICK_GELU", False)   # an open_clip-trained (GELU) model
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))                # differs from the seed-11 init the loads start from
    files = _open_clip_files(tmp_path, source.state_dict())
    reference = backbone("MODEL.VIT.QUICK_GELU", False)
    reference.visual.load_state_dict(source.visual.state_dict())
    text = torch.randint(0, 49408, (2, 77), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected_text = source.encode_text(text)
    for name, path in files.items():
        weights_log.clear()
        loaded = backbone("MODEL.VIT.WEIGHTS", str(path), "MODEL.VIT.QUICK_GELU", False)
        visual_weights_equal(reference, loaded)
        same_features(reference, loaded)
        whole = clip_model("MODEL.VIT.WEIGHTS", str(path), "MODEL.VIT.QUICK_GELU", False)
        with torch.no_grad():
            assert torch.equal(whole.encode_text(text), expected_text), name
        assert not messages(weights_log, logging.WARNING), name
        log = " ".join(messages(weights_log))
        assert f"Parameters: {params(source):,} in the file, {params(loaded.visual):,} loaded" in log, name
        if name.startswith("snapshot"):   # open_clip_config.json tells the activation
            assert "with its open_clip_config.json" in log and "Implies MODEL.VIT.QUICK_GELU False" in log, name
        else:
            assert "The file does not imply a MODEL.VIT.QUICK_GELU (config: False)" in log, name
    weights_log.clear()
    backbone("MODEL.VIT.WEIGHTS", str(files["snapshot directory"]))        # QUICK_GELU True contradicts the json
    log = " ".join(messages(weights_log))
    assert "safetensors state dict 'open_clip_model.safetensors' with its open_clip_config.json" in log
    [warning] = messages(weights_log, logging.WARNING)
    assert warning == (f"'{files['snapshot directory'] / 'open_clip_model.safetensors'}' has quick_gelu false in its "
                       "open_clip_config.json, but the model uses QuickGELU (MODEL.VIT.QUICK_GELU True): "
                       "set MODEL.VIT.QUICK_GELU False")


def test_directory_without_an_open_clip_checkpoint_names_the_expected_files(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"MODEL.VIT.WEIGHTS: '.*' is a directory without "
                                                r"open_clip_model.safetensors or open_clip_pytorch_model.bin"):
        backbone("MODEL.VIT.WEIGHTS", str(tmp_path))
