"""DPM++ for fast-reid: ``import fastreid_dpmpp`` fixes fast-reid 1.4.0 for this stack and registers
the DPM++ backbones, heads, meta-architectures and datasets into fast-reid's registries."""
try:
    import fastreid  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by tests/test_install.py in a subprocess
    raise ImportError(
        "fastreid_dpmpp needs fast-reid 1.4.0, which is not installed. Its PyPI metadata pins torch 1.13, "
        "so install it without its dependencies: `pip install --no-deps fastreid==1.4.0` "
        "(or run `make test`, which sets up everything)."
    ) from e

from .compat import apply_import_fixes

apply_import_fixes()

from .compat import apply_runtime_fixes  # noqa: E402
from .config import add_dpmpp_config  # noqa: E402

apply_runtime_fixes()

from . import data, modeling  # noqa: E402,F401  (registration)

__version__ = "0.1.0"
__all__ = ["add_dpmpp_config", "__version__"]
