"""Loading local CLIP / ViT weight files into the backbone towers (SPEC §1).

Formats read, never downloading and never unpickling arbitrary objects:
- OpenAI's released CLIP TorchScript archive (``ViT-B-16.pt``): its ``data.pkl`` is read with a
  restricted unpickler that rebuilds tensors from the archive's storages and turns every scripted
  module into a plain attribute holder, so no TorchScript or Python code of the file is run;
- a ``torch.save`` state dict (``.pt/.pth/.bin``), read with ``torch.load(weights_only=True)``,
  possibly wrapped in ``{"state_dict": ...}`` / ``{"model": ...}`` and with ``module.`` prefixes;
- a ``.safetensors`` file.
OpenAI and open_clip use the same key names for the ``CLIP`` class; timm ViTs use timm's names.
A position embedding trained on another grid (224 px -> 14x14, or a non-square 128x64 pretraining -> 8x4) is
resized bilinearly to the model's patch grid on load, the class position kept.
"""
import logging
import math
import os
import pickle
import zipfile
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("fastreid.dpmpp.weights")

WEIGHTS_KEY = "MODEL.VIT.WEIGHTS"

# Non-tensor metadata that OpenAI state dicts carry next to the weights.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_WRAPPER_KEYS = ("state_dict", "model", "module", "model_state", "model_state_dict")
_MAX_LISTED = 5


# ----------------------------------------------------------------------------- position embedding
def resize_position_embedding(pos_embed: torch.Tensor, old_grid: Tuple[int, int],
                              new_grid: Tuple[int, int]) -> torch.Tensor:
    """Resize a ``(1 + h*w, D)`` position table from grid ``old_grid`` to ``new_grid`` (SPEC §1).

    The class position (row 0) is kept; the grid rows, laid out row-major over (h, w), are resized
    bilinearly (``align_corners=False``, no antialias, as CLIP-ReID does) and flattened row-major again.
    """
    old_h, old_w = (int(v) for v in old_grid)
    new_h, new_w = (int(v) for v in new_grid)
    if pos_embed.dim() != 2 or pos_embed.shape[0] != 1 + old_h * old_w:
        raise ValueError(f"position embedding of shape {tuple(pos_embed.shape)} does not hold a class "
                         f"position plus a {old_h}x{old_w} grid (expected ({1 + old_h * old_w}, D))")
    dim = pos_embed.shape[1]
    cls_pos, grid_pos = pos_embed[:1], pos_embed[1:]
    if (old_h, old_w) == (new_h, new_w):
        return pos_embed.clone()
    grid = grid_pos.float().reshape(1, old_h, old_w, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_h, new_w), mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(new_h * new_w, dim).to(pos_embed.dtype)
    return torch.cat([cls_pos, grid], dim=0)


def infer_source_grid(num_grid_rows: int, target_grid: Tuple[int, int]) -> Tuple[int, int]:
    """The (h, w) grid a checkpoint's ``num_grid_rows`` position rows were trained on, when the file does not say:
    a square grid when the count is a square (CLIP's 14x14), otherwise the factorisation h·w whose aspect h/w is
    closest to the target grid's (a 128x64 stride-16 pretraining: 32 rows -> 8x4 for a 10x5 target)."""
    side = math.isqrt(num_grid_rows)
    if side * side == num_grid_rows:
        return side, side
    target_aspect = math.log(target_grid[0] / target_grid[1])
    pairs = [(h, num_grid_rows // h) for h in range(1, num_grid_rows + 1) if num_grid_rows % h == 0]
    return min(pairs, key=lambda hw: abs(math.log(hw[0] / hw[1]) - target_aspect))


def _fit_position_rows(file_pos: torch.Tensor, model_grid: Tuple[int, int], path: str,
                       source_grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Resize a checkpoint's ``(1 + h*w, D)`` table from its grid (``source_grid``, or inferred by
    :func:`infer_source_grid`) to ``model_grid``; other shapes pass through unchanged (the shape check then
    reports them)."""
    rows_needed = 1 + model_grid[0] * model_grid[1]
    if file_pos.dim() != 2 or file_pos.shape[0] == rows_needed or file_pos.shape[0] < 2:
        return file_pos
    grid_rows = file_pos.shape[0] - 1
    if source_grid and any(source_grid):
        source_grid = tuple(int(v) for v in source_grid)
        if source_grid[0] * source_grid[1] != grid_rows:
            raise ValueError(f"MODEL.VIT.PRETRAIN_GRID {source_grid} does not fit the {grid_rows} position rows "
                             f"(plus the class position) of '{path}'")
    else:
        source_grid = infer_source_grid(grid_rows, model_grid)
    logger.info("Resizing the position embedding of '%s' from grid %s to %s", path, source_grid, tuple(model_grid))
    return resize_position_embedding(file_pos, source_grid, model_grid)


# ----------------------------------------------------------------------------- TorchScript archives
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptedObject:
    """Stand-in for a scripted module found in ``data.pkl``: it only keeps its attribute dict."""

    def __setstate__(self, state):
        self.attributes = state if isinstance(state, dict) else {}


class _StorageType:
    def __init__(self, dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return torch.as_strided(storage, tuple(size), tuple(stride), storage_offset).clone()


def _rebuild_parameter(data, *unused):
    return data


def _identity(value, *unused):
    return value


class _TorchScriptUnpickler(pickle.Unpickler):
    """Reads a TorchScript ``data.pkl`` allowing only tensor rebuilding and plain containers."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): OrderedDict,
        ("torch", "device"): torch.device,
        ("torch.jit._pickle", "build_intlist"): _identity,
        ("torch.jit._pickle", "build_doublelist"): _identity,
        ("torch.jit._pickle", "build_boollist"): _identity,
        ("torch.jit._pickle", "build_tensorlist"): _identity,
        ("torch.jit._pickle", "restore_type_tag"): _identity,
    }

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._storages: Dict[str, torch.Tensor] = {}

    def find_class(self, module, name):
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptedObject
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a weights archive")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        key = str(pid[2])
        if key not in self._storages:
            raw = bytearray(self._archive.read(f"{self._prefix}/data/{key}"))
            self._storages[key] = torch.frombuffer(raw, dtype=pid[1].dtype) if raw else torch.empty(0, dtype=pid[1].dtype)
        return self._storages[key]


def is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/__torch__" in name for name in archive.namelist())


def _collect_tensors(obj: _ScriptedObject, prefix: str, out: Dict[str, torch.Tensor], seen: set):
    seen.add(id(obj))
    for name, value in getattr(obj, "attributes", {}).items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptedObject) and id(value) not in seen:
            _collect_tensors(value, f"{prefix}{name}.", out, seen)


