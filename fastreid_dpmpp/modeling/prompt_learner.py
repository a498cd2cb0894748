"""Renamed to :mod:`fastreid_dpmpp.modeling.stage1_prompts` (the file names now say the stage and the role);
this alias keeps old imports working."""
import sys

from . import stage1_prompts

sys.modules[__name__] = stage1_prompts
