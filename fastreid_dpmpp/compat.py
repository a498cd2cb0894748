"""Fixes for fast-reid 1.4.0 on Python 3.11 / torch 2.x / CPU, applied from the plugin.

Nothing in site-packages is edited: each fix is one small function that patches a name at
run time, and each has a test (tests/test_compat.py) that fails without it.

Import-time fixes must run before ``fastreid.data`` / ``fastreid.evaluation`` / ``fastreid.engine``
are imported, so ``fastreid_dpmpp/__init__.py`` calls :func:`apply_import_fixes` first.
"""
import collections
import collections.abc
import functools
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import types
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

logger = logging.getLogger("fastreid.dpmpp.compat")

_APPLIED = set()


def _once(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if fn.__name__ in _APPLIED:
            return
        fn(*args, **kwargs)
        _APPLIED.add(fn.__name__)
    return wrapper


# --------------------------------------------------------------------------- import-time fixes
@_once
def fix_collections_mapping():
    """``from collections import Mapping`` (fastreid/data/build.py, evaluation/testing.py) was
    removed in Python 3.10; the ABCs live in ``collections.abc``."""
    for name in ("Mapping", "MutableMapping", "Sequence", "Iterable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


@_once
def fix_torch_six():
    """``from torch._six import string_classes`` (fastreid/data/build.py): ``torch._six`` was
    removed in torch 2.0. A stand-in module provides the names fast-reid uses."""
    if "torch._six" in sys.modules:
        return
    try:
        importlib.import_module("torch._six")
        return
    except ImportError:
        pass
    six = types.ModuleType("torch._six")
    six.string_classes = (str, bytes)
    six.int_classes = int
    six.inf = float("inf")
    sys.modules["torch._six"] = six
    torch._six = six


def apply_import_fixes():
    fix_collections_mapping()
    fix_torch_six()


# --------------------------------------------------------------------------- run-time fixes
class CPUDataLoader(torch.utils.data.DataLoader):
    """Drop-in for ``fastreid.data.data_utils.DataLoaderX`` that does not need CUDA.

    DataLoaderX creates a ``torch.cuda.Stream`` in ``__init__`` and moves batches to the GPU in a
    background thread; here the batch stays where the model's ``preprocess_image`` moves it."""

    def __init__(self, local_rank=0, **kwargs):
        kwargs["pin_memory"] = kwargs.get("pin_memory", False) and torch.cuda.is_available()
        super().__init__(**kwargs)
        self.local_rank = local_rank


@_once
def fix_cuda_only_dataloader(force=False):
    """Replace ``DataLoaderX`` in ``fastreid.data.build`` when CUDA is unavailable (or forced)."""
    if torch.cuda.is_available() and not force:
        return
    import fastreid.data.build as data_build
    data_build.DataLoaderX = CPUDataLoader


def _rank_cylib_dir():
    import fastreid.evaluation.rank_cylib as rank_cylib
    return os.path.dirname(os.path.abspath(rank_cylib.__file__))


def _ranking_cache_dir():
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-np{np.__version__.split('.')[0]}"
    base = os.environ.get("FASTREID_DPMPP_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fastreid_dpmpp"))
    return os.path.join(base, "rank_cylib-" + tag)


def _import_extension(name, folder):
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    path = os.path.join(folder, name + suffix)
    if not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_BUILD_SCRIPT = """
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
exts = [Extension(n, [n + '.pyx'], include_dirs=[np.get_include()]) for n in ('rank_cy', 'roc_cy')]
setup(name='fastreid_rank_cylib', ext_modules=cythonize(exts, quiet=True, language_level=3),
      script_args=['build_ext', '--inplace'])
"""


def build_compiled_ranking(folder=None):
    """Compile fast-reid's Cython ranking into a cache folder owned by the plugin (not site-packages)
    with *this* interpreter. Returns the folder, or None if the build failed."""
    folder = folder or _ranking_cache_dir()
    if _import_extension("rank_cy", folder) is not None and _import_extension("roc_cy", folder) is not None:
        return folder
    os.makedirs(folder, exist_ok=True)
    for name in ("rank_cy.pyx", "roc_cy.pyx"):
        shutil.copy(os.path.join(_rank_cylib_dir(), name), os.path.join(folder, name))
    logger.info("Compiling fast-reid's Cython ranking into %s", folder)
    proc = subprocess.run([sys.executable, "-c", _BUILD_SCRIPT], cwd=folder, capture_output=True, text=True)
    if proc.returncode != 0:
        logger.warning("Cython ranking did not build (%s); using the Python ranking.", proc.stderr.strip()[-500:])
        return None
    return folder


def use_compiled_ranking(folder):
    """Point fast-reid's rank / roc modules at the compiled functions found in ``folder``."""
    import fastreid.evaluation.rank as rank
    import fastreid.evaluation.roc as roc
    rank_cy = _import_extension("rank_cy", folder)
    roc_cy = _import_extension("roc_cy", folder)
    if rank_cy is None or roc_cy is None:
        return False
    rank.evaluate_cy, rank.IS_CYTHON_AVAI = rank_cy.evaluate_cy, True
    roc.evaluate_roc_cy, roc.IS_CYTHON_AVAI = roc_cy.evaluate_roc_cy, True
    return True


def _compile_dependencies_or_fall_back(self):
    from fastreid.utils import comm
    import fastreid.evaluation.rank as rank
    if comm.is_main_process() and not rank.IS_CYTHON_AVAI and os.environ.get("FASTREID_DPMPP_NO_CYTHON") != "1":
        folder = build_compiled_ranking()
        if folder is None or not use_compiled_ranking(folder):
            warnings.warn("fast-reid's compiled ranking is unavailable; evaluating with the Python ranking.")
    comm.synchronize()


@_once
def fix_cython_self_compile():
    """``ReidEvaluator._compile_dependencies`` runs ``make`` with the ``python3`` found on PATH and calls
    ``sys.exit(1)`` if it fails. Instead: build with this interpreter into a plugin cache folder; if
    that fails, warn and let fast-reid use its Python ranking."""
    # fast-reid warns at import that the compiled ranking is missing; it is built (or reused) below instead.
    warnings.filterwarnings("ignore", message=r"Cython (rank|roc) evaluation", category=UserWarning)
    from fastreid.evaluation.reid_evaluation import ReidEvaluator
    ReidEvaluator._compile_dependencies = _compile_dependencies_or_fall_back
    if os.path.isdir(_ranking_cache_dir()):
        use_compiled_ranking(_ranking_cache_dir())


def faiss_gpu_available():
    """True when the installed faiss is a GPU build and a CUDA device is visible."""
    try:
        import faiss
    except ImportError:
        return False
    return (hasattr(faiss, "StandardGpuResources") and torch.cuda.is_available()
            and faiss.get_num_gpus() > 0)


def jaccard_search_option():
    """fast-reid's k-NN back end for re-ranking: 0 = GPU brute force, 3 = CPU ``IndexFlatL2``."""
    return 0 if faiss_gpu_available() else 3


@_once
def fix_gpu_only_reranking():
    """``build_dist(metric="jaccard")`` hard-codes ``search_option=0`` (GPU FAISS on CUDA tensors).
    Pick the search back end at run time so re-ranking runs with faiss-cpu or faiss-gpu."""
    import fastreid.utils.compute_dist as compute_dist
    original = compute_dist.compute_jaccard_distance

    @functools.wraps(original)
    def compute_jaccard_distance(features, k1=20, k2=6, search_option=0, fp16=False):
        option = jaccard_search_option() if search_option == 0 else search_option
        if option == 3:
            features = features.cpu()
        return original(features, k1=k1, k2=k2, search_option=option, fp16=fp16)

    compute_jaccard_distance.__wrapped_original__ = original
    compute_dist.compute_jaccard_distance = compute_jaccard_distance


@_once
def fix_best_checkpoint_reload():
    """``PeriodicCheckpointer`` stores ``metric`` (a numpy float) in ``model_best.pth``; torch >= 2.6 loads
    with ``weights_only=True`` and refuses numpy scalars. Checkpoints are now written with plain Python
    numbers (atomically, see :func:`fastreid_dpmpp.checkpoint.atomic_torch_save`), and files written by
    stock fast-reid load with numpy's scalar types allow-listed. A file that is no checkpoint (text, truncated,
    a tensor, a dict without "model") is refused naming the file, its size and what was expected, instead of
    fast-reid's ``KeyError: 'model'`` or torch's advice to load it with ``weights_only=False``."""
    from fastreid.utils.checkpoint import Checkpointer
    from fastreid_dpmpp.checkpoint import (atomic_torch_save, check_fastreid_checkpoint, plain_python,
                                           trusted_torch_load)

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(plain_python(kwargs))
        basename = "{}.pth".format(name)
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to {}".format(save_file))
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def _load_file(self, f):
        return check_fastreid_checkpoint(trusted_torch_load(f), f)

    Checkpointer.save = save
    Checkpointer._load_file = _load_file


def _keep_grad_buffers(optimizer):
    def zero_grad(set_to_none=False):
        torch.optim.Optimizer.zero_grad(optimizer, set_to_none=False)
    optimizer.zero_grad = zero_grad
    return optimizer


@_once
def fix_contiguous_params_zero_grad():
    """fast-reid's ``build_optimizer`` packs the parameters into one contiguous buffer (``ContiguousParams``):
    each ``p.grad`` is a view of a shared gradient buffer that the optimizer steps. Since torch 2.0,
    ``optimizer.zero_grad()`` sets gradients to None, so backward writes fresh tensors outside the buffer and
    the optimizer steps zeros: the model silently never trains. Zero the buffers in place instead."""
    import fastreid.engine.defaults as engine_defaults
    import fastreid.solver.build as solver_build
    original = solver_build.build_optimizer

    @functools.wraps(original)
    def build_optimizer(cfg, model, contiguous=True):
        optimizer, param_wrapper = original(cfg, model, contiguous)
        return (_keep_grad_buffers(optimizer) if contiguous else optimizer), param_wrapper

    build_optimizer.__wrapped_original__ = original
    for module in (solver_build, engine_defaults):
        module.build_optimizer = build_optimizer
    import fastreid.solver as solver
    solver.build_optimizer = build_optimizer


@_once
def fix_metric_printer_division_by_zero():
    """``CommonMetricPrinter.write`` estimates the ETA from the last write when no iteration time is recorded
    yet (the first iterations, e.g. right after ``--resume``) and divides by zero when it writes twice at the
    same iteration (end of epoch, then end of training). Forget the last write in that case."""
    from fastreid.utils.events import CommonMetricPrinter, get_event_storage
    original = CommonMetricPrinter.write

    @functools.wraps(original)
    def write(self):
        if self._last_write is not None and self._last_write[0] == get_event_storage().iter:
            self._last_write = None
        original(self)

    write.__wrapped_original__ = original
    CommonMetricPrinter.write = write


# Transparent pixels are laid over the pixel mean of the configs (CLIP's / ImageNet's, ~(123, 117, 104) in 0-255):
# after normalisation they are ~0, the least informative input.
TRANSPARENT_BACKGROUND = (123, 117, 104)


def _to_8bit_gray(image):
    """16-bit / 32-bit integer or float grayscale -> 8-bit "L" (16-bit values scaled by 1/257, floats in 0..1 by
    255); Pillow's own convert clips such images to white."""
    a = np.asarray(image, dtype=np.float64)
    peak = float(np.nanmax(a)) if a.size else 0.0
    if image.mode.startswith("I;16") or (image.mode == "I" and 255 < peak <= 65535):
        a = a / 257.0
    elif image.mode == "I" and peak > 65535:
        a = a * (255.0 / peak)
    elif image.mode == "F" and peak <= 1.0:
        a = a * 255.0
    return Image.fromarray(np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8), "L")


