from .clip_baseline import CLIPBaseline  # noqa: F401
from .dpmpp import DPMPP  # noqa: F401
from .sps_arch import SPSModel  # noqa: F401
from .prompt_learning import CLIPPromptLearning  # noqa: F401
from .cnn_baseline import CNNBaseline  # noqa: F401
