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


def _plain_python(value):
    """numpy scalars -> Python numbers, recursively, so ``torch.load(weights_only=True)`` accepts them."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain_python(v) for v in value)
    return value


def numpy_safe_globals():
    """numpy types that old fast-reid checkpoints pickle (``metric`` is a numpy float); plain data,
    they run no code when unpickled."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray.scalar, np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)),
            type(np.dtype(np.int64))]


@_once
def fix_best_checkpoint_reload():
    """``PeriodicCheckpointer`` stores ``metric`` (a numpy float) in ``model_best.pth``; torch >= 2.6 loads
    with ``weights_only=True`` and refuses numpy scalars. Checkpoints are now written with plain Python
    numbers (atomically, see :func:`fastreid_dpmpp.checkpoint.atomic_torch_save`), and files written by
    stock fast-reid load with numpy's scalar types allow-listed."""
    from fastreid.utils.checkpoint import Checkpointer
    from fastreid_dpmpp.checkpoint import atomic_torch_save, trusted_torch_load

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(_plain_python(kwargs))
        basename = "{}.pth".format(name)
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to {}".format(save_file))
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def _load_file(self, f):
        return trusted_torch_load(f)

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


def apply_runtime_fixes():
    """Patches that need fast-reid's modules imported; called by ``import fastreid_dpmpp``."""
    fix_contiguous_params_zero_grad()
    fix_metric_printer_division_by_zero()
    fix_cuda_only_dataloader()
    fix_cython_self_compile()
    fix_gpu_only_reranking()
    fix_best_checkpoint_reload()