def to_rgb(image):
    """Any PIL image -> 8-bit RGB as a person-ReID model reads it: grayscale repeated, palette colours kept,
    transparency laid over :data:`TRANSPARENT_BACKGROUND`, 16-bit / float images scaled to 8 bits, CMYK converted."""
    if image.mode == "RGB":
        return image
    if image.mode == "PA" or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit_gray(image)
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, TRANSPARENT_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _read_rgb_image(original, file_name, format=None):
    """fast-reid's ``read_image`` for the RGB reads (``format`` None, as CommDataset calls it, or "RGB"); other
    formats are left to it. Same EXIF orientation handling."""
    if format not in (None, "RGB"):
        return original(file_name, format)
    with open(file_name, "rb") as f:
        image = Image.open(f)
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # noqa: BLE001  (fast-reid's work-around of Pillow issue 3973 ignores it the same way)
            pass
        image.load()
        return to_rgb(image)


@_once
def fix_non_rgb_images():
    """``read_image(path)`` (format None, as fast-reid's CommDataset calls it) returns RGBA images with 4 channels
    (the batch then cannot be stacked, or the 3-channel patch convolution fails), "LA" with 2, palette PNGs as their
    palette *indices* repeated as gray, and 16-bit images unscaled. Read every image as 8-bit RGB (:func:`to_rgb`).
    Applied before :func:`fix_unnamed_image_read_errors`, which wraps the result."""
    _wrap_read_image(_read_rgb_image)


