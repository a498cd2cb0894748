from .masked_evaluator import MaskedReidEvaluator  # noqa: F401
