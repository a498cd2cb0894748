"""Every shipped config loads, and the real-benchmark ones carry SPEC's settings."""
import glob
import os

import pytest

from fastreid_dpmpp.engine import load_config
from fastreid_dpmpp.engine.pipeline import plan_stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yml"), recursive=True)
                     + glob.glob(os.path.join(REPO, "projects", "*", "configs", "*.yml")))
REAL = ("OccludedDuke", "OccludedREID", "Market1501", "DukeMTMC")


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_config_loads(path):
    cfg = load_config(path)
    assert cfg.MODEL.META_ARCHITECTURE


@pytest.mark.parametrize("benchmark", REAL)
def test_real_configs_follow_the_spec(benchmark):
    cfg = load_config(os.path.join(REPO, "configs", benchmark, "dpmpp.yml"))
    assert cfg.MODEL.VIT.ARCH == "ViT-B-16" and tuple(cfg.INPUT.SIZE_TRAIN) == (256, 128)
    assert tuple(cfg.MODEL.BACKBONE.STRIDE_SIZE) == (12, 12) and cfg.MODEL.BACKBONE.SIE_COE == 1.0
    assert cfg.SOLVER.BASE_LR == pytest.approx(5e-6)
    assert cfg.SOLVER.BASE_LR * cfg.SOLVER.HEADS_LR_FACTOR == pytest.approx(3.5e-4)
    assert cfg.SOLVER.MAX_EPOCH == 60 and list(cfg.SOLVER.STEPS) == [20, 40] and cfg.SOLVER.IMS_PER_BATCH == 64
    assert cfg.MODEL.LOSSES.MASK.S == 30.0 and cfg.MODEL.LOSSES.MASK.M == (0.3 if benchmark in ("Market1501", "DukeMTMC") else 0.5)
    assert cfg.MODEL.LOSSES.HEM.SCALE == (0.01 if benchmark == "OccludedREID" else 0.1)
    if benchmark == "OccludedREID":
        assert cfg.DATASETS.NAMES == ("Market1501",) and cfg.DATASETS.TESTS == ("OccludedREID",)


@pytest.mark.parametrize("benchmark", REAL + ("Synthetic",))
def test_pipeline_finds_every_stage_config(benchmark, tmp_path):
    stages = plan_stages(os.path.join(REPO, "configs", benchmark, "dpmpp.yml"), str(tmp_path))
    assert [os.path.isfile(s.config_file) for s in stages] == [True, True, True]
    assert load_config(stages[1].config_file).MODEL.META_ARCHITECTURE == "SPSModel"
    assert "SPT.SPS_WEIGHTS" in stages[2].opts and "MODEL.DPMPP.TEXT_PROTOTYPES" in stages[2].opts