def _wrap_read_image(body):
    """Replace fast-reid's ``read_image`` (in ``data_utils`` and in ``common``, where CommDataset calls it) by
    ``body(current read_image, file_name, format)``."""
    import fastreid.data.common as common
    import fastreid.data.data_utils as data_utils
    original = data_utils.read_image

    @functools.wraps(original)
    def read_image(file_name, format=None):
        return body(original, file_name, format)

    read_image.__wrapped_original__ = original
    data_utils.read_image = read_image
    common.read_image = read_image


class ImageReadError(OSError):
    """An image of the dataset cannot be decoded (corrupt, truncated, not an image)."""


def _read_image_naming_the_file(original, file_name, format=None):
    try:
        return original(file_name, format)
    except FileNotFoundError as e:
        raise ImageReadError(f"image file '{file_name}' does not exist (listed by the dataset, removed since?)") from e
    except (OSError, ValueError, SyntaxError) as e:  # PIL's decoders raise these three
        raise ImageReadError(
            f"cannot read image '{file_name}': {type(e).__name__}: {e}. Expected a complete JPEG/PNG/TIFF file; "
            f"the file is corrupt or truncated: replace it or remove it from the dataset folder.") from e


@_once
def fix_unnamed_image_read_errors():
    """``read_image`` lets PIL's errors through: a truncated JPEG fails with "image file is truncated (140 bytes not
    processed)", naming no file, raised from inside a DataLoader worker. Re-raise as :class:`ImageReadError` naming
    the file (``CommDataset.__getitem__`` calls it through ``fastreid.data.common``)."""
    _wrap_read_image(_read_image_naming_the_file)


