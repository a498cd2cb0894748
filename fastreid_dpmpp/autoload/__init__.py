"""Opt-in: make ``import fastreid`` also load the DPM++ plugin (registries + config keys).

With ``FASTREID_DPMPP_AUTOLOAD=1`` in the environment, the installed ``fastreid_dpmpp_autoload.pth`` calls
:func:`install` at interpreter start. It adds an import hook that, once the ``fastreid`` package has been
imported, imports ``fastreid_dpmpp`` (fixes + registration) and makes ``fastreid.config.get_cfg()`` return a
config that already has the DPM++ keys, so fast-reid's own ``tools/train_net.py`` runs DPM++ configs unmodified.
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
