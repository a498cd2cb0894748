"""Where Stage II's SPS puts its identity set (SPEC §3): summary numbers and a picture of the per-patch saliency
of several SPS models on the same images. The persons of the synthetic benchmark stand in the middle columns of
the crop, so the share of salient patches in the centre columns against the border columns tells person from
background without a segmentation. Reads tensors; trains nothing."""
import numpy as np
import torch

from ..modeling.stage3_patch_transfer import binarize_saliency
from .figures import _bare, _suptitle, new_figure, save_figure

__all__ = ["saliency_layout", "occluder_in_identity_set", "plot_saliency_maps"]


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


def occluder_in_identity_set(salient, occluder, template):
    """How much of an occluder SPT can hand over. Eq. 7 takes the partner's tokens only outside the partner's
    identity set, so an occluder that the partner's SPS keeps inside its identity set is never pasted on the anchor.

    salient (B, N) bool: identity sets of occluded images; occluder (B, N) bool: the patches their occluder covers;
    template (N,) bool: where the person stands (e.g. the majority identity set of the unoccluded twins).
    Returns fractions:

    occluder_on_person     |occ ∧ T| / |occ|: the occluder's patches that lie on the person;
    occluder_kept          |occ ∧ T ∧ S| / |occ ∧ T|: of those, kept in the identity set (not transferable);
    visible_kept           |¬occ ∧ T ∧ S| / |¬occ ∧ T|: the same rate on the person's unoccluded patches;
    occluder_transferable  |occ ∧ ¬S| / |occ|: the occluder's patches a partner hands over.
    """
    salient, occluder = torch.as_tensor(salient).bool(), torch.as_tensor(occluder).bool()
    template = torch.as_tensor(template).bool().expand_as(salient)
    if salient.shape != occluder.shape:
        raise ValueError(f"fastreid_dpmpp/analysis/sps_saliency.py: identity sets {tuple(salient.shape)} and occluder "
                         f"patches {tuple(occluder.shape)} differ in shape")

    def ratio(part, whole):
        whole = int(whole.sum())
        return float(part.sum()) / whole if whole else float("nan")

    on_person, visible_person = occluder & template, ~occluder & template
    return dict(occluder_on_person=ratio(on_person, occluder), occluder_kept=ratio(on_person & salient, on_person),
                visible_kept=ratio(visible_person & salient, visible_person),
                occluder_transferable=ratio(occluder & ~salient, occluder))


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
