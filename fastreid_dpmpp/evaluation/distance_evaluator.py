"""fast-reid's ``ReidEvaluator`` with the distance matrix as an overridable method: the common parent of the masked
evaluator (SPEC §6, ``masked_evaluator.py``) and the bounded-memory re-ranking evaluator (``rerank.py``)."""
import copy
import itertools
from collections import OrderedDict

import numpy as np
import torch
from sklearn import metrics

from fastreid.evaluation.reid_evaluation import ReidEvaluator
from fastreid.utils import comm

__all__ = ["DistanceReidEvaluator"]


class DistanceReidEvaluator(ReidEvaluator):
    """fast-reid's ``ReidEvaluator`` whose distance matrix comes from ``query_gallery_distance(query, gallery)``
    (subclasses define it): gathering and metrics are the parent's."""

    def _gathered_predictions(self):
        """The parent's gathering: None on the non-main processes of a multi-process run."""
        if comm.get_world_size() > 1:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            return predictions if comm.is_main_process() else None
        return self._predictions

    def _gathered_arrays(self):
        """(features, pids, camids) of every process's images in dataset order, on rank 0; None elsewhere."""
        predictions = self._gathered_predictions()
        if predictions is None:
            return None
        features = torch.cat([p["feats"] for p in predictions], dim=0)
        pids = torch.cat([p["pids"] for p in predictions], dim=0).numpy()
        camids = torch.cat([p["camids"] for p in predictions], dim=0).numpy()
        return features, pids, camids

    def evaluate(self):
        gathered = self._gathered_arrays()
        if gathered is None:
            return {}
        features, pids, camids = gathered
        nq = self._num_query
        dist = self.query_gallery_distance(features[:nq], features[nq:])
        self._results = self._ranking_results(dist, pids[:nq], pids[nq:], camids[:nq], camids[nq:])
        return copy.deepcopy(self._results)

    def _ranking_results(self, dist, query_pids, gallery_pids, query_camids, gallery_camids):
        """The parent's metrics on a given distance matrix (fast-reid's evaluate_rank / evaluate_roc)."""
        from fastreid.evaluation.rank import evaluate_rank
        results = OrderedDict()
        cmc, all_ap, all_inp = evaluate_rank(dist, query_pids, gallery_pids, query_camids, gallery_camids)
        mean_ap, mean_inp = np.mean(all_ap), np.mean(all_inp)
        for rank in (1, 5, 10):
            results[f"Rank-{rank}"] = cmc[rank - 1] * 100
        results["mAP"] = mean_ap * 100
        results["mINP"] = mean_inp * 100
        results["metric"] = (mean_ap + cmc[0]) / 2 * 100
        if self.cfg.TEST.ROC.ENABLED:
            from fastreid.evaluation.roc import evaluate_roc
            scores, labels = evaluate_roc(dist, query_pids, gallery_pids, query_camids, gallery_camids)
            fprs, tprs, _ = metrics.roc_curve(labels, scores)
            for fpr in (1e-4, 1e-3, 1e-2):
                results[f"TPR@FPR={fpr:.0e}"] = tprs[np.argmin(np.abs(fprs - fpr))]
        return results
