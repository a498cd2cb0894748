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

Real release files (issue 15, docs/REAL_CLIP_WEIGHTS.md): a TorchScript archive is identified by its sha256 against
the published OpenAI releases (:data:`KNOWN_RELEASES`; hashed once per (path, size, mtime) in a process), and every
load logs the source, the architecture, the parameter count and the MODEL.VIT.QUICK_GELU the file implies (a warning
when the config contradicts it). An archive the restricted reader cannot parse is loaded through open_clip's own
OpenAI loader (``torch.jit.load``, which runs the archive's TorchScript code) only when the config opts in with
MODEL.VIT.ALLOW_TORCHSCRIPT_LOADER. A directory (a Hugging Face snapshot of an open_clip model) may be given instead
of a file: its ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin`` is read, and its
``open_clip_config.json`` tells the QuickGELU setting.
"""
import hashlib
import json
import logging
import math
import os
import pickle
import time
import zipfile
from collections import OrderedDict
from typing import Dict, Mapping, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("fastreid.dpmpp.weights")

WEIGHTS_KEY = "MODEL.VIT.WEIGHTS"
TORCHSCRIPT_LOADER_KEY = "MODEL.VIT.ALLOW_TORCHSCRIPT_LOADER"
GUIDE = "docs/REAL_CLIP_WEIGHTS.md"

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


def read_torchscript_with_open_clip(path: str, config_key: str = WEIGHTS_KEY) -> Dict[str, torch.Tensor]:
    """The state dict of an OpenAI-layout TorchScript archive as open_clip's own OpenAI loader builds it
    (``open_clip.load_openai_model``, fp32 on the CPU). That loader calls ``torch.jit.load``, which runs TorchScript
    code stored in the archive: it is used only for trusted files, when the config sets
    MODEL.VIT.ALLOW_TORCHSCRIPT_LOADER True and the restricted reader cannot parse the archive."""
    from open_clip import load_openai_model
    try:  # an absolute path can never be taken for a release name (which open_clip would download)
        model = load_openai_model(os.path.abspath(path), precision="fp32", device="cpu")
    except Exception as e:  # noqa: BLE001 - any failure of the foreign loader is reported with the file and key
        raise ValueError(f"{config_key}: open_clip's OpenAI loader ({TORCHSCRIPT_LOADER_KEY} True) could not load "
                         f"'{path}' either: {type(e).__name__}: {e}") from e
    return {k: v.detach() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- known release files
class KnownRelease(NamedTuple):
    """A published weights file, identified by the sha256 its publisher states."""
    name: str          # what the log calls it
    arch: str          # open_clip model config name (MODEL.VIT.ARCH)
    quick_gelu: bool   # activation it was trained with (MODEL.VIT.QUICK_GELU)
    url: str           # the download address, which carries the sha256


# OpenAI's CLIP releases: (open_clip name, OpenAI's name, file name, sha256 from the download address, which OpenAI's
# and open_clip's downloaders check). Only these publish a full sha256; the ResNets are listed so that the error can
# say what the file is (this backbone needs a ViT tower).
_OPENAI_RELEASES = (
    ("RN50", "RN50", "RN50.pt", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"),
    ("RN101", "RN101", "RN101.pt", "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599"),
    ("RN50x4", "RN50x4", "RN50x4.pt", "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd"),
    ("RN50x16", "RN50x16", "RN50x16.pt", "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa"),
    ("RN50x64", "RN50x64", "RN50x64.pt", "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c"),
    ("ViT-B-32", "ViT-B/32", "ViT-B-32.pt", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"),
    ("ViT-B-16", "ViT-B/16", "ViT-B-16.pt", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"),
    ("ViT-L-14", "ViT-L/14", "ViT-L-14.pt", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"),
    ("ViT-L-14-336", "ViT-L/14@336px", "ViT-L-14-336px.pt",
     "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02"),
)
_OPENAI_URL = "https://openaipublic.azureedge.net/clip/models/{}/{}"
KNOWN_RELEASES: Dict[str, KnownRelease] = {
    sha: KnownRelease(f"OpenAI CLIP {label}", arch, True, _OPENAI_URL.format(sha, file))
    for arch, label, file, sha in _OPENAI_RELEASES}

_SHA256_CACHE: Dict[Tuple[str, int, int], str] = {}


def file_sha256(path: str) -> str:
    """sha256 of a file, computed once per (real path, size, mtime) in a process. Measured on one core: 0.3-0.5 s
    for a 351 MB OpenAI-layout ViT-B/16 archive (0.7-1.1 GB/s), against 5.3 s to read it and build the backbone."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_CACHE:
        start = time.perf_counter()
        with open(path, "rb") as f:
            _SHA256_CACHE[key] = hashlib.file_digest(f, "sha256").hexdigest()
        logger.info("sha256 of '%s' (%.0f MB): %.2f s", path, stat.st_size / 1e6, time.perf_counter() - start)
    return _SHA256_CACHE[key]


# ----------------------------------------------------------------------------- reading files
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # a Hugging Face snapshot's files
OPEN_CLIP_CONFIG = "open_clip_config.json"


class WeightsFile(NamedTuple):
    """A weights file as read, with what it says about itself."""
    state: Dict[str, torch.Tensor]
    path: str                      # the file read (a directory resolves to its open_clip checkpoint)
    source: str                    # what the log calls the file and its reader
    is_archive: bool               # TorchScript archive: plain tensor attributes may come next to the state dict
    release: Optional[KnownRelease]
    quick_gelu: Optional[bool]     # the activation the file implies; None = it does not say
    quick_gelu_reason: str


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


def _resolve_path(path: str, config_key: str) -> str:
    path = os.path.expanduser(str(path))
    if os.path.isdir(path):
        found = [os.path.join(path, n) for n in OPEN_CLIP_FILES if os.path.isfile(os.path.join(path, n))]
        if not found:
            raise FileNotFoundError(f"{config_key}: '{path}' is a directory without {' or '.join(OPEN_CLIP_FILES)}; "
                                    f"set {config_key} to the weights file itself")
        return found[0]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{config_key}: weights file '{path}' does not exist (set {config_key} "
                                f"to a local OpenAI/open_clip/timm weights file, or to '' for random init)")
    return path


def _open_clip_model_cfg(path: str) -> Optional[dict]:
    """``model_cfg`` of the ``open_clip_config.json`` next to an open_clip checkpoint of a Hugging Face snapshot."""
    config = os.path.join(os.path.dirname(path), OPEN_CLIP_CONFIG)
    if os.path.basename(path) not in OPEN_CLIP_FILES or not os.path.isfile(config):
        return None
    try:
        with open(config, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        logger.warning("Ignoring '%s' (%s)", config, e)
        return None
    model_cfg = data.get("model_cfg", data) if isinstance(data, dict) else None
    return model_cfg if isinstance(model_cfg, dict) else None


def _read_archive(path: str, config_key: str, allow_torchscript_loader: bool,
                  release: Optional[KnownRelease]) -> Tuple[Dict[str, torch.Tensor], str]:
    try:
        return read_torchscript_tensors(path), "read by the restricted reader (no code of the file run)"
    except (pickle.UnpicklingError, ValueError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile) as e:
        reason = e
    known = f" It is {release.name} (sha256 checked)." if release else ""
    if not allow_torchscript_loader:
        raise ValueError(f"{config_key}: cannot read the TorchScript archive '{path}' as plain weights without running "
                         f"its code: {reason}.{known} If you trust the file, set {TORCHSCRIPT_LOADER_KEY} True to load "
                         f"it with open_clip's OpenAI loader, which runs the archive's TorchScript code "
                         f"(torch.jit.load); see {GUIDE}") from reason
    logger.warning("%s True: loading '%s' with open_clip's OpenAI loader (torch.jit.load runs the archive's "
                   "TorchScript code), as the restricted reader could not parse it: %s", TORCHSCRIPT_LOADER_KEY,
                   path, reason)
    return (read_torchscript_with_open_clip(path, config_key),
            f"read by open_clip's OpenAI loader (torch.jit.load, {TORCHSCRIPT_LOADER_KEY} True)")


def read_weights_file(path: str, config_key: str = WEIGHTS_KEY,
                      allow_torchscript_loader: bool = False) -> WeightsFile:
    """Read a weights file (or an open_clip Hugging Face snapshot directory) into a :class:`WeightsFile`.

    A missing file raises FileNotFoundError naming the path and ``config_key``. A TorchScript archive is hashed
    (:func:`file_sha256`) and matched against :data:`KNOWN_RELEASES`; if the restricted reader cannot parse it,
    ``allow_torchscript_loader`` (MODEL.VIT.ALLOW_TORCHSCRIPT_LOADER) falls back to
    :func:`read_torchscript_with_open_clip`, otherwise the ValueError names that key.
    """
    path = _resolve_path(path, config_key)
    name = os.path.basename(path)
    release, quick_gelu, reason = None, None, ""
    if path.endswith(".npz"):
        raise ValueError(f"{config_key}: '{path}' is a JAX .npz checkpoint; convert it to a timm "
                         f".pth/.safetensors state dict first")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state, is_archive, source = load_file(path, device="cpu"), False, f"safetensors state dict '{name}'"
    elif is_torchscript_archive(path):
        sha256 = file_sha256(path)
        release = KNOWN_RELEASES.get(sha256)
        state, reader = _read_archive(path, config_key, allow_torchscript_loader, release)
        is_archive = True
        source = (f"{release.name} release (sha256 {sha256[:16]}... as published in {release.url}), {reader}"
                  if release else f"TorchScript archive '{name}', not a known release (sha256 {sha256[:16]}...), "
                                  f"{reader}")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(f"{config_key}: '{path}' holds Python objects other than tensors and plain data; "
                             f"refusing to unpickle it (re-save it as a state dict). ({e})") from e
        state, is_archive, source = _unwrap_state_dict(obj, path), False, f"torch.save state dict '{name}'"
    state = _strip_module_prefix(state)
    openai_format = is_archive or any(k in state for k in _OPENAI_EXTRA_KEYS)
    model_cfg = _open_clip_model_cfg(path)
    if release:
        quick_gelu, reason = release.quick_gelu, f"is {release.name}, trained with QuickGELU"
    elif openai_format:
        quick_gelu, reason = True, "looks like OpenAI CLIP weights, which were trained with QuickGELU"
        source += "" if is_archive else " in OpenAI's layout"
    elif model_cfg is not None:
        quick_gelu = bool(model_cfg.get("quick_gelu", False))
        reason = f"has quick_gelu {str(quick_gelu).lower()} in its {OPEN_CLIP_CONFIG}"
        source += f" with its {OPEN_CLIP_CONFIG}"
    elif "quickgelu" in name.lower():
        quick_gelu, reason = True, "is named as a QuickGELU model ('quickgelu' in the file name)"
    return WeightsFile(state, path, source, is_archive, release, quick_gelu, reason)


def read_state_dict(path: str, config_key: str = WEIGHTS_KEY,
                    allow_torchscript_loader: bool = False) -> Tuple[Dict[str, torch.Tensor], bool]:
    """Read a weights file into ``{key: tensor}``; returns ``(state, is_torchscript_archive)``.

    A missing file raises FileNotFoundError naming the path and ``config_key``.
    """
    weights = read_weights_file(path, config_key, allow_torchscript_loader)
    return weights.state, weights.is_archive


# ----------------------------------------------------------------------------- what a file holds
def _block_count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    start = len(prefix)
    return len({k[start:].split(".")[0] for k in state if k.startswith(prefix)})


def _open_clip_name(width: int, layers: int, patch: int, grid: int, embed_dim: Optional[int]) -> str:
    """The shortest open_clip model config name with these visual shapes ("" if none)."""
    import open_clip
    for name in sorted(open_clip.list_models(), key=lambda n: (len(n), n)):
        model_cfg = open_clip.get_model_config(name) or {}
        vision = model_cfg.get("vision_cfg", {})
        image, patch_size = vision.get("image_size", 224), vision.get("patch_size", 16)
        if vision.get("timm_model_name") or not isinstance(vision.get("layers", 12), int) \
                or not isinstance(image, int):
            continue
        if (vision.get("width", 768), vision.get("layers", 12), patch_size, image // patch_size,
                model_cfg.get("embed_dim")) == (width, layers, patch, grid, embed_dim):
            return name
    return ""


def _clip_shapes(state: Mapping[str, torch.Tensor]) -> Tuple[str, str]:
    """(open_clip config name or "", description) of the architecture a CLIP or visual tower's shapes hold."""
    prefix = "visual." if "visual.conv1.weight" in state else ""
    conv = state.get(prefix + "conv1.weight")
    if conv is None or conv.dim() != 4:
        resnet = any(k.startswith(("visual.layer1.", "layer1.")) for k in state)
        return "", "a ResNet visual tower" if resnet else "no CLIP ViT visual tower"
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    layers = _block_count(state, prefix + "transformer.resblocks.")
    pos, proj = state.get(prefix + "positional_embedding"), state.get(prefix + "proj")
    rows = int(pos.shape[0]) - 1 if pos is not None and pos.dim() == 2 else 0
    side = math.isqrt(rows)
    grid = f"{side}x{side} position grid" if side * side == rows else f"{rows} grid positions"
    embed_dim = int(proj.shape[1]) if proj is not None and proj.dim() == 2 else None
    text = "text." if "text.ln_final.weight" in state else ""
    out = f"visual width {width}, {layers} blocks, patch {patch}, {grid}, joint width {embed_dim}"
    if text + "ln_final.weight" in state:
        out += (f"; text width {int(state[text + 'ln_final.weight'].shape[0])}, "
                f"{_block_count(state, text + 'transformer.resblocks.')} blocks")
    return (_open_clip_name(width, layers, patch, side, embed_dim) if side * side == rows else ""), out


def describe_clip_state(state: Mapping[str, torch.Tensor]) -> str:
    """The architecture a CLIP (or visual-tower) state dict's shapes describe, e.g. "shapes of open_clip 'ViT-B-16':
    visual width 768, 12 blocks, patch 16, 14x14 position grid, joint width 512; text width 512, 12 blocks"."""
    return _format_shapes(*_clip_shapes(state))


def _format_shapes(name: str, shapes: str) -> str:
    return f"shapes of open_clip '{name}': {shapes}" if name else shapes


def count_parameters(state: Mapping[str, torch.Tensor]) -> int:
    """Number of weights in a state dict, leaving out OpenAI's metadata and attention-mask attributes."""
    return sum(v.numel() for k, v in state.items() if k not in _OPENAI_EXTRA_KEYS and not k.endswith("attn_mask"))


# ----------------------------------------------------------------------------- loading into models
def _load_checked(model: nn.Module, state: Dict[str, torch.Tensor], path: str, arch: str,
                  config_key: str, keep_only_model_keys: bool, hint: str = "") -> Dict[str, torch.Tensor]:
    """``load_state_dict(strict=True)`` after a readable check of keys and shapes; returns what was loaded."""
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
                         + "; ".join(parts) + hint)
    model.load_state_dict(state, strict=True)
    return state


def _read_clip_state(path: str, config_key: str, allow_torchscript_loader: bool
                     ) -> Tuple[WeightsFile, Dict[str, torch.Tensor], str, str]:
    """The file; its state without OpenAI's metadata keys; the architecture it holds (for the log) and the hint a
    key or shape mismatch error gets."""
    weights = read_weights_file(path, config_key, allow_torchscript_loader)
    state = {k: v for k, v in weights.state.items() if k not in _OPENAI_EXTRA_KEYS}
    name, shapes = _clip_shapes(weights.state)
    if weights.release:
        name, held = weights.release.arch, f"'{weights.release.arch}' ({shapes})"
        what = f"is {weights.release.name} (sha256 checked)"
    else:
        held = _format_shapes(name, shapes)
        what = f"holds {held}"
    hint = f". The file {what}" + (f": set MODEL.VIT.ARCH '{name}' with MODEL.VIT.WIDTH/LAYERS/HEADS/EMBED_DIM/"
                                   f"TEXT_* 0" if name else "")
    return weights, state, held, hint


def _quick_gelu_note(model: nn.Module, weights: WeightsFile) -> str:
    """Warn when MODEL.VIT.QUICK_GELU contradicts the activation the file implies; the log's note on it."""
    from open_clip.transformer import QuickGELU
    uses_quick_gelu = any(isinstance(m, QuickGELU) for m in model.modules())
    if weights.quick_gelu is None:
        return f"the file does not imply a MODEL.VIT.QUICK_GELU (config: {uses_quick_gelu})"
    if weights.quick_gelu != uses_quick_gelu:
        logger.warning("'%s' %s, but the model uses %s (MODEL.VIT.QUICK_GELU %s): set MODEL.VIT.QUICK_GELU %s",
                       weights.path, weights.quick_gelu_reason, "GELU" if weights.quick_gelu else "QuickGELU",
                       uses_quick_gelu, weights.quick_gelu)
    return f"implies MODEL.VIT.QUICK_GELU {weights.quick_gelu} (config: {uses_quick_gelu})"


def _log_loaded(weights: WeightsFile, arch: str, loaded: Mapping[str, torch.Tensor], target: str, gelu_note: str):
    logger.info("Loaded %s from '%s'. Source: %s. Architecture: %s. Parameters: %s in the file, %s loaded. %s.",
                target, weights.path, weights.source, arch, f"{count_parameters(weights.state):,}",
                f"{count_parameters(loaded):,}", gelu_note[0].upper() + gelu_note[1:])


def load_clip_weights(clip_model: nn.Module, path: str, arch: str = "", config_key: str = WEIGHTS_KEY,
                      source_grid: Optional[Tuple[int, int]] = None, allow_torchscript_loader: bool = False):
    """Load an OpenAI or open_clip CLIP checkpoint into an open_clip ``CLIP`` model (visual + text).

    The visual position embedding is resized to ``clip_model.visual.grid_size`` from the file's grid
    (``source_grid``, or inferred: :func:`infer_source_grid`). Any key, shape or architecture mismatch raises ValueError naming the
    file, the first mismatching keys and ``arch``. ``allow_torchscript_loader``: :func:`read_weights_file`.
    """
    weights, state, arch_held, hint = _read_clip_state(path, config_key, allow_torchscript_loader)
    own = clip_model.state_dict()
    if not any(k.startswith("text.") for k in own) and any(k.startswith("text.") for k in state):
        # open_clip's CustomTextCLIP layout, loaded into the plain CLIP class
        state = {(k[len("text."):] if k.startswith("text.") else k): v for k, v in state.items()}
    if "logit_scale" in state and "logit_scale" in own and state["logit_scale"].numel() == 1:
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)  # scalar vs (1,) across versions
    pos_key = "visual.positional_embedding"
    if pos_key in state and pos_key in own:
        state[pos_key] = _fit_position_rows(state[pos_key], tuple(clip_model.visual.grid_size), weights.path,
                                            source_grid)
    gelu_note = _quick_gelu_note(clip_model.visual, weights)
    loaded = _load_checked(clip_model, state, weights.path, arch or type(clip_model).__name__, config_key,
                           keep_only_model_keys=weights.is_archive, hint=hint)
    _log_loaded(weights, arch_held, loaded, "CLIP weights (visual + text)", gelu_note)