class QueryIdentitiesNotInGalleryError(ValueError, AssertionError):
    """No query has a true match in the gallery from another camera (fast-reid asserts with a bare message).
    An AssertionError too, so code catching fast-reid's assertion keeps working."""


def _unmatched_queries(q_pids, g_pids, q_camids, g_camids):
    """(ids absent from the gallery, ids whose gallery images all share the query's camera, per-query "no match"
    flags). Counts, not a (num_query, num_gallery) matrix: this runs once per evaluation on full benchmarks."""
    g_pids, g_camids = np.asarray(g_pids).tolist(), np.asarray(g_camids).tolist()
    q_pids, q_camids = np.asarray(q_pids).tolist(), np.asarray(q_camids).tolist()
    per_pid = collections.Counter(g_pids)
    per_pid_and_camera = collections.Counter(zip(g_pids, g_camids))
    dropped = np.array([per_pid[p] - per_pid_and_camera[(p, c)] == 0 for p, c in zip(q_pids, q_camids)], dtype=bool)
    absent = sorted({p for p in q_pids if per_pid[p] == 0})
    same_camera_only = sorted({p for p, d in zip(q_pids, dropped) if d and per_pid[p] > 0})
    return absent, same_camera_only, dropped


def _listed(ids, limit=20):
    shown = ", ".join(str(i) for i in ids[:limit])
    return f"[{shown}{', ...' if len(ids) > limit else ''}] ({len(ids)} id{'' if len(ids) == 1 else 's'})"


