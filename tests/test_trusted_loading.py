"""Trusted loading (issue 6): every checkpoint and artifact the plugin reads is unpickled weights-only, a pickle that
would run code is refused with a message naming the file (and the code never runs), and fast-reid's own
checkpoints (model_best.pth with its numpy metric) still load."""
import ast
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

import fastreid_dpmpp  # noqa: F401
from fastreid.data.common import CommDataset
from fastreid.utils.checkpoint import Checkpointer, PeriodicCheckpointer

from fastreid_dpmpp.checkpoint import UntrustedCheckpointError, trusted_torch_load
from fastreid_dpmpp.engine.defaults import load_config
from fastreid_dpmpp.engine.sps_checkpoint import SPSWeightsError, load_frozen_sps_model
from fastreid_dpmpp.engine.stage1 import load_or_compute_image_features
from fastreid_dpmpp.modeling.backbones.weights import read_state_dict
from fastreid_dpmpp.text_prototypes import load_text_prototypes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DIRS = ("fastreid_dpmpp", "tools", "projects", "benchmarks")


class CreatesFile:
    """Unpickling this calls ``open(marker, "w")``: a visible side effect standing in for arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def evil(tmp_path):
    """(write an evil torch.save file at ``name`` holding ``{key: payload}``, the marker the payload would create)."""
    marker = tmp_path / "code_ran"

    def write(name, **extra):
        path = tmp_path / name
        torch.save({**extra, "payload": CreatesFile(str(marker))}, path)
        return str(path)
    yield write, marker
    assert not marker.exists(), "the pickle's code ran"


def _python_files():
    for folder in SOURCE_DIRS:
        for base, _, names in os.walk(os.path.join(REPO, folder)):
            yield from (os.path.join(base, n) for n in names if n.endswith(".py"))


def _calls(tree, dotted):
    module, name = dotted.rsplit(".", 1)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == module:
            yield node


def test_every_torch_load_in_the_code_is_weights_only():
    """Audit of the sources: torch.load only with weights_only=True, no torch.jit.load, no bare pickle.load(s)."""
    offenders, loads = [], 0
    for path in _python_files():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for call in _calls(tree, "torch.load"):
            loads += 1
            weights_only = [k for k in call.keywords if k.arg == "weights_only"]
            if not weights_only or not (isinstance(weights_only[0].value, ast.Constant)
                                        and weights_only[0].value.value is True):
                offenders.append(f"{path}:{call.lineno} torch.load without weights_only=True")
        for dotted in ("torch.jit.load", "pickle.load", "pickle.loads"):
            offenders += [f"{path}:{c.lineno} {dotted}" for c in _calls(tree, dotted)]
        jit_loads = [n for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "load"
                     and isinstance(n.value, ast.Attribute) and n.value.attr == "jit"]
        offenders += [f"{path}:{n.lineno} torch.jit.load" for n in jit_loads]
    assert loads >= 2  # trusted_torch_load and the weights reader: the scan does see the calls
    assert not offenders, offenders


def test_checkpointer_refuses_code_and_resume_leaves_nothing_loaded(tmp_path, evil):
    write, _ = evil
    model = torch.nn.Linear(3, 2)
    path = write("model_0004.pth", model=model.state_dict(), epoch=4)
    before = model.weight.detach().clone()
    with pytest.raises(UntrustedCheckpointError, match=r"Refusing to load checkpoint '.*model_0004\.pth'.*run code"):
        Checkpointer(model).load(path)
    (tmp_path / "last_checkpoint").write_text("model_0004.pth")
    with pytest.raises(UntrustedCheckpointError, match="model_0004.pth"):      # the --resume path
        Checkpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(model.weight, before)


def test_sps_checkpoint_with_code_is_refused(evil):
    write, _ = evil
    path = write("sps_final.pth", model={})
    with pytest.raises(SPSWeightsError, match=r"SPT.SPS_WEIGHTS: cannot read the SPS checkpoint '.*sps_final\.pth'"
                                              r".*Refusing to load SPS checkpoint") as e:
        load_frozen_sps_model(load_config("", []), path)
    assert isinstance(e.value.__cause__, UntrustedCheckpointError)


def test_text_prototype_file_with_code_is_refused(evil):
    write, _ = evil
    path = write("text_prototypes.pth", prototypes=torch.zeros(2, 4), num_classes=2, identities=["a_1", "a_2"],
                 embed_dim=4)
    with pytest.raises(UntrustedCheckpointError,
                       match=r"text-prototype file \(MODEL.DPMPP.TEXT_PROTOTYPES\) '.*text_prototypes\.pth'"):
        load_text_prototypes(path, expected_identities=["a_1", "a_2"])


def test_clip_weights_with_code_are_refused(evil):
    write, _ = evil
    path = write("ViT-B-16.pth", **{"visual.conv1.weight": torch.zeros(2, 3, 16, 16)})
    with pytest.raises(ValueError, match=r"MODEL.VIT.WEIGHTS: '.*ViT-B-16\.pth' holds Python objects.*refusing"):
        read_state_dict(path)


def test_torchscript_archive_with_code_is_refused(tmp_path):
    """OpenAI's format is a TorchScript zip; its data.pkl goes through a restricted unpickler."""
    marker = tmp_path / "code_ran"
    path = tmp_path / "ViT-B-16.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ViT-B-16/data.pkl", pickle.dumps({"visual": CreatesFile(str(marker))}, protocol=2))
        archive.writestr("ViT-B-16/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(ValueError, match=r"MODEL.VIT.WEIGHTS: cannot read the TorchScript archive '.*ViT-B-16\.pt' "
                                         r"as plain weights without running its code: global '(io|builtins).open' is not allowed"):
        read_state_dict(str(path))
    assert not marker.exists()


def test_stage1_feature_cache_with_code_is_refused(tmp_path, evil):
    write, _ = evil
    image = str(tmp_path / "0001_c1_f1.jpg")
    path = write("image_features.pth", features=torch.zeros(1, 4), labels=torch.zeros(1, dtype=torch.long))
    train_set = CommDataset([(image, "d_1", "d_0")], relabel=True)
    with pytest.raises(UntrustedCheckpointError, match=r"Stage I image-feature cache '.*image_features\.pth'"):
        load_or_compute_image_features(load_config("", []), train_set, cache_path=path)


def test_fastreid_best_checkpoints_still_load_weights_only(tmp_path):
    """model_best.pth as the plugin writes it (plain float metric) and as stock fast-reid wrote it (numpy float64
    metric, optimizer state): both load into a model and optimizer with weights-only unpickling."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    PeriodicCheckpointer(Checkpointer(model, str(tmp_path), optimizer=optimizer), period=1, max_epoch=3) \
        .step(0, metric=np.float64(61.5))
    stock = tmp_path / "stock_best.pth"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 7,
                "metric": np.float64(70.25)}, stock)

    for path, metric in ((tmp_path / "model_best.pth", 61.5), (stock, 70.25)):
        fresh = torch.nn.Linear(3, 2)
        fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=0.1)
        extra = Checkpointer(fresh, optimizer=fresh_optimizer).load(str(path))
        assert extra["metric"] == metric
        assert torch.equal(fresh.weight, model.weight) and torch.equal(fresh.bias, model.bias)
        assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"],
                           optimizer.state_dict()["state"][0]["exp_avg"])
    assert trusted_torch_load(str(stock))["epoch"] == 7
