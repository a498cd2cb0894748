"""End to end, as a user runs it: tools/train_net.py (train, --eval-only, --resume) and the three-stage pipeline
(tools/run_pipeline.py) on a tiny synthetic Occluded-Duke written in the real folder layout."""
import json
import os

import pytest
from _tiny import REPO, TINY_MODEL, metrics_row, run_tool


def test_baseline_trains_evaluates_and_resumes(data_root, tmp_path):
    config = os.path.join(REPO, "configs", "Synthetic", "clip_baseline.yml")
    out = tmp_path / "baseline"
    common = ["--config-file", config, *TINY_MODEL, "DATASETS.ROOT", data_root, "OUTPUT_DIR", out]

    trained = metrics_row(run_tool("train_net.py", *common))
    for name in ("model_0000.pth", "model_final.pth", "model_best.pth", "config.yaml", "metrics.json"):
        assert (out / name).is_file(), name
    assert all(0.0 <= value <= 100.0 for value in trained)
    written = json.loads((out / "eval_results.json").read_text())  # the final evaluation, as a file
    assert [written["OccludedDuke"][m] for m in ("Rank-1", "Rank-5", "Rank-10", "mAP")] == pytest.approx(
        trained, abs=0.01)

    evaluated = metrics_row(run_tool("train_net.py", "--eval-only", *common, "MODEL.WEIGHTS", out / "model_best.pth"))
    assert evaluated == pytest.approx(trained, abs=0.01)  # same weights, same evaluation

    log = run_tool("train_net.py", "--resume", *common[:-2], "SOLVER.MAX_EPOCH", 3, "OUTPUT_DIR", out)
    assert "Loading checkpoint from" in log and "model_final.pth" in log
    iterations = [json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()]
    assert iterations == [1, 3, 5]  # 2 iterations per epoch: the resumed run trained epoch 2 only


def test_three_stage_pipeline_runs_end_to_end_and_skips_finished_stages(data_root, tmp_path):
    config = os.path.join(REPO, "configs", "Synthetic", "dpmpp.yml")
    out = tmp_path / "pipeline"
    log = run_tool("run_pipeline.py", "--config-file", config, "--output-dir", out, *TINY_MODEL,
                   "DATASETS.ROOT", data_root)
    metrics_row(log)
    assert (out / "stage1" / "text_prototypes.pth").is_file()
    assert (out / "stage2" / "sps_final.pth").is_file()
    assert (out / "stage3" / "model_final.pth").is_file()
    stage3_metrics = [json.loads(line) for line in (out / "stage3" / "metrics.json").read_text().splitlines()]
    assert all("spt_fraction" in m for m in stage3_metrics)  # SPT ran in Stage III; fast-reid's writer logged it
    assert list((out / "stage3").glob("spt_samples_iter*.png"))

    again = run_tool("run_pipeline.py", "--config-file", config, "--output-dir", out, *TINY_MODEL,
                     "DATASETS.ROOT", data_root)
    assert again.count("artifact exists, skipped") == 3
    assert metrics_row(again) == pytest.approx(metrics_row(log), abs=0.01)


def test_stage3_refuses_text_prototypes_of_other_identities(data_root, tmp_path):
    import torch

    from fastreid_dpmpp.engine import DPMPPTrainer, load_config
    from fastreid_dpmpp.text_prototypes import TextPrototypeMismatchError, save_text_prototypes

    config = os.path.join(REPO, "configs", "Synthetic", "dpmpp.yml")
    cfg = load_config(config, [*TINY_MODEL, "DATASETS.ROOT", data_root, "DATALOADER.NUM_WORKERS", 0])
    loader = DPMPPTrainer.build_train_loader(cfg)
    identities = list(loader.dataset.pids)
    path = str(tmp_path / "text_prototypes.pth")

    save_text_prototypes(path, torch.randn(len(identities), 16), identities)
    cfg.MODEL.DPMPP.TEXT_PROTOTYPES = path
    DPMPPTrainer.build_train_loader(cfg)  # same identities, same order: accepted

    save_text_prototypes(path, torch.randn(len(identities), 16), identities[::-1])
    with pytest.raises(TextPrototypeMismatchError, match="another order"):
        DPMPPTrainer.build_train_loader(cfg)
    save_text_prototypes(path, torch.randn(len(identities) - 1, 16), identities[1:])
    with pytest.raises(TextPrototypeMismatchError, match=f"C={len(identities) - 1}"):
        DPMPPTrainer.build_train_loader(cfg)