def check_query_identities_in_gallery(q_pids, g_pids, q_camids, g_camids):
    """Warn naming the query identities that cannot be matched (no gallery image, or only from the query's own
    camera: fast-reid drops those queries from CMC / mAP); raise QueryIdentitiesNotInGalleryError if none can."""
    absent, same_camera_only, dropped = _unmatched_queries(q_pids, g_pids, q_camids, g_camids)
    if not dropped.any():
        return
    detail = []
    if absent:
        detail.append(f"query identities absent from the gallery: {_listed(absent)}")
    if same_camera_only:
        detail.append(f"query identities seen by the gallery only from the query's own camera (removed by the "
                      f"same-camera filter): {_listed(same_camera_only)}")
    detail = "; ".join(detail)
    if dropped.all():
        raise QueryIdentitiesNotInGalleryError(
            f"Evaluation impossible: none of the {len(dropped)} query images has a true match in the gallery from "
            f"another camera. {detail}. Expected every query identity to appear in the gallery (check the "
            f"dataset's query/ and gallery folders and the camera ids in the file names).")
    logger.warning("%d of %d query images have no true match in the gallery and are left out of CMC / mAP: %s",
                   int(dropped.sum()), len(dropped), detail)


@_once
def fix_query_identities_not_in_gallery():
    """``evaluate_rank`` fails with a bare "Error: all query identities do not appear in gallery" assertion when no
    query can be matched, and silently drops queries with no match otherwise. Name the identities: a clear error in
    the first case, a warning in the second."""
    import fastreid.evaluation.rank as rank
    original = rank.evaluate_rank

    @functools.wraps(original)
    def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, *args, **kwargs):
        check_query_identities_in_gallery(q_pids, g_pids, q_camids, g_camids)
        return original(distmat, q_pids, g_pids, q_camids, g_camids, *args, **kwargs)

    evaluate_rank.__wrapped_original__ = original
    rank.evaluate_rank = evaluate_rank


@_once
def fix_non_atomic_last_checkpoint_tag():
    """``Checkpointer.tag_last_checkpoint`` rewrites ``last_checkpoint`` in place: a kill at that moment leaves it
    empty or cut, and ``--resume`` then loads nothing (or a wrong name). Write it atomically (temp file + rename)."""
    from fastreid.utils.checkpoint import Checkpointer
    from fastreid_dpmpp.checkpoint import atomic_write_text

    def tag_last_checkpoint(self, last_filename_basename):
        atomic_write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"))

    Checkpointer.tag_last_checkpoint = tag_last_checkpoint


def distributed_backend():
    """fast-reid's backend (NCCL) where CUDA is available, gloo on CPU-only machines."""
    return "NCCL" if torch.cuda.is_available() else "gloo"


