"""Why a DPM mask does (not) become occlusion-aware: what L_mask asks of the mask, measured on SPT pairs.

For a training batch, SPT synthesises occluded versions x̃_i of some anchors x_i (SPEC §4). The channels the
synthetic occlusion changes least (``agreement_target`` on BN(v) of x̃_i and x_i) are what an occlusion-aware mask
should keep. Against that target this module measures, per synthesised sample:

* ``loss_alignment``: the cosine between −∂L_mask/∂m_i (the direction in which the paper's masked-prototype ArcFace
  loss moves the mask) and the centred target t_i − keep — about 0 means L_mask carries no occlusion signal;
* ``mask_alignment``: the cosine between the learned mask (centred per sample) and the centred target;
* the mask's spread within a sample and across samples, and the gradient's size.
"""
import numpy as np
import torch
import torch.nn.functional as F

from ..modeling.losses import cross_entropy_with_ignored_classes
from ..modeling.mask_supervision import agreement_target

__all__ = ["mask_learning_statistics"]


def _centred_cosine(a, b):
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return F.cosine_similarity(a, b, dim=1)


def _bn_eval(neck, v):
    return F.batch_norm(v, neck.running_mean, neck.running_var, neck.weight, neck.bias, False)


def mask_learning_statistics(model, synthesizer, batches, keep=0.5):
    """Means over the synthesised samples of ``batches`` (fast-reid training batches) for a trained DPMPP model
    (visual mask) and an SPT synthesiser; the model is put in eval mode (BN with running statistics)."""
    model.eval()
    heads = model.heads
    rows_seen, loss_alignment, mask_alignment, within, grad_norm = 0, [], [], [], []
    masks_all = []
    for batch in batches:
        images = model.preprocess_image(batch)
        targets = batch["targets"].long()
        camids = batch["camids"].long() if "camids" in batch else None
        with torch.no_grad():
            info = synthesizer.synthesize(images, camids, targets)
            clean = model.backbone.forward_features(images, camids)
            synthetic = model.backbone.forward_features(images, camids, patch_transform=info["patch_transform"])
        rows = info["partners"] >= 0
        if not bool(rows.any()):
            continue
        mask = heads.mask_from(synthetic).detach().requires_grad_(True)
        neck = _bn_eval(heads.bottleneck, synthetic["cls"])
        logits = heads.branch_outputs(synthetic["cls"], mask, targets, synthetic.get("proj"))["mask_logits"]
        loss = cross_entropy_with_ignored_classes(logits, targets, epsilon=0.0, ignored_classes=info["ignored_classes"])
        grad, = torch.autograd.grad(loss * len(targets), mask)      # per-sample gradients (undo the batch mean)
        target = agreement_target(neck, _bn_eval(heads.bottleneck, clean["cls"]), keep)
        loss_alignment.append(_centred_cosine(-grad[rows], target[rows]))
        mask_alignment.append(_centred_cosine(mask.detach()[rows], target[rows]))
        within.append(mask.detach()[rows].std(dim=1))
        grad_norm.append(grad[rows].norm(dim=1))
        masks_all.append(mask.detach()[rows])
        rows_seen += int(rows.sum())
    if not rows_seen:
        raise ValueError("no SPT-synthesised sample in the given batches")
    cat = lambda xs: torch.cat(xs).numpy()
    masks = torch.cat(masks_all)
    return dict(samples=rows_seen, loss_alignment=float(np.mean(cat(loss_alignment))),
                loss_alignment_std=float(np.std(cat(loss_alignment))),
                mask_alignment=float(np.mean(cat(mask_alignment))), mask_within_std=float(np.mean(cat(within))),
                mask_across_std=float(masks.std(dim=0).mean()), gradient_norm=float(np.mean(cat(grad_norm))))
