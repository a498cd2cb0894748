"""Distributed (issue 6.4): fast-reid's launch on CPU (gloo, compat fix), DDP on CPU, and a 2-process Stage III
run whose 2-process evaluation gives the same metrics as a 1-process --eval-only of the same checkpoint."""
import os

import pytest
import torch

import fastreid_dpmpp  # noqa: F401

from test_end_to_end import REPO, TINY_MODEL, metrics_row, run_tool


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


def test_two_process_training_and_evaluation_match_one_process(data_root, tmp_path):
    config = os.path.join(REPO, "configs", "Synthetic", "dpmpp.yml")
    out = tmp_path / "ddp"
    common = ["--config-file", config, *TINY_MODEL, "DATASETS.ROOT", data_root, "OUTPUT_DIR", out]
    # 2 processes x 8 images = the 16-image batch; 2 iterations per epoch, 1 epoch, evaluated on 2 processes at the end
    log = run_tool("train_net.py", "--num-gpus", 2, *common, "SOLVER.MAX_EPOCH", 1, "TEST.EVAL_PERIOD", 1)
    assert "World size: 2" in log and "on 2 devices" in log
    two_processes = metrics_row(log)

    one_process = metrics_row(run_tool("train_net.py", "--eval-only", *common, "MODEL.WEIGHTS", out / "model_final.pth"))
    assert one_process == two_processes
