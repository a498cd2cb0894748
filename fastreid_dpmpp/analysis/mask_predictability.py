"""Can a channel mask computed from the occluded query recover the oracle mask's gain? (issue 13, points 2 and 6)

The oracle channel mask (``evaluation.protocol.oracle_channel_masks``) keeps the channels of a query descriptor
that its occluder moves least, which it reads off the query's unoccluded twin. A method only sees the occluded
query. This module fits predictors of the oracle's per-channel change |q̂_occ − q̂_hol| on one split (queries and
their twins) and scores, on other splits, masked matching with the mask that keeps the channels each predictor
expects to change least — the same keep fraction and the same matching as the oracle:

* ``constant``          the mean change over the fitted queries: one mask for every query (the control);
* ``occluder_kind``     the mean change per occluder kind (given from the benchmark's meta.json: it knows the kind,
                        not the image);
* ``ridge_descriptor``  ridge regression from the query's descriptor;
* ``ridge_tokens``      ridge regression from the last block's patch tokens (where the occluder is and looks like).

A predictor whose mask beats the constant one has found query-specific information in the query; one that does
not shows that the oracle's gain comes from what the occluder hides (the twin), which no mask computed from the
query can know.
"""
import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..evaluation import protocol as P
from ..evaluation.masked_matching import SPEC_PLACEMENT

__all__ = ["PREDICTORS", "RIDGE_ALPHAS", "QueryInputs", "fit_predictors", "score_masks"]

RIDGE_ALPHAS = (1e-1, 1e0, 1e1, 1e2, 1e3, 1e4, 1e5)
PREDICTORS = ("constant", "occluder_kind", "ridge_descriptor", "ridge_tokens")


class QueryInputs:
    """The occluded queries of one split: what a predictor may read (descriptors (Q, D), flattened patch tokens
    (Q, N·W), occluder kinds (Q,)), their labels (pids, camids), and their unoccluded twins' descriptors, from
    which the oracle change (Q, D) that the predictors fit and the oracle mask are computed."""

    def __init__(self, descriptors, tokens, kinds, pids, camids, holistic):
        self.descriptors = np.asarray(descriptors, float)
        self.tokens = np.asarray(tokens, float).reshape(len(self.descriptors), -1)
        self.kinds = np.asarray(kinds, dtype=object)
        self.pids, self.camids = np.asarray(pids), np.asarray(camids)
        self.holistic = np.asarray(holistic, float)
        self.change = P.channel_change(self.descriptors, self.holistic)


class _Constant:
    def fit(self, inputs):
        self.mean = inputs.change.mean(0)
        return self

    def predict(self, inputs):
        return np.tile(self.mean, (len(inputs.descriptors), 1))


class _KindMean(_Constant):
    def fit(self, inputs):
        super().fit(inputs)
        self.by_kind = {kind: inputs.change[inputs.kinds == kind].mean(0) for kind in set(inputs.kinds.tolist())}
        return self

    def predict(self, inputs):
        return np.stack([self.by_kind.get(kind, self.mean) for kind in inputs.kinds])


class _Ridge:
    """Standardised inputs, multi-output ridge, alpha chosen by 5-fold cross-validation on the fitted split."""

    def __init__(self, field, alphas=RIDGE_ALPHAS):
        self.field, self.alphas = field, alphas

    def fit(self, inputs):
        self.model = make_pipeline(StandardScaler(), RidgeCV(alphas=self.alphas, cv=5))
        self.model.fit(getattr(inputs, self.field), inputs.change)
        return self

    @property
    def alpha(self):
        return float(self.model[-1].alpha_)

    def predict(self, inputs):
        return self.model.predict(getattr(inputs, self.field))


def _build(name):
    return {"constant": _Constant, "occluder_kind": _KindMean,
            "ridge_descriptor": lambda: _Ridge("descriptors"), "ridge_tokens": lambda: _Ridge("tokens")}[name]()


def fit_predictors(inputs, names=PREDICTORS):
    """{name: fitted predictor} on ``inputs``."""
    unknown = sorted(set(names) - set(PREDICTORS))
    if unknown:
        raise ValueError(f"unknown mask predictor(s) {unknown}; expected some of {list(PREDICTORS)}")
    return {name: _build(name).fit(inputs) for name in names}


def score_masks(predictors, inputs, gallery, keep_fraction, learned_masks=None, learned_dims=None,
                placement=SPEC_PLACEMENT):
    """Per-query metrics (``protocol.per_query_metrics``) of ``inputs``' queries ranked against ``gallery``
    (dict of descriptors, pids, camids): plain cosine, the oracle mask, each predictor's mask (all keeping
    ``keep_fraction`` of the channels, over the whole descriptor), and the model's learned mask when given (over
    its ``learned_dims`` leading dims, at ``placement``). Returns {row: metrics}."""
    q, g = inputs.descriptors, gallery["descriptors"]

    def scored(dist):
        return P.per_query_metrics(dist, inputs.pids, gallery["pids"], inputs.camids, gallery["camids"])

    rows = {"plain": scored(P.query_distance(q, g)),
            "oracle": scored(P.query_distance(q, g, P.oracle_channel_masks(q, inputs.holistic, keep_fraction)))}
    for name, predictor in predictors.items():
        masks = P.keep_least_changed(predictor.predict(inputs), keep_fraction)
        rows[name] = scored(P.query_distance(q, g, masks))
    if learned_masks is not None:
        rows["learned"] = scored(P.query_distance(q, g, learned_masks, learned_dims, placement))
    return rows
