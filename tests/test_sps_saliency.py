"""analysis/sps_saliency.py: the layout numbers of an SPS saliency map, checked on hand-made maps."""
import pytest
import torch

from fastreid_dpmpp.analysis.sps_saliency import plot_saliency_maps, saliency_layout


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
