from .clip_reid_head import CLIPReIDHead  # noqa: F401
from .dpm_head import DPMHead  # noqa: F401
