"""Where the repository's ``tools/`` and ``configs/`` folders are, for the runners that start tools as child
processes (the pipeline, the experiment runner) or read the ablation row configs.

In a source checkout (``pip install -e .``, or running from the repository) they sit next to the package and are
found there. A regular (non-editable) install ships the package alone, so they are passed in instead, in this order:

1. an explicit argument (``tools_dir=`` / ``config_dir=`` of the runner functions; ``--tools-dir`` /
   ``--config-dir`` of the tools that have them);
2. the environment variables ``FASTREID_DPMPP_TOOLS`` / ``FASTREID_DPMPP_CONFIGS``;
3. the checkout next to the package, recognised by ``tools/train_net.py`` and ``configs/Base-DPMPP.yml``.

Nothing here imports the scripts: they are located as files and run as processes.
"""
import os

__all__ = ["TOOLS_ENV", "CONFIGS_ENV", "ResourceNotFoundError", "checkout_dir", "tools_dir", "configs_dir"]

TOOLS_ENV = "FASTREID_DPMPP_TOOLS"
CONFIGS_ENV = "FASTREID_DPMPP_CONFIGS"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_MARKERS = (os.path.join("tools", "train_net.py"), os.path.join("configs", "Base-DPMPP.yml"))


class ResourceNotFoundError(FileNotFoundError):
    """No tools/ or configs/ folder: the package is installed without the repository and none was passed in."""

    def __str__(self):
        return str(self.args[0])


def checkout_dir():
    """The repository folder holding this package, tools/ and configs/ (a source checkout), else None."""
    parent = os.path.dirname(_PACKAGE_DIR)
    return parent if all(os.path.isfile(os.path.join(parent, marker)) for marker in _MARKERS) else None


def _find(name, explicit, variable, option):
    for candidate, source in ((explicit, "given"), (os.environ.get(variable), f"${variable}")):
        if candidate:
            if not os.path.isdir(candidate):
                raise ResourceNotFoundError(f"the {name}/ folder {source} ({candidate}) does not exist")
            return os.path.abspath(candidate)
    checkout = checkout_dir()
    if checkout is not None:
        return os.path.join(checkout, name)
    raise ResourceNotFoundError(
        f"fastreid_dpmpp is installed without its repository ({_PACKAGE_DIR} has no {name}/ folder next to it): pass "
        f"the repository's {name}/ folder ({option}, or set {variable}), or install the package from a checkout "
        f"with `pip install -e .`")


def tools_dir(explicit=None):
    """The folder of the command-line tools (tools/train_net.py, train_stage1.py, ...); see the module docstring."""
    return _find("tools", explicit, TOOLS_ENV, "tools_dir= / --tools-dir")


def configs_dir(explicit=None):
    """The folder of the config files (configs/Synthetic/..., configs/OccludedDuke/...); see the module docstring."""
    return _find("configs", explicit, CONFIGS_ENV, "config_dir= / --config-dir")
