"""Each fast-reid 1.4.0 fix in fastreid_dpmpp.compat: the breakage is real (shown in a fresh interpreter
without the fix) and the fix removes it."""
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import fastreid_dpmpp  # noqa: F401
from fastreid_dpmpp import compat


def run_python(code, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300)


def test_fastreid_data_import_fails_without_fixes_and_works_with_them():
    broken = run_python("import fastreid.data")
    assert broken.returncode != 0
    assert "torch._six" in broken.stderr or "Mapping" in broken.stderr
    fixed = run_python("from fastreid_dpmpp.compat import apply_import_fixes; apply_import_fixes(); "
                       "import fastreid.data, fastreid.evaluation, fastreid.engine")
    assert fixed.returncode == 0, fixed.stderr


def test_collections_mapping_fix_alone():
    code = ("from fastreid_dpmpp.compat import fix_collections_mapping; fix_collections_mapping(); "
            "from collections import Mapping; import collections.abc; assert Mapping is collections.abc.Mapping; "
            "import fastreid.evaluation.testing")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert run_python("import fastreid.evaluation.testing").returncode != 0


def test_torch_six_fix_provides_string_classes():
    import torch._six
    assert isinstance("a", torch._six.string_classes) and isinstance(b"a", torch._six.string_classes)


