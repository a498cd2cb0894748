"""``OUTPUT_DIR/eval_results.json``: the metrics of a run's last (final) evaluation, written by the trainer and read
by the runners that skip finished runs (ablation, experiments) and by the final-checkpoint hook that removes a stale
one."""
import json
import os

from ..checkpoint import atomic_write_text

__all__ = ["EVAL_RESULTS_FILE", "write_eval_results"]

EVAL_RESULTS_FILE = "eval_results.json"


def write_eval_results(output_dir, results):
    """{dataset: {metric: value}} -> OUTPUT_DIR/eval_results.json, atomically."""
    payload = {name: {metric: float(value) for metric, value in metrics.items()} for name, metrics in results.items()}
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_text(json.dumps(payload, indent=2), os.path.join(output_dir, EVAL_RESULTS_FILE))
