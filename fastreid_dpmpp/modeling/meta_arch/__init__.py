from .clip_baseline import CLIPBaseline  # noqa: F401