def load_clip_visual_weights(visual: nn.Module, path: str, arch: str = "", config_key: str = WEIGHTS_KEY,
                             source_grid: Optional[Tuple[int, int]] = None, allow_torchscript_loader: bool = False):
    """Load the ``visual.*`` part of a CLIP checkpoint (or a file of the tower's own keys) into an
    open_clip ``VisionTransformer``; the text part of the file is ignored. Same resizing and errors as
    ``load_clip_weights``."""
    weights, state, arch_held, hint = _read_clip_state(path, config_key, allow_torchscript_loader)
    if any(k.startswith("visual.") for k in state):
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    elif "conv1.weight" not in state:
        raise ValueError(f"{config_key}: weights file '{weights.path}' holds no CLIP visual tower (no 'visual.*' "
                         f"nor 'conv1.weight' keys; first keys {list(state)[:_MAX_LISTED]}); expected {arch}")
    if "positional_embedding" in state:
        state["positional_embedding"] = _fit_position_rows(state["positional_embedding"],
                                                           tuple(visual.grid_size), weights.path, source_grid)
    gelu_note = _quick_gelu_note(visual, weights)
    loaded = _load_checked(visual, state, weights.path, arch or type(visual).__name__, config_key,
                           keep_only_model_keys=weights.is_archive, hint=hint)
    _log_loaded(weights, arch_held, loaded, "CLIP visual weights", gelu_note)


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
