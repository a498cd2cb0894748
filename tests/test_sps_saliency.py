"""analysis/sps_saliency.py: the layout numbers of an SPS saliency map, checked on hand-made maps."""
import pytest
import torch

from fastreid_dpmpp.analysis.sps_saliency import occluder_in_identity_set, plot_saliency_maps, saliency_layout


def test_a_person_shaped_map_is_salient_in_the_centre_and_not_at_the_border():
    person = torch.zeros(2, 4, 6)
    person[:, :, 2:4] = 1.0                      # the two middle columns of 6: the centre third
    person[1, 0, 0] = 0.6                        # one soft border patch above the threshold
    summary = saliency_layout(person.reshape(2, -1), (4, 6))
    assert summary["centre_salient"] == 1.0
    assert summary["border_salient"] == pytest.approx(1 / 16)     # 1 of the 2 x 4 x 2 border patches
    assert summary["salient_fraction"] == pytest.approx((16 + 1) / 48)
    assert summary["saturated_fraction"] == pytest.approx(47 / 48)
    assert summary["mean_saliency"] == pytest.approx((16 + 0.6) / 48)
    assert summary["template_agreement"] == pytest.approx(47 / 48)   # all but the one soft patch of image 1


def test_template_agreement_is_low_for_image_specific_maps():
    maps = torch.zeros(4, 2, 3)
    for i in range(4):            # each image salient in another patch of row 0 / row 1 alternately
        maps[i, i % 2, :] = 1.0
    summary = saliency_layout(maps.reshape(4, -1), (2, 3))
    # majority per patch: a tie (2 of 4) counts as salient, so every image agrees on its salient row only: 3 of 6
    assert summary["template_agreement"] == pytest.approx(0.5)


def test_an_inverted_map_is_salient_at_the_border():
    background = torch.ones(1, 3, 3)
    background[:, :, 1] = 0.0
    summary = saliency_layout(background.reshape(1, -1), (3, 3))
    assert summary["centre_salient"] == 0.0 and summary["border_salient"] == 1.0


def test_bad_shapes_name_the_expected_grid(tmp_path):
    with pytest.raises(ValueError, match=r"must be \(B, 4\*6\)"):
        saliency_layout(torch.zeros(2, 10), (4, 6))
    with pytest.raises(ValueError, match="2 saliency maps for 1 labels"):
        plot_saliency_maps(torch.zeros(1, 8, 4, 3).numpy(), [torch.zeros(1, 2, 2)] * 2, ["a"], str(tmp_path / "x.png"))


def test_the_picture_is_written(tmp_path):
    images = (torch.rand(3, 16, 8, 3) * 255).to(torch.uint8).numpy()
    path = plot_saliency_maps(images, [torch.rand(3, 4, 3), torch.rand(3, 4, 3)], ["a", "b"], str(tmp_path / "s.png"))
    assert path == str(tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0


def test_occluder_in_identity_set_counts_by_hand():
    template = torch.tensor([0, 1, 1, 1, 1, 0], dtype=torch.bool)            # the person: patches 1-4
    occluder = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    salient = torch.tensor([[0, 1, 0, 1, 0, 0], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    numbers = occluder_in_identity_set(salient, occluder, template)
    assert numbers["occluder_on_person"] == pytest.approx(2 / 3)    # patches 3, 4 of the occluder's 3, 4, 5
    assert numbers["occluder_kept"] == pytest.approx(1 / 2)         # patch 3 kept, patch 4 not
    assert numbers["visible_kept"] == pytest.approx(4 / 6)          # image 0: 1, 2 -> 1 kept; image 1: 1-4 -> 3
    assert numbers["occluder_transferable"] == pytest.approx(2 / 3)  # patches 4, 5 outside the identity set
    with pytest.raises(ValueError, match="differ in shape"):
        occluder_in_identity_set(salient[:1], occluder, template)


def test_tool_with_twins_prints_both_tables(data_root, tmp_path, capsys, load_tool):
    import glob
    import os

    from _tiny import TINY_INFERENCE_MODEL
    from fastreid_dpmpp.engine import load_config
    from fastreid_dpmpp.engine.trainer import DPMPPTrainer
    tool = load_tool("sps_saliency")
    config = os.path.join("configs", "Synthetic", "dpmpp.yml")
    model = TINY_INFERENCE_MODEL + ["MODEL.BACKBONE.STRIDE_SIZE", "(8, 8)", "MODEL.DEVICE", "cpu"]   # a 7 x 3 grid
    torch.manual_seed(0)
    sps = DPMPPTrainer.build_model(load_config(config, model + ["MODEL.META_ARCHITECTURE", "SPSModel"]))
    torch.save({"model": sps.state_dict()}, tmp_path / "sps_final.pth")
    queries = glob.glob(os.path.join(data_root, "**", "query", "*.jpg"), recursive=True)
    assert queries
    tool.main(["--config-file", config, "--sps", f"tiny={tmp_path / 'sps_final.pth'}", "--images",
               os.path.join(os.path.dirname(queries[0]), "*.jpg"), "--twins", "--output", str(tmp_path / "maps.png"),
               *model])
    printed = capsys.readouterr().out
    assert (tmp_path / "maps.png").is_file()
    assert printed.count("| tiny |") == 2 and "occluder patches a partner hands over" in printed
    with pytest.raises(SystemExit, match="query_holistic"):
        tool.main(["--config-file", config, "--sps", f"tiny={tmp_path / 'sps_final.pth'}", "--images",
                   os.path.join(data_root, "**", "bounding_box_train", "*.jpg"), "--twins",
                   "--output", str(tmp_path / "other.png"), *model])
