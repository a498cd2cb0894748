from .clip_reid_head import CLIPReIDHead  # noqa: F401
