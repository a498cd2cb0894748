"""Crash-safe writing and trusted reading of checkpoints and stage artifacts."""
import os
import pickle
import tempfile

import numpy as np
import torch


def _default_file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, mode, suffix, write):
    """``write(file)`` into a temporary file in ``path``'s folder, fsync, then rename over ``path``: a kill never
    leaves a half-written file under ``path``. The file gets the permissions of a normally created one (the
    temporary file is 0600, which would keep checkpoints from the people they are shared with)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_torch_save(obj, path):
    """``torch.save`` through a temporary file and a rename."""
    atomic_write(path, "wb", ".pth", lambda f: torch.save(obj, f))


def atomic_write_text(text, path):
    """Write ``text`` through a temporary file and a rename (fast-reid's ``last_checkpoint`` tag: a kill while it is
    written must not leave an empty tag, which would make ``--resume`` start from scratch)."""
    atomic_write(path, "w", ".txt", lambda f: f.write(text))


def plain_python(value):
    """numpy scalars -> Python numbers, recursively, so ``torch.load(weights_only=True)`` accepts them."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: plain_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_python(v) for v in value)
    return value


def numpy_safe_globals():
    """numpy types that old fast-reid checkpoints pickle (``metric`` is a numpy float); plain data,
    they run no code when unpickled."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray.scalar, np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)),
            type(np.dtype(np.int64))]


class UntrustedCheckpointError(RuntimeError):
    pass


class CheckpointReadError(RuntimeError):
    """The file is not a readable PyTorch checkpoint: empty, truncated, corrupt, or another kind of file."""


_EXPECTED = ("Expected a file written by torch.save (a zip archive, e.g. model_final.pth from tools/train_net.py, "
             "or a legacy torch.save pickle)")


def _looks_like(head):
    """What the first bytes of a file say it is (None when nothing recognisable)."""
    if not head:
        return "an empty file"
    if head.startswith(b"PK"):
        return "a zip archive (torch.save's format) that cannot be read: truncated or corrupted (an interrupted " \
               "copy or download?)"
    if head.startswith(b"\x93NUMPY"):
        return "a numpy .npy array"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the file itself (run `git lfs pull`)"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a failed download?)"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 28:
        return "a safetensors file (read by the CLIP-weights loader, MODEL.VIT.WEIGHTS, not by torch.load)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        return f"a text file (starting {first!r})"
    return None


_ADVICE = ("weights_only", "Please file an issue", "Check the documentation")


def _torch_reason(error):
    """torch's reason in a few words, without its advice (retrying with weights_only=False runs the file's code)."""
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and not any(advice in line for advice in _ADVICE)]
    reason = (lines[0] if lines else "").replace("WeightsUnpickler error:", "").strip().split(". ")[0]
    return f"{type(error).__name__}: {reason[:160]}" if reason else type(error).__name__


def _unreadable(path, what, error):
    """CheckpointReadError naming the file, its size, what it looks like and what was expected."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(64)
    kind = _looks_like(head) or "not a PyTorch checkpoint, or a truncated / corrupted one"
    return CheckpointReadError(f"{what} '{path}' ({size} bytes) cannot be read: it is {kind}. {_EXPECTED}. "
                               f"(torch.load: {_torch_reason(error)})")


def trusted_torch_load(path, what="checkpoint"):
    """``torch.load(weights_only=True)`` on CPU, with numpy scalar types allowed (stock fast-reid
    pickles its ``metric`` as one). A pickle that would run code is refused with a clear message; a file that is
    no checkpoint at all (empty, truncated, text, ...) raises :class:`CheckpointReadError` naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _refusal_reason(e)
        if reason is None:
            raise _unreadable(path, what, e) from None
        raise UntrustedCheckpointError(
            f"Refusing to load {what} '{path}': it holds Python objects other than tensors and plain "
            f"data, and unpickling them could run code. Re-save it as a state dict. ({reason})") from None
    except (RuntimeError, EOFError, KeyError, ValueError, IndexError, OSError, UnicodeDecodeError) as e:
        raise _unreadable(path, what, e) from None


def _refusal_reason(error):
    """The refused global named in torch's message ("Unsupported global: GLOBAL x.y was not an allowed global by
    default", "Trying to load unsupported GLOBAL posix.system ..."), without the advice that follows it; None when
    the unpickler failed on something else (a file that is no pickle: "Unsupported operand", "invalid load key")."""
    for line in str(error).splitlines():
        if "GLOBAL" in line or "Unsupported global" in line or "Unsupported class" in line:
            reason = line.replace("WeightsUnpickler error:", "").strip()
            return reason.split(". Please")[0].split(" Please")[0].strip().rstrip(".")
    return None


def check_fastreid_checkpoint(data, path):
    """A loaded MODEL.WEIGHTS file as fast-reid's Checkpointer needs it: ``{"model": state dict, ...}``. A plain
    state dict (name -> tensor) is wrapped; anything else raises CheckpointReadError saying what the file holds."""
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        return data
    if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return {"model": data}
    if isinstance(data, dict):
        keys = ", ".join(map(str, list(data)[:8])) + (", ..." if len(data) > 8 else "")
        holds = f"a dict with keys [{keys}]"
    else:
        holds = f"a {type(data).__name__}"
    raise CheckpointReadError(
        f"MODEL.WEIGHTS '{path}' ({os.path.getsize(path)} bytes) is a PyTorch file but not a model checkpoint: it "
        f"holds {holds}. Expected fast-reid's checkpoint {{'model': state dict, ...}} (model_final.pth of "
        f"tools/train_net.py) or a state dict of the model; CLIP weights go in MODEL.VIT.WEIGHTS.")