def _distributed_worker_any_backend(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url,
                                    args):
    """fast-reid's ``_distributed_worker`` (fastreid/engine/launch.py) with the backend chosen by
    :func:`distributed_backend`; CUDA devices are checked and selected only with NCCL. On CPU each process gets an
    equal share of the cores (N processes x all cores would oversubscribe them)."""
    import torch.distributed as dist
    from fastreid.utils import comm
    backend = distributed_backend()
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    try:
        dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size, rank=global_rank)
    except Exception:
        logger.error("Process group URL: %s (backend %s)", dist_url, backend)
        raise
    comm.synchronize()
    if backend == "NCCL":
        if num_gpus_per_machine > torch.cuda.device_count():
            raise ValueError(f"--num-gpus {num_gpus_per_machine} but only {torch.cuda.device_count()} CUDA devices "
                             f"are visible")
        torch.cuda.set_device(local_rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_gpus_per_machine))
    assert comm._LOCAL_PROCESS_GROUP is None
    for machine in range(world_size // num_gpus_per_machine):
        group = dist.new_group(list(range(machine * num_gpus_per_machine, (machine + 1) * num_gpus_per_machine)))
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    main_func(*args)


@_once
def fix_nccl_only_launch():
    """``launch`` spawns workers that assert CUDA and hard-code the NCCL backend: ``--num-gpus N`` cannot run on
    CPU. Swap the worker for :func:`_distributed_worker_any_backend` (gloo on CPU, NCCL on GPU, as before). The
    worker is defined here, so spawned processes unpickle it by importing this plugin (which applies the fixes)."""
    import fastreid.engine  # noqa: F401
    # the module, not ``fastreid.engine.launch``: that attribute is the ``launch`` function (star import)
    sys.modules["fastreid.engine.launch"]._distributed_worker = _distributed_worker_any_backend


def _cpu_aware_ddp_class():
    from torch.nn.parallel import DistributedDataParallel

    class CPUAwareDistributedDataParallel(DistributedDataParallel):
        """DDP that drops ``device_ids`` for a module on CPU (torch refuses device ids for CPU modules)."""

        def __init__(self, module, device_ids=None, *args, **kwargs):
            on_cpu = all(p.device.type == "cpu" for p in module.parameters())
            super().__init__(module, None if on_cpu else device_ids, *args, **kwargs)

    return CPUAwareDistributedDataParallel


@_once
def fix_cpu_ddp_device_ids():
    """``DefaultTrainer`` wraps the model in ``DistributedDataParallel(model, device_ids=[local_rank])``, which
    torch refuses for a CPU model. Use a DDP subclass that passes ``device_ids=None`` on CPU (unchanged on GPU)."""
    import fastreid.engine.defaults as engine_defaults
    engine_defaults.DistributedDataParallel = _cpu_aware_ddp_class()


@_once
def fix_eval_after_failed_training():
    """``EvalHook.after_train`` evaluates when the last epoch is not an evaluation epoch; its guard against "a failed
    training" misses a failure *in* the last epoch, so after a crash there (e.g. a NaN loss) it runs a whole test-set
    evaluation, and an error in it replaces the original one. Skip the final evaluation while an exception raised
    during training is propagating (``TrainerBase.train`` calls ``after_train`` from ``finally``)."""
    from fastreid.engine.hooks import EvalHook
    original_before, original_after = EvalHook.before_train, EvalHook.after_train

    @functools.wraps(original_before)
    def before_train(self):
        self._exception_before_train = sys.exc_info()[1]  # train() may itself be called from an except block
        original_before(self)

    @functools.wraps(original_after)
    def after_train(self):
        failure = sys.exc_info()[1]
        if failure is not None and failure is not getattr(self, "_exception_before_train", None):
            logger.warning("Training failed (%s): skipping the final evaluation.", type(failure).__name__)
            del self._func  # what the original does after evaluating
            return
        original_after(self)

    after_train.__wrapped_original__ = original_after
    EvalHook.before_train, EvalHook.after_train = before_train, after_train


_TAIL_BLOCK = 1 << 16


def _start_of_trailing_fragment(handle, size):
    """Offset just after the file's last newline (0 if it has none), reading backwards one block at a time so
    that a long metrics file is not read whole."""
    end = size
    while end > 0:
        start = max(0, end - _TAIL_BLOCK)
        handle.seek(start)
        newline = handle.read(end - start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def _is_json_object(fragment):
    try:
        return isinstance(json.loads(fragment.decode("utf-8")), dict)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False


def repair_partial_json_lines(path):
    """Make a JSON-lines file (fast-reid's ``metrics.json``) end on a complete line: a trailing fragment without its
    newline (a writer killed mid-line) is cut off, or, when it is a whole JSON object that only lacks the newline,
    completed. Complete lines are not touched. Returns the number of bytes dropped (0 when none)."""
    if not os.path.isfile(path):
        return 0
    with open(path, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        start = _start_of_trailing_fragment(handle, size)
        if start == size:
            return 0
        handle.seek(start)
        fragment = handle.read()
        if _is_json_object(fragment):
            handle.write(b"\n")
            logger.warning("%s ended with a complete record but no newline (the writer was stopped): newline added",
                           path)
            return 0
        handle.truncate(start)
        handle.flush()
        os.fsync(handle.fileno())
    logger.warning("%s ended with a partial line (the writer was stopped mid-write): dropped its last %d bytes, "
                   "%r; the %d bytes of complete lines before it are kept", path, size - start,
                   fragment[:80].decode("utf-8", "replace") + ("..." if len(fragment) > 80 else ""), start)
    return size - start


@_once
def fix_partial_metrics_json():
    """``JSONWriter`` appends one JSON object per line to ``metrics.json``; a process killed while writing (SIGKILL,
    out of memory, power loss) leaves a half line, which every reader of the file (and the next run's first line,
    appended right after it) then fails on. Repair the file where a writer opens it for appending (every training
    start, ``--resume`` included): a trailing partial line is dropped with a warning. Repairing at open is the fix
    that holds whatever cut the write; the writer already flushes and fsyncs after each write."""
    from fastreid.utils.events import JSONWriter
    original = JSONWriter.__init__

    @functools.wraps(original)
    def __init__(self, json_file, *args, **kwargs):
        repair_partial_json_lines(json_file)
        original(self, json_file, *args, **kwargs)

    __init__.__wrapped_original__ = original
    JSONWriter.__init__ = __init__


def broadcast_buffers_from_rank0(model):
    """Give every process rank 0's buffers (BatchNorm running statistics): the values rank 0 checkpoints."""
    import torch.distributed as dist
    from fastreid.utils import comm
    if comm.get_world_size() == 1:
        return
    for buffer in getattr(model, "module", model).buffers():
        dist.broadcast(buffer.data, src=0)


@_once
def fix_rank_local_buffers_at_evaluation():
    """``DefaultTrainer`` wraps the model in ``DistributedDataParallel(..., broadcast_buffers=False)``: each process
    updates BatchNorm running statistics from its own batches only, so with ``--num-gpus N`` every process evaluates
    its shard of the test set with other statistics than the checkpoint (rank 0's) holds, and the gathered features
    differ from a 1-process evaluation of that checkpoint. Broadcast rank 0's buffers before each evaluation."""
    from fastreid.engine.hooks import EvalHook
    original = EvalHook._do_eval

    @functools.wraps(original)
    def _do_eval(self):
        model = getattr(self.trainer, "model", None)
        if model is not None:
            broadcast_buffers_from_rank0(model)
        return original(self)

    _do_eval.__wrapped_original__ = original
    EvalHook._do_eval = _do_eval


def apply_runtime_fixes():
    """Patches that need fast-reid's modules imported; called by ``import fastreid_dpmpp``."""
    fix_contiguous_params_zero_grad()
    fix_metric_printer_division_by_zero()
    fix_cuda_only_dataloader()
    fix_cython_self_compile()
    fix_gpu_only_reranking()
    fix_best_checkpoint_reload()
    fix_non_atomic_last_checkpoint_tag()
    fix_nccl_only_launch()
    fix_cpu_ddp_device_ids()
    fix_non_rgb_images()
    fix_unnamed_image_read_errors()
    fix_query_identities_not_in_gallery()
    fix_eval_after_failed_training()
    fix_partial_metrics_json()
    fix_rank_local_buffers_at_evaluation()

