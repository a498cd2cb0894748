"""The two helpers every stage needs on an ``nn.Module``: the model behind DistributedDataParallel, and freezing."""

__all__ = ["unwrap_model", "freeze_model"]


def unwrap_model(model):
    """The module behind DistributedDataParallel (or the model itself)."""
    return getattr(model, "module", model)


def freeze_model(model):
    """Eval mode (dropout off, BatchNorm on its running statistics) and ``requires_grad=False`` on every parameter:
    the frozen CLIP text tower of Stage I (SPEC §2), the frozen SPS model of Stage III (SPEC §4). Returns ``model``."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
