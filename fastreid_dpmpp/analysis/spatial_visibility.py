"""What a spatial visibility mask could do where a channel mask cannot (issue 13: the masks; the moonshot).

A channel mask has to guess which channels the occluder moved, which depends on what the occluder hides
(``mask_predictability``). The occluder itself is in plain sight in the query. This reference hides the patches
the occluder covers from the ViT's attention (``ClipViT.forward_tokens(visible_patches=...)``), so that the
class token is computed from the visible body only, and compares it with hiding as many random patches:

* ``occluder_patches``: the patches covered by the occluder, read off the difference between the occluded query
  and its unoccluded twin (both rendered by the generator; the twin is only used to locate the occluder, which a
  visibility predictor would have to find in the query itself);
* ``random_patches_like``: as many patches per image, at random (the control);
* ``OccluderPatchProbe``: the occluder's patches as a linear probe reads them off the query's own patch tokens.
"""
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["PIXEL_TOLERANCE", "MIN_COVER", "occluder_patches", "random_patches_like", "OccluderPatchProbe",
           "patch_agreement"]

PIXEL_TOLERANCE = 24.0   # grey levels (0-255): above JPEG noise, below any drawn occluder's contrast
MIN_COVER = 0.5          # a patch is hidden when more than half of its window is occluder


def occluder_patches(occluded, holistic, patch_size, stride, pixel_tolerance=PIXEL_TOLERANCE, min_cover=MIN_COVER):
    """(B, N) bool, row-major over the patch grid: patches of the (B, 3, H, W) 0-255 ``occluded`` images whose
    window (``patch_size``, ``stride``: the patch embedding's) has more than ``min_cover`` of its pixels differing
    from ``holistic`` by more than ``pixel_tolerance`` in some colour channel."""
    if occluded.shape != holistic.shape:
        raise ValueError(f"occluded images {tuple(occluded.shape)} and their twins {tuple(holistic.shape)} differ "
                         "in shape")
    differs = ((occluded.float() - holistic.float()).abs().amax(dim=1, keepdim=True) > pixel_tolerance).float()
    cover = F.avg_pool2d(differs, kernel_size=tuple(patch_size), stride=tuple(stride))
    return (cover > min_cover).flatten(1)


def random_patches_like(hidden, generator=None):
    """(B, N) bool with as many True entries per row as ``hidden``, at random positions."""
    scores = torch.rand(hidden.shape, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < hidden.sum(dim=1, keepdim=True)


class OccluderPatchProbe:
    """Can the query itself tell where its occluder is? A logistic regression from each patch's last-block token
    (standardised) and its grid position (one-hot) to "the occluder covers this patch", fitted on one split's
    queries (labels from ``occluder_patches``); a patch is called occluded at probability > 0.5."""

    def fit(self, tokens, hidden):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        self.model.fit(self._rows(tokens), np.asarray(hidden, bool).reshape(-1))
        return self

    def predict(self, tokens):
        """(B, N) bool."""
        tokens = np.asarray(tokens)
        return self.model.predict_proba(self._rows(tokens))[:, 1].reshape(tokens.shape[:2]) > 0.5

    @staticmethod
    def _rows(tokens):
        tokens = np.asarray(tokens, float)
        batch, patches, _ = tokens.shape
        position = np.tile(np.eye(patches), (batch, 1))
        return np.concatenate([tokens.reshape(batch * patches, -1), position], axis=1)


def patch_agreement(predicted, truth):
    """Accuracy and intersection-over-union of predicted vs true occluded patches, (B, N) bool each."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    union = (predicted | truth).sum()
    return dict(accuracy=float((predicted == truth).mean()),
                iou=float((predicted & truth).sum() / union) if union else 1.0)