def read_torchscript_tensors(path: str) -> Dict[str, torch.Tensor]:
    """All tensor attributes of a TorchScript archive's module tree, by dotted name, read without
    running any code of the archive. Besides the state dict they may include plain tensor attributes
    (OpenAI's ``attn_mask``); callers keep the keys their model has."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        data_pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not data_pkl:
            raise ValueError(f"'{path}' looks like a TorchScript archive but has no <name>/data.pkl")
        prefix = data_pkl[0][: -len("/data.pkl")]
        byteorder = f"{prefix}/byteorder"
        if byteorder in names and archive.read(byteorder).decode().strip() != "little":
            raise ValueError(f"'{path}' stores big-endian tensors, which this reader does not support")
        with archive.open(data_pkl[0]) as f:
            root = _TorchScriptUnpickler(f, archive, prefix).load()
    if not isinstance(root, _ScriptedObject):
        raise ValueError(f"'{path}': the TorchScript archive does not hold a module")
    tensors: Dict[str, torch.Tensor] = {}
    _collect_tensors(root, "", tensors, set())
    return tensors


# ----------------------------------------------------------------------------- reading files
def _unwrap_state_dict(obj, path: str) -> Dict[str, torch.Tensor]:
    for _ in range(len(_WRAPPER_KEYS)):
        if not isinstance(obj, Mapping) or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"'{path}' holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"'{path}' holds no tensors (keys: {list(obj.keys())[:_MAX_LISTED]})")
    return tensors


def _strip_module_prefix(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


def read_state_dict(path: str, config_key: str = WEIGHTS_KEY) -> Tuple[Dict[str, torch.Tensor], bool]:
    """Read a weights file into ``{key: tensor}``; returns ``(state, is_torchscript_archive)``.

    A missing file raises FileNotFoundError naming the path and ``config_key``.
    """
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{config_key}: weights file '{path}' does not exist (set {config_key} "
                                f"to a local OpenAI/open_clip/timm weights file, or to '' for random init)")
    if path.endswith(".npz"):
        raise ValueError(f"{config_key}: '{path}' is a JAX .npz checkpoint; convert it to a timm "
                         f".pth/.safetensors state dict first")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return _strip_module_prefix(load_file(path, device="cpu")), False
    if is_torchscript_archive(path):
        try:
            return _strip_module_prefix(read_torchscript_tensors(path)), True
        except pickle.UnpicklingError as e:
            raise ValueError(f"{config_key}: cannot read the TorchScript archive '{path}' as plain weights "
                             f"without running its code: {e}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{config_key}: '{path}' holds Python objects other than tensors and plain data; "
                         f"refusing to unpickle it (re-save it as a state dict). ({e})") from e
    return _strip_module_prefix(_unwrap_state_dict(obj, path)), False


# ----------------------------------------------------------------------------- loading into models
def _load_checked(model: nn.Module, state: Dict[str, torch.Tensor], path: str, arch: str,
                  config_key: str, keep_only_model_keys: bool):
    """``load_state_dict(strict=True)`` after a readable check of keys and shapes."""
    own = model.state_dict()
    if keep_only_model_keys:
        state = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                parts.append(f"{len(items)} {label}, e.g. {items[:_MAX_LISTED]}")
        raise ValueError(f"{config_key}: weights file '{path}' does not match the architecture {arch}: "
                         + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def _read_clip_state(path: str, config_key: str) -> Tuple[Dict[str, torch.Tensor], bool, bool]:
    state, is_archive = read_state_dict(path, config_key)
    openai_format = is_archive or any(k in state for k in _OPENAI_EXTRA_KEYS)
    for key in _OPENAI_EXTRA_KEYS:
        state.pop(key, None)
    return state, is_archive, openai_format


def _warn_if_gelu_mismatch(visual: nn.Module, openai_format: bool, path: str):
    from open_clip.transformer import QuickGELU
    if openai_format and not any(isinstance(m, QuickGELU) for m in visual.modules()):
        logger.warning("'%s' looks like OpenAI CLIP weights, which were trained with QuickGELU, but the "
                       "model uses GELU (MODEL.VIT.QUICK_GELU False)", path)


def load_clip_weights(clip_model: nn.Module, path: str, arch: str = "", config_key: str = WEIGHTS_KEY,
                      source_grid: Optional[Tuple[int, int]] = None):
    """Load an OpenAI or open_clip CLIP checkpoint into an open_clip ``CLIP`` model (visual + text).

    The visual position embedding is resized to ``clip_model.visual.grid_size`` from the file's grid
    (``source_grid``, or inferred: :func:`infer_source_grid`). Any key, shape or architecture mismatch raises ValueError naming the
    file, the first mismatching keys and ``arch``.
    """
    state, is_archive, openai_format = _read_clip_state(path, config_key)
    own_keys = set(clip_model.state_dict().keys())
    if not any(k.startswith("text.") for k in own_keys) and any(k.startswith("text.") for k in state):
        # open_clip's CustomTextCLIP layout, loaded into the plain CLIP class
        state = {(k[len("text."):] if k.startswith("text.") else k): v for k, v in state.items()}
    pos_key = "visual.positional_embedding"
    if pos_key in state and pos_key in own_keys:
        state[pos_key] = _fit_position_rows(state[pos_key], tuple(clip_model.visual.grid_size), path, source_grid)
    _warn_if_gelu_mismatch(clip_model.visual, openai_format, path)
    _load_checked(clip_model, state, path, arch or type(clip_model).__name__, config_key,
                  keep_only_model_keys=is_archive)
    logger.info("Loaded CLIP weights from '%s'", path)


def load_clip_visual_weights(visual: nn.Module, path: str, arch: str = "", config_key: str = WEIGHTS_KEY,
                             source_grid: Optional[Tuple[int, int]] = None):
    """Load the ``visual.*`` part of a CLIP checkpoint (or a file of the tower's own keys) into an
    open_clip ``VisionTransformer``; the text part of the file is ignored. Same resizing and errors as
    ``load_clip_weights``."""
    state, is_archive, openai_format = _read_clip_state(path, config_key)
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    elif "conv1.weight" not in state:
        raise ValueError(f"{config_key}: weights file '{path}' holds no CLIP visual tower (no 'visual.*' "
                         f"nor 'conv1.weight' keys; first keys {list(state)[:_MAX_LISTED]}); expected {arch}")
    if "positional_embedding" in state:
        state["positional_embedding"] = _fit_position_rows(state["positional_embedding"],
                                                           tuple(visual.grid_size), path, source_grid)
    _warn_if_gelu_mismatch(visual, openai_format, path)
    _load_checked(visual, state, path, arch or type(visual).__name__, config_key, keep_only_model_keys=is_archive)
    logger.info("Loaded CLIP visual weights from '%s'", path)


def load_timm_vit_weights(vit: nn.Module, path: str, arch: str = "", config_key: str = WEIGHTS_KEY,
                          source_grid: Optional[Tuple[int, int]] = None):
    """Load a timm ViT state dict into a timm ``VisionTransformer`` built without a classifier.

    Classifier keys (``head.*``) of the file are dropped when the model has none; ``pos_embed`` of
    a square grid is resized to ``vit.patch_embed.grid_size``.
    """
    state, is_archive = read_state_dict(path, config_key)
    own_keys = set(vit.state_dict().keys())
    if not any(k.startswith("head.") for k in own_keys):
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    if "pos_embed" in state and state["pos_embed"].dim() == 3 and state["pos_embed"].shape[0] == 1:
        state["pos_embed"] = _fit_position_rows(state["pos_embed"][0], tuple(vit.patch_embed.grid_size),
                                                path, source_grid).unsqueeze(0)
    _load_checked(vit, state, path, arch or type(vit).__name__, config_key, keep_only_model_keys=is_archive)
    logger.info("Loaded ViT weights from '%s'", path)
