"""Renamed to :mod:`fastreid_dpmpp.modeling.stage2_patch_selection` (the file names now say the stage and the role);
this alias keeps old imports working."""
import sys

from . import stage2_patch_selection

sys.modules[__name__] = stage2_patch_selection
