"""Where Stage II's SPS puts its identity set (SPEC §3): summary numbers and a picture of the per-patch saliency
of several SPS models on the same images. The persons of the synthetic benchmark stand in the middle columns of
the crop, so the share of salient patches in the centre columns against the border columns tells person from
background without a segmentation. Reads tensors; trains nothing."""
import numpy as np
import torch

from ..modeling.stage3_patch_transfer import binarize_saliency
from .figures import _bare, _suptitle, new_figure, save_figure

__all__ = ["saliency_layout", "plot_saliency_maps"]


def saliency_layout(saliency, grid, threshold=0.5):
    """saliency (B, N) in [0, 1] on a row-major (Hp, Wp) grid -> dict of floats:

    mean_saliency        mean of the soft saliency (what L_budget drives to rho);
    salient_fraction     fraction of patches with saliency >= threshold (the identity set SPT uses);
    saturated_fraction   fraction of patches with saliency < 0.05 or > 0.95 (a near-binary map);
    centre_salient       salient fraction in the middle third of the columns (where the person stands);
    border_salient       salient fraction in the outermost column on each side (background);
    template_agreement   mean fraction of an image's patches whose salient / not-salient label equals the majority
                         label of that patch over the images (1.0: one fixed spatial template for every image).
    """
    hp, wp = int(grid[0]), int(grid[1])
    saliency = torch.as_tensor(saliency, dtype=torch.float32)
    if saliency.dim() != 2 or saliency.shape[1] != hp * wp or wp < 3:
        raise ValueError(f"fastreid_dpmpp/analysis/sps_saliency.py: saliency must be (B, {hp}*{wp}) with at least "
                         f"3 columns, got {tuple(saliency.shape)} for grid {(hp, wp)}")
    maps = saliency.reshape(-1, hp, wp)
    salient = binarize_saliency(saliency, (hp, wp), threshold).float()
    third = wp // 3
    centre = salient[:, :, third:wp - third]
    border = torch.cat([salient[:, :, :1], salient[:, :, -1:]], dim=2)
    saturated = ((maps < 0.05) | (maps > 0.95)).float()
    majority = (salient.mean(dim=0, keepdim=True) >= 0.5).float()
    return dict(template_agreement=float((salient == majority).float().mean()),
                mean_saliency=float(maps.mean()), salient_fraction=float(salient.mean()),
                saturated_fraction=float(saturated.mean()), centre_salient=float(centre.mean()),
                border_salient=float(border.mean()))


def plot_saliency_maps(images, maps, labels, path, title=None):
    """images (B, H, W, 3) uint8; maps: list over models of (B, Hp, Wp) saliency; labels: one per model.
    One column per image: the image, then each model's saliency map (0 dark, 1 bright)."""
    images = np.asarray(images)
    if len(maps) != len(labels) or not maps:
        raise ValueError(f"fastreid_dpmpp/analysis/sps_saliency.py: {len(maps)} saliency maps for {len(labels)} labels")
    columns, rows = len(images), 1 + len(maps)
    figure = new_figure(1.2 * columns + 1.2, 2.3 * rows)
    axes = np.atleast_2d(figure.subplots(rows, columns, squeeze=False))
    for column in range(columns):
        axes[0, column].imshow(images[column])
        for row, saliency in enumerate(maps, start=1):
            axes[row, column].imshow(np.asarray(saliency[column]), vmin=0.0, vmax=1.0, cmap="viridis")
    for axis in axes.ravel():
        _bare(axis)
    for row, label in enumerate(labels, start=1):
        axes[row, 0].set_ylabel(label, fontsize=8)
    if title:
        _suptitle(figure, title)
    return save_figure(figure, path)
