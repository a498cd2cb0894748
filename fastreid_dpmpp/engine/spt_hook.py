"""Renamed to :mod:`fastreid_dpmpp.engine.stage3_spt_hook` (the file names now say the stage and the role);
this alias keeps old imports working."""
import sys

from . import stage3_spt_hook

sys.modules[__name__] = stage3_spt_hook