def _tiny_market(root):
    from PIL import Image
    folder = os.path.join(root, "Market-1501-v15.09.15")
    rng = np.random.default_rng(0)
    for split, pids, cam in (("bounding_box_train", (1, 2), (1, 2)), ("query", (3, 4), (1,)),
                             ("bounding_box_test", (3, 4), (2,))):
        os.makedirs(os.path.join(folder, split))
        for pid in pids:
            for c in cam:
                for k in range(4 if split == "bounding_box_train" else 1):
                    img = Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8))
                    img.save(os.path.join(folder, split, f"{pid:04d}_c{c}s1_{k:06d}_00.jpg"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA-only DataLoaderX works where CUDA exists")
def test_train_and_test_loaders_run_on_cpu(tmp_path):
    from fastreid.data.build import _test_loader_from_config, build_reid_test_loader, build_reid_train_loader
    from fastreid_dpmpp.engine import load_config
    from fastreid_dpmpp.engine.defaults import apply_dataset_root

    _tiny_market(str(tmp_path))
    cfg = load_config(None, ["DATASETS.ROOT", str(tmp_path), "DATASETS.NAMES", ("Market1501",),
                             "INPUT.SIZE_TRAIN", [32, 16], "INPUT.SIZE_TEST", [32, 16], "SOLVER.IMS_PER_BATCH", 8,
                             "DATALOADER.NUM_INSTANCE", 4, "DATALOADER.NUM_WORKERS", 0])
    apply_dataset_root(cfg)
    batch = next(iter(build_reid_train_loader(cfg)))
    assert batch["images"].shape == (8, 3, 32, 16) and batch["images"].device.type == "cpu"
    test_loader, num_query = build_reid_test_loader(**_test_loader_from_config(cfg, dataset_name="Market1501"),
                                                    num_workers=0)
    assert num_query == 2
    assert next(iter(test_loader))["images"].shape[1:] == (3, 32, 16)

    from fastreid.data.data_utils import DataLoaderX
    with pytest.raises((RuntimeError, AssertionError)):
        DataLoaderX(0, dataset=[1, 2, 3])


def test_cython_compile_failure_falls_back_instead_of_exiting(monkeypatch, tmp_path):
    import fastreid.evaluation.rank as rank
    from fastreid.evaluation.reid_evaluation import ReidEvaluator
    from fastreid_dpmpp.engine import load_config

    monkeypatch.setattr(rank, "IS_CYTHON_AVAI", False)
    monkeypatch.setenv("FASTREID_DPMPP_CACHE", str(tmp_path))
    monkeypatch.setattr(compat.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "no compiler"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ReidEvaluator(load_config(None), num_query=1)  # stock fast-reid calls sys.exit(1) here
    assert any("Python ranking" in str(w.message) for w in caught)
    assert rank.IS_CYTHON_AVAI is False


def test_compiled_ranking_builds_with_this_interpreter_and_matches_python():
    import fastreid.evaluation.rank as rank
    folder = compat.build_compiled_ranking()  # the plugin cache: built once per machine, then reused
    if folder is None:
        pytest.skip("no C compiler / Cython here")
    rank_cy = compat._import_extension("rank_cy", folder)
    rng = np.random.default_rng(0)
    dist = rng.random((6, 20)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 3, 6), rng.integers(0, 3, 20)
    q_cams, g_cams = np.zeros(6, dtype=np.int64), np.ones(20, dtype=np.int64)
    cmc_cy, ap_cy, inp_cy = rank_cy.evaluate_cy(dist, q_pids, g_pids, q_cams, g_cams, 10, False)
    cmc_py, ap_py, inp_py = rank.evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, 10, use_cython=False)
    np.testing.assert_allclose(np.mean(ap_cy), np.mean(ap_py), atol=1e-6)
    np.testing.assert_allclose(cmc_cy, cmc_py, atol=1e-6)


def test_reranking_runs_with_faiss_cpu():
    from fastreid.utils.compute_dist import build_dist
    assert compat.jaccard_search_option() == (0 if compat.faiss_gpu_available() else 3)
    feats = torch.nn.functional.normalize(torch.randn(30, 8), dim=1)
    dist = build_dist(feats, feats, "jaccard", k1=5, k2=2)
    assert dist.shape == (30, 30) and np.isfinite(dist).all()
    assert np.allclose(np.diag(dist), 0.0, atol=1e-6)
    if not torch.cuda.is_available():
        import fastreid.utils.compute_dist as compute_dist
        original = compute_dist.compute_jaccard_distance.__wrapped_original__
        with pytest.raises((RuntimeError, AttributeError, AssertionError)):
            original(feats, k1=5, k2=2, search_option=0)


def test_best_checkpoint_with_numpy_metric_reloads_with_weights_only(tmp_path):
    from fastreid.utils.checkpoint import Checkpointer, PeriodicCheckpointer
    model = torch.nn.Linear(3, 2)
    checkpointer = Checkpointer(model, str(tmp_path))
    PeriodicCheckpointer(checkpointer, period=1, max_epoch=1).step(0, metric=np.float64(0.75))
    data = torch.load(tmp_path / "model_best.pth", weights_only=True)
    assert data["metric"] == 0.75 and type(data["metric"]) is float

    # a model_best.pth written by stock fast-reid (numpy scalar pickled) also reloads, still weights-only
    stock = tmp_path / "stock_best.pth"
    torch.save({"model": model.state_dict(), "epoch": 0, "metric": np.float64(0.5)}, stock)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(stock, weights_only=True)
    fresh = torch.nn.Linear(3, 2)
    assert Checkpointer(fresh).load(str(stock))["metric"] == 0.5
    assert torch.equal(fresh.weight, model.weight)


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    from fastreid_dpmpp.checkpoint import UntrustedCheckpointError, trusted_torch_load
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _RunsCode()}, path)
    with pytest.raises(UntrustedCheckpointError, match="evil.pth"):
        trusted_torch_load(str(path))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _one_training_step(build_optimizer):
    from fastreid_dpmpp.engine import load_config
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    optimizer, _ = build_optimizer(load_config(None, ["SOLVER.OPT", "Adam", "SOLVER.BASE_LR", 0.1]), model)
    before = model[0].weight.detach().clone()
    for _ in range(2):  # as SimpleTrainer.run_step: zero_grad, backward, step
        loss = model(torch.randn(5, 4)).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (model[0].weight - before).abs().max().item()


def test_fastreid_optimizer_actually_updates_the_model():
    import fastreid.engine.defaults as engine_defaults
    import fastreid.solver.build as solver_build
    assert engine_defaults.build_optimizer is solver_build.build_optimizer  # DefaultTrainer gets the fixed one
    assert _one_training_step(solver_build.build_optimizer) > 1e-3
    # stock fast-reid on torch >= 2: zero_grad() sets grads to None and the contiguous buffer never moves
    assert _one_training_step(solver_build.build_optimizer.__wrapped_original__) == 0.0


def test_metric_printer_survives_two_writes_at_one_iteration():
    from fastreid.utils.events import CommonMetricPrinter, EventStorage
    with EventStorage(5) as storage:
        storage.epoch = 0
        storage.put_scalar("loss", 1.0)
        printer = CommonMetricPrinter(max_iter=10)
        printer.write()
        printer.write()  # stock fast-reid: ZeroDivisionError (no "time" history yet, same iteration)
        printer._last_write = (storage.iter, 0.0)
        with pytest.raises(ZeroDivisionError):
            CommonMetricPrinter.write.__wrapped_original__(printer)
