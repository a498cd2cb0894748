"""Distributed (issue 6.4): fast-reid's launch on CPU (gloo, compat fix), DDP on CPU, and a 2-process Stage III
run whose 2-process evaluation gathers the same features, in the same image order, and gives the same metrics as a
1-process --eval-only of the same checkpoint."""
import json
import os

import numpy as np
import pytest
import torch

import fastreid_dpmpp  # noqa: F401

from _tiny import REPO, TINY_MODEL


def _all_reduce_rank(out_dir):
    import torch.distributed as dist
    from fastreid.utils import comm
    value = torch.tensor([float(comm.get_rank() + 1)])
    dist.all_reduce(value)
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.txt"), "w") as f:
        f.write(f"{dist.get_backend()} {comm.get_world_size()} {comm.get_local_rank()} {value.item()}")


def test_launch_runs_gloo_processes_on_cpu(tmp_path):
    from fastreid.engine import launch
    from fastreid_dpmpp.compat import distributed_backend
    if torch.cuda.is_available():
        assert distributed_backend() == "NCCL"
        pytest.skip("CUDA machine: launch keeps fast-reid's NCCL backend")
    launch(_all_reduce_rank, 2, dist_url="auto", args=(str(tmp_path),))
    results = sorted((tmp_path / f"rank{r}.txt").read_text() for r in range(2))
    assert results == ["gloo 2 0 3.0", "gloo 2 1 3.0"]  # 1 + 2 summed over the two processes


def test_default_trainer_ddp_accepts_a_cpu_model(tmp_path):
    import torch.distributed as dist
    import fastreid.engine.defaults as engine_defaults
    from torch.nn.parallel import DistributedDataParallel
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", world_size=1, rank=0)
    try:
        with pytest.raises(Exception):  # torch's own DDP refuses device ids for a CPU module
            DistributedDataParallel(torch.nn.Linear(3, 2), device_ids=[0])
        wrapped = engine_defaults.DistributedDataParallel(torch.nn.Linear(3, 2), device_ids=[0],
                                                          broadcast_buffers=False)
        assert isinstance(wrapped, DistributedDataParallel) and wrapped.device_ids is None
        assert wrapped(torch.ones(4, 3)).shape == (4, 2)
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- recording the gathered predictions
def _save_npz_atomically(path, **arrays):
    partial = f"{path}.partial"
    with open(partial, "wb") as f:
        np.savez(f, **arrays)
    os.replace(partial, path)


def _record_gathered_predictions(evaluator, dump_path):
    """Test-only instrumentation of one evaluator instance: each batch's prediction also keeps its image paths and
    the rank that computed it, and the main process saves what the evaluator's own gathering
    (``_gathered_predictions``: fast-reid's comm.gather with several processes) returned, with the metrics."""
    from fastreid.utils import comm
    assert hasattr(evaluator, "_gathered_predictions"), f"{type(evaluator).__name__} has no _gathered_predictions"
    process, gathered_predictions, evaluate = evaluator.process, evaluator._gathered_predictions, evaluator.evaluate
    seen = {}

    def process_keeping_paths(inputs, outputs):
        process(inputs, outputs)
        evaluator._predictions[-1].update(img_paths=list(inputs["img_paths"]), rank=comm.get_rank())

    def recorded_gathered_predictions():
        seen["predictions"] = gathered_predictions()
        return seen["predictions"]

    def evaluate_and_save():
        results = evaluate()
        if comm.is_main_process():
            predictions = seen["predictions"]
            _save_npz_atomically(
                dump_path, feats=torch.cat([p["feats"] for p in predictions]).numpy(),
                pids=torch.cat([p["pids"] for p in predictions]).numpy(),
                camids=torch.cat([p["camids"] for p in predictions]).numpy(),
                img_paths=np.array([path for p in predictions for path in p["img_paths"]]),
                ranks=np.concatenate([np.full(len(p["img_paths"]), p["rank"]) for p in predictions]),
                world_size=comm.get_world_size(), metrics=json.dumps({k: float(v) for k, v in results.items()}))
        return results

    evaluator.process, evaluator._gathered_predictions = process_keeping_paths, recorded_gathered_predictions
    evaluator.evaluate = evaluate_and_save


def _record_evaluations(dump_path, set_attribute=setattr):
    """Make ``DPMPPTrainer.build_evaluator`` instrument the evaluators it builds (``set_attribute``: pytest's
    monkeypatch.setattr in the test process; plain setattr in the launched processes, which exit afterwards)."""
    from fastreid_dpmpp.engine.trainer import DPMPPTrainer
    build = DPMPPTrainer.build_evaluator

    def build_recording_evaluator(cls, cfg, dataset_name, output_dir=None):
        data_loader, evaluator = build(cfg, dataset_name, output_dir)
        _record_gathered_predictions(evaluator, dump_path)
        return data_loader, evaluator

    set_attribute(DPMPPTrainer, "build_evaluator", classmethod(build_recording_evaluator))


