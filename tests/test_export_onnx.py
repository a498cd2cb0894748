"""ONNX export of the inference model (descriptor + mask): onnxruntime output equals PyTorch within 1e-4."""
import importlib.util
import os

import numpy as np
import onnx
import pytest
import torch

import fastreid_dpmpp  # noqa: F401  (fast-reid fixes first)
from fastreid_dpmpp.export import export_onnx, load_inference_model, run_onnx
from _tiny import tiny_vit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = tiny_vit(32, 2, 2, 16, (1, 2), (1, 1), (64, 32), "MODEL.HEADS.NUM_CLASSES", 8)
CONFIG = os.path.join(REPO, "configs", "Synthetic", "dpmpp.yml")


def tiny_model(*opts):
    torch.manual_seed(0)
    model, cfg = load_inference_model(CONFIG, TINY + list(opts))
    # Random init leaves the HMG's FC at zero (every mask entry 0.5) and BN at unit statistics: perturb every
    # parameter and buffer so that the mask varies per image and channel and BN's running stats matter.
    # (Only what the checkpoint holds: the non-persistent pixel mean / std stay as the config sets them.)
    with torch.no_grad():
        for tensor in [t for t in model.state_dict(keep_vars=True).values() if t.dtype.is_floating_point]:
            tensor.add_(0.05 * torch.randn_like(tensor)).abs_() if tensor.dim() == 1 else \
                tensor.add_(0.05 * torch.randn_like(tensor))
    return model, cfg


def compare(model, path, camids):
    wrapper = export_onnx(model, str(path), (64, 32))
    onnx.checker.check_model(str(path))
    assert onnx.load(str(path)).opset_import[0].version >= 17
    images = torch.rand(3, 3, 64, 32, generator=torch.Generator().manual_seed(1)) * 255  # batch 3 != export's 2
    with torch.no_grad():
        expected = wrapper(images, camids)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = run_onnx(str(path), images, camids)
    assert list(got) == wrapper.output_names
    for name, reference in zip(wrapper.output_names, expected):
        assert got[name].shape == tuple(reference.shape)
        assert np.abs(got[name] - reference.numpy()).max() <= 1e-4, name
    return wrapper, got


def test_masked_model_with_sie_exports_descriptor_and_mask(tmp_path):
    # SIE at test (MODEL.VIT.SIE_AT_TEST True): the exported model takes camera ids
    model, _ = tiny_model("MODEL.VIT.NUM_CAMERAS", "4", "MODEL.VIT.SIE_AT_TEST", "True")
    camids = torch.tensor([0, 3, 1])
    wrapper, got = compare(model, tmp_path / "dpmpp.onnx", camids)
    assert wrapper.input_names == ["images", "camids"] and wrapper.output_names == ["descriptor", "mask"]
    # the mask is a real HMG output (varies) over the v part, ones over the unmasked v_p part
    mask = got["mask"]
    assert mask[:, :32].std() > 1e-3 and np.allclose(mask[:, 32:], 1.0)
    # the camera id is a live input: another camera changes the descriptor
    other = run_onnx(str(tmp_path / "dpmpp.onnx"), torch.rand(3, 3, 64, 32) * 0 + 100, torch.tensor([0, 0, 0]))
    moved = run_onnx(str(tmp_path / "dpmpp.onnx"), torch.rand(3, 3, 64, 32) * 0 + 100, torch.tensor([2, 2, 2]))
    assert np.abs(other["descriptor"] - moved["descriptor"]).max() > 1e-4
    with pytest.raises(ValueError, match="camids"):
        run_onnx(str(tmp_path / "dpmpp.onnx"), torch.rand(1, 3, 64, 32))


def test_descriptor_only_model_without_sie(tmp_path):
    model, _ = tiny_model("MODEL.VIT.SIE_ENABLED", "False", "TEST.MASKED_MATCHING.ENABLED", "False")
    wrapper, _ = compare(model, tmp_path / "plain.onnx", None)
    assert wrapper.input_names == ["images"] and wrapper.output_names == ["descriptor"]


def test_export_tool_writes_a_verified_model(tmp_path, capsys):
    model, _ = tiny_model("MODEL.VIT.NUM_CAMERAS", "4")
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    output = tmp_path / "out" / "model.onnx"
    spec = importlib.util.spec_from_file_location("export_tool", os.path.join(REPO, "tools", "export_onnx.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    capsys.readouterr()
    tool.main(["--config-file", CONFIG, "--output", str(output), *TINY, "MODEL.WEIGHTS", str(weights)])
    assert output.is_file() and "max |onnxruntime - torch|" in capsys.readouterr().out
    images, camids = torch.rand(2, 3, 64, 32) * 255, torch.tensor([1, 2])
    with torch.no_grad():
        expected = model({"images": images, "camids": camids})
    got = run_onnx(str(output), images, camids)
    assert np.abs(np.concatenate([got["descriptor"], got["mask"]], 1) - expected.numpy()).max() <= 1e-4


def test_without_sie_at_test_the_model_takes_no_camera_ids(tmp_path):
    model, _ = tiny_model("MODEL.VIT.NUM_CAMERAS", "4", "MODEL.VIT.SIE_AT_TEST", "False")
    wrapper, _ = compare(model, tmp_path / "no_sie_at_test.onnx", None)
    assert wrapper.input_names == ["images"]
