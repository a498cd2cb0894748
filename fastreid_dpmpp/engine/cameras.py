"""Moved to :mod:`fastreid_dpmpp.data.cameras` (evaluation and the search tool need it too, below the engine);
re-exported here for code that imports it from its old place."""
from ..data.cameras import *  # noqa: F401,F403
from ..data.cameras import __all__  # noqa: F401