def _train_recording_the_evaluation(args, dump_path):
    """Run by each process that fast-reid's launch starts: tools/train_net.py's main, evaluations recorded."""
    from fastreid_dpmpp.engine.defaults import train_or_evaluate
    _record_evaluations(dump_path)
    train_or_evaluate(args)


def _random_sps_checkpoint(config, path):
    """A Stage II artifact (SPS model state dict) for the tiny model, random weights: enough for SPT to run."""
    from fastreid.modeling import build_model

    from fastreid_dpmpp.engine.defaults import load_config
    sps = build_model(load_config(config, [str(a) for a in TINY_MODEL] + [
        "MODEL.META_ARCHITECTURE", "SPSModel", "MODEL.HEADS.NUM_CLASSES", "4", "MODEL.VIT.NUM_CAMERAS", "8"]))
    torch.save({"model": sps.state_dict()}, path)
    return path


def _contiguous_shards(num_images, world_size):
    """Rank of each image under fast-reid's InferenceSampler: rank r takes images [r·s, (r+1)·s), s = ceil(N / W)."""
    shard = -(-num_images // world_size)
    return np.arange(num_images) // shard


def test_two_process_training_and_evaluation_match_one_process(data_root, tmp_path, monkeypatch):
    from fastreid.engine import default_argument_parser, launch

    from fastreid_dpmpp.engine.defaults import train_or_evaluate
    config = os.path.join(REPO, "configs", "Synthetic", "dpmpp.yml")
    out = tmp_path / "ddp"

    def parse(*flags_then_options):  # as tools/train_net.py parses its command line
        return default_argument_parser().parse_args(
            [str(a) for a in ["--config-file", config, *flags_then_options, *TINY_MODEL, "DATASETS.ROOT", data_root,
                              "MODEL.VIT.NUM_CAMERAS", 8]])

    # 2 processes x 8 images = the 16-image batch; 2 iterations, 1 epoch, evaluated on the 2 processes at its end.
    # Launched from here as tools/train_net.py launches its main (--num-gpus 2), without a third interpreter.
    # SPT is on: every process loads the frozen SPS model of a (random) Stage II checkpoint.
    sps_weights = _random_sps_checkpoint(config, tmp_path / "sps_final.pth")
    two = parse("--num-gpus", 2, "OUTPUT_DIR", out, "SOLVER.MAX_EPOCH", 1, "TEST.EVAL_PERIOD", 1,
                "SPT.ENABLED", True, "SPT.SPS_WEIGHTS", sps_weights, "SPT.PROB", 1.0, "SPT.ALPHA", 0.0, "SPT.BETA", 0.0)
    launch(_train_recording_the_evaluation, two.num_gpus, dist_url="auto", args=(two, str(tmp_path / "two.npz")))
    assert (out / "model_final.pth").is_file()
    logged = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert logged and all(record["spt_fraction"] > 0 for record in logged)  # SPT synthesised under DDP
    saved = torch.load(out / "model_final.pth", weights_only=True)["model"]
    assert not any(key.startswith("spt") or ".sps" in key for key in saved)  # the frozen SPS model is not saved

    _record_evaluations(str(tmp_path / "one.npz"), monkeypatch.setattr)
    train_or_evaluate(parse("--eval-only", "MODEL.WEIGHTS", out / "model_final.pth", "OUTPUT_DIR", tmp_path / "one"))

    two_processes, one_process = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    assert int(two_processes["world_size"]) == 2 and int(one_process["world_size"]) == 1
    num_images = len(one_process["img_paths"])
    assert num_images > 2 and len(set(one_process["img_paths"])) == num_images
    # fast-reid's InferenceSampler splits the images contiguously and the gather concatenates rank 0, then rank 1:
    # the gathered order is the 1-process order
    assert two_processes["img_paths"].tolist() == one_process["img_paths"].tolist()
    assert two_processes["ranks"].tolist() == _contiguous_shards(num_images, 2).tolist()
    np.testing.assert_array_equal(two_processes["pids"], one_process["pids"])
    np.testing.assert_array_equal(two_processes["camids"], one_process["camids"])
    assert two_processes["feats"].shape == one_process["feats"].shape
    # float rounding of other batch sizes stays < 1e-7; rank-local BatchNorm statistics (fast-reid's DDP keeps
    # broadcast_buffers=False) already differ by ~2e-5 after these 2 iterations
    np.testing.assert_allclose(two_processes["feats"], one_process["feats"], rtol=0, atol=1e-6,
                               err_msg="features gathered from 2 processes != 1-process features of the checkpoint")
    two_metrics, one_metrics = json.loads(str(two_processes["metrics"])), json.loads(str(one_process["metrics"]))
    assert {"Rank-1", "mAP", "mINP"} <= set(one_metrics)
    assert two_metrics == pytest.approx(one_metrics, abs=1e-9)
