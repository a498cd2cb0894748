"""Pictures of SPT (SPEC §4): the Eq. 7 synthesis of a batch drawn on pixels (training works on tokens), and the
sheet of synthesised samples the SPT training hook writes (``OUTPUT_DIR/spt_samples_iter{N}.png``) and
tools/visualize.py draws. Reads tensors and a synthesiser; changes nothing."""
import logging
import os

import torch

from ..modeling.backbones.clip_vit import _patch_conv
from ..modeling.stage3_patch_transfer import _check_masks, _check_partners, overlap_matrix

logger = logging.getLogger("fastreid.dpmpp.spt_samples")

__all__ = ["pixel_masks", "render_pixels", "save_synthesis_figure", "sps_patch_geometry", "save_spt_samples"]


def pixel_masks(masks, image_size, patch_size, stride):
    """Patch-grid masks (B, Hp, Wp) -> pixel masks bool (B, H, W) for pictures.

    Each patch owns a stride×stride cell centred in its (patch_size) window, i.e. pixel y belongs to row
    clamp(⌊(y − (P − S)/2) / S⌋, 0, Hp − 1); the border pixels outside every cell go to the edge patches.
    """
    _check_masks(masks, "pixel_masks")
    height, width = int(image_size[0]), int(image_size[1])
    offset = (patch_size - stride) // 2
    hp, wp = masks.shape[-2:]
    rows = ((torch.arange(height, device=masks.device) - offset).div(stride, rounding_mode="floor")).clamp(0, hp - 1)
    cols = ((torch.arange(width, device=masks.device) - offset).div(stride, rounding_mode="floor")).clamp(0, wp - 1)
    return (masks != 0)[:, rows][:, :, cols]


def render_pixels(images, partners, masks, patch_size, stride):
    """Pixel rendering of Eq. 7 (pictures only): image_i where the partner's mask is salient, image_j elsewhere.

    images: (B, C, H, W); partners (B,); masks: (B, Hp, Wp) on the SPS grid of these images.
    """
    if images.dim() != 4:
        raise ValueError(
            f"fastreid_dpmpp/analysis/spt_samples.py render_pixels: images must be (B, C, H, W), got {tuple(images.shape)}"
        )
    partners = partners.to(images.device)
    _check_partners(partners, images.shape[0], "render_pixels")
    keep = pixel_masks(masks.to(images.device), images.shape[-2:], patch_size, stride)
    has_partner = partners >= 0
    source = torch.where(has_partner, partners, torch.arange(images.shape[0], device=images.device))
    keep_own = keep[source] | ~has_partner.view(-1, 1, 1)             # (B, H, W)
    return torch.where(keep_own.unsqueeze(1), images, images[source])


def _to_display(images, mean, std):
    """Undo the normalisation; mean/std in 0-255 units (fast-reid PIXEL_MEAN) or 0-1 units, auto-detected."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pictures = images.detach().float().cpu() * std_t + mean_t
    if float(mean_t.max()) > 1.0:
        pictures = pictures / 255.0
    return pictures.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def save_synthesis_figure(path, images, synthesized, masks, partners, labels, mean, std, patch_size=16, stride=12,
                          max_rows=8):
    """Write a PNG: one row per synthesised sample, columns anchor | partner (its mask overlaid) | synthesised.

    images / synthesized: normalised (B, 3, H, W) tensors; masks: (B, Hp, Wp) SPS masks; mean / std: the
    normalisation (per channel). When nothing was synthesised, the first rows are drawn with an empty
    partner column. Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    partners = partners.detach().cpu()
    labels = labels.detach().cpu()
    masks = masks.detach().cpu()
    rows = torch.nonzero(partners >= 0).flatten()[:max_rows].tolist()
    if not rows:
        rows = list(range(min(images.shape[0], max_rows)))
    anchors = _to_display(images, mean, std)
    mixed = _to_display(synthesized, mean, std)
    overlay = pixel_masks(masks, images.shape[-2:], patch_size, stride).numpy()
    oiou = overlap_matrix(masks, "oiou")

    figure = Figure(figsize=(3 * 1.5, len(rows) * 2.7 + 0.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows), 3, squeeze=False)
    for axis, title in zip(axes[0], ("anchor", "partner + mask", "synthesised")):
        axis.set_title(title, fontsize=8)
    for line, i in enumerate(rows):
        j = int(partners[i])
        axes[line, 0].imshow(anchors[i])
        axes[line, 0].set_xlabel(f"#{i} id {int(labels[i])}", fontsize=7)
        if j >= 0:
            axes[line, 1].imshow(anchors[j])
            tint = overlay[j].astype(float)
            axes[line, 1].imshow(tint, cmap="autumn", alpha=0.35 * tint, vmin=0, vmax=1)
            axes[line, 1].contour(tint, levels=[0.5], colors="red", linewidths=0.6)
            axes[line, 1].set_xlabel(f"#{j} id {int(labels[j])} OIoU {float(oiou[i, j]):.2f}", fontsize=7)
        else:
            axes[line, 1].set_xlabel("no partner", fontsize=7)
        axes[line, 2].imshow(mixed[i])
        for axis in axes[line]:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(path, format="png")
    logger.debug("SPT synthesis figure written to %s (%d rows)", path, len(rows))
    return path


def sps_patch_geometry(sps_model):
    """(patch size, stride) in pixels of the SPS model's patch embedding (rows; the pictures use square patches)."""
    backbone = sps_model.backbone
    patch = tuple(int(v) for v in _patch_conv(backbone.visual, backbone.family).kernel_size)
    stride = tuple(int(v) for v in backbone.stride)
    return patch[0], stride[0]


@torch.no_grad()
def save_spt_samples(path, synthesizer, pixel_mean, pixel_std, max_rows=8):
    """Draw the synthesiser's last batch (anchor | partner + mask | synthesised) to ``path``; None if none yet."""
    last = synthesizer.last
    if last is None:
        return None
    patch_size, stride = sps_patch_geometry(synthesizer.sps_model)
    synthesized = render_pixels(last["images"], last["partners"], last["masks"], patch_size, stride)
    return save_synthesis_figure(path, last["images"], synthesized, last["masks"], last["partners"],
                                 last["targets"], pixel_mean, pixel_std, patch_size=patch_size, stride=stride,
                                 max_rows=max_rows)
