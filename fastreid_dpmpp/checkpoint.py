"""Crash-safe writing and trusted reading of checkpoints and stage artifacts."""
import os
import pickle
import tempfile

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


class UntrustedCheckpointError(RuntimeError):
    pass


def trusted_torch_load(path, what="checkpoint"):
    """``torch.load(weights_only=True)`` on CPU, with numpy scalar types allowed (stock fast-reid
    pickles its ``metric`` as one). A pickle that would run code is refused with a clear message."""
    from fastreid_dpmpp.compat import numpy_safe_globals
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UntrustedCheckpointError(
            f"Refusing to load {what} '{path}': it holds Python objects other than tensors and plain "
            f"data, and unpickling them could run code. Re-save it as a state dict. ({_refusal_reason(e)})") from e


def _refusal_reason(error):
    """torch's one line naming the refused global (its full message goes on to suggest weights_only=False)."""
    lines = str(error).splitlines() or [""]
    return next((line.strip() for line in lines if "Unsupported global" in line), lines[0])
