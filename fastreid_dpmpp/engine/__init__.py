from .defaults import load_config, setup  # noqa: F401
from .trainer import DPMPPTrainer  # noqa: F401
