"""Renamed to :mod:`fastreid_dpmpp.modeling.stage3_patch_transfer` (the file names now say the stage and the role);
this alias keeps old imports working."""
import sys

from . import stage3_patch_transfer

sys.modules[__name__] = stage3_patch_transfer
