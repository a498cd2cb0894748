"""Opt-in: make ``import fastreid`` also load the DPM++ plugin (registries + config keys).

With ``FASTREID_DPMPP_AUTOLOAD=1`` in the environment, the installed ``fastreid_dpmpp_autoload.pth`` calls
:func:`install` at interpreter start. It adds an import hook that, once the ``fastreid`` package has been
imported, imports ``fastreid_dpmpp`` (fixes + registration) and makes ``fastreid.config.get_cfg()`` return a
config that already has the DPM++ keys, so fast-reid's own ``tools/train_net.py`` runs DPM++ configs unmodified,
and makes fast-reid's DefaultTrainer read its datasets from ``DATASETS.ROOT`` as the plugin's tools do (fast-reid
reads only the FASTREID_DATASETS variable, once, at import).
Without the variable the .pth file does nothing.
"""
import importlib.abc
import sys

_LOADING = False


def _load_plugin():
    global _LOADING
    if _LOADING:
        return
    _LOADING = True
    import fastreid.config as fr_config
    import fastreid_dpmpp
    original_get_cfg = fr_config.get_cfg

    def get_cfg():
        return fastreid_dpmpp.add_dpmpp_config(original_get_cfg())

    fr_config.get_cfg = get_cfg
    _honour_dataset_root()


def _honour_dataset_root():
    """fast-reid's ``DefaultTrainer.build_train_loader`` / ``build_test_loader`` read the dataset root fixed at
    import (FASTREID_DATASETS); apply DATASETS.ROOT first (``apply_dataset_root``: DATASETS.ROOT, else the variable)."""
    from fastreid.engine import DefaultTrainer

    from fastreid_dpmpp.data.root import apply_dataset_root

    def with_root(original):
        def build(cls, cfg, *args, **kwargs):
            apply_dataset_root(cfg)
            return original(cls, cfg, *args, **kwargs)
        build.__wrapped_original__ = original
        return classmethod(build)

    for name in ("build_train_loader", "build_test_loader"):
        method = getattr(DefaultTrainer, name)
        if not hasattr(method, "__wrapped_original__"):
            setattr(DefaultTrainer, name, with_root(method.__func__))


class _AfterFastreidImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "fastreid":
            return None
        sys.meta_path.remove(self)
        spec = None
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_load_plugin(module):
            exec_module(module)
            _load_plugin()

        spec.loader.exec_module = exec_then_load_plugin
        return spec


def install():
    if "fastreid" in sys.modules:
        _load_plugin()
    elif not any(isinstance(f, _AfterFastreidImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterFastreidImport())
