"""Every statistic of DESIGN A2-A4 in one call: :class:`FeatureGeometry`."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .balls import ambiguity, ball_counts, lipschitz, region_labels, union_coverage
from .flip import flip_margins
from .hull import hull_distances

Tensor = torch.Tensor

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass
class GeometryReport:
    """``stats``: plain dict of Python floats / ints (keys without a namespace prefix);
    ``per_sample``: tensors for the analysed test subset (``index`` = rows of the test set)."""

    stats: dict
    per_sample: dict = field(default_factory=dict)


def _describe(prefix: str, v: Tensor, out: dict, quantiles=QUANTILES) -> None:
    v = v.detach().to(torch.float64)
    fin = v[torch.isfinite(v)]
    out[f"{prefix}/frac_inf"] = float(torch.isinf(v).float().mean()) if v.numel() else 0.0
    if fin.numel() == 0:
        return
    out[f"{prefix}/mean"] = float(fin.mean())
    out[f"{prefix}/median"] = float(fin.median())
    out[f"{prefix}/min"] = float(fin.min())
    out[f"{prefix}/max"] = float(fin.max())
    qs = torch.quantile(fin, torch.tensor(quantiles, dtype=torch.float64, device=fin.device))
    for q, val in zip(quantiles, qs):
        out[f"{prefix}/q{int(round(q * 100)):02d}"] = float(val)


class FeatureGeometry:
    """Feature-space geometry of a trained head relative to a training set.

    Example::

        geo = FeatureGeometry(train_feats, train_labels, model.head.weight, model.head.bias,
                              lower=model.feature_domain.lower, upper=model.feature_domain.upper)
        report = geo.analyze(test_feats, test_labels, max_queries=2000)
        report.stats["margin/median"], report.per_sample["ambiguity"]

    Args:
        train_features: ``(N, f)``; train_labels: ``(N,)`` int.
        weight, bias: the head (``(n, f)``, ``(n,)``); lower, upper: feature domain.
        device: where to compute (default: the features' device).
    """

    def __init__(self, train_features: Tensor, train_labels: Tensor, weight: Tensor, bias: Tensor,
                 lower=None, upper=None, device=None, dtype: torch.dtype = torch.float64):
        dev = device or train_features.device
        self.device = dev
        self.dtype = dtype
        self.train = train_features.detach().to(device=dev)
        self.train_labels = torch.as_tensor(train_labels).to(dev).long()
        self.weight = weight.detach().to(device=dev, dtype=dtype)
        self.bias = bias.detach().to(device=dev, dtype=dtype)
        self.lower, self.upper = lower, upper
        self._train_flip = None
        self._train_idx = None

    def margins(self, features: Tensor, **kw):
        return flip_margins(features.to(self.device), self.weight, self.bias, self.lower,
                            self.upper, **kw)

    def analyze(self, test_features: Tensor, test_labels: Tensor | None = None,
                max_queries: int | None = 2000, max_train_balls: int | None = 10000,
                hull: bool = True, balls: bool = True, seed: int = 0, hull_tol: float = 1e-6,
                hull_kw: dict | None = None, flip_kw: dict | None = None) -> GeometryReport:
        """All A2-A4 statistics for (a random subset of) the test set.

        Args:
            max_queries: test samples analysed (margins, hull, ambiguity, union); None = all.
            max_train_balls: training balls used for the ball statistics / union; None = all.
            hull / balls: switch the (costlier) hull and ball parts off.
        """
        dev = self.device
        g = torch.Generator().manual_seed(seed)
        Xt = test_features.detach().to(dev)
        T = Xt.shape[0]
        idx = torch.arange(T) if max_queries is None or max_queries >= T else \
            torch.randperm(T, generator=g)[:max_queries].sort().values
        idx = idx.to(dev)
        Xq = Xt[idx]
        yq = torch.as_tensor(test_labels).to(dev).long()[idx] if test_labels is not None else None
        st: dict = {}
        ps: dict = {"index": idx}
        st["lipschitz"] = lipschitz(self.weight)
        st["num_queries"] = int(idx.numel())

        fr = self.margins(Xq, **(flip_kw or {}))
        ps.update(margin=fr.margin, closest=fr.closest, pred=fr.pred)
        _describe("margin", fr.margin, st)
        st["margin/certified_frac"] = float(fr.certified.all(1).float().mean())
        st["flip/frac_boundary_missing"] = float(torch.isinf(fr.distances).float().mean() * fr.distances.shape[1]
                                                 / max(fr.distances.shape[1] - 1, 1))
        if yq is not None:
            st["accuracy"] = float((fr.pred == yq).float().mean())

        if balls:
            N = self.train.shape[0]
            tidx = torch.arange(N) if max_train_balls is None or max_train_balls >= N else \
                torch.randperm(N, generator=g)[:max_train_balls].sort().values
            tidx = tidx.to(dev)
            trf = self.margins(self.train[tidx], **(flip_kw or {}))
            _describe("train_margin", trf.margin, st)
            # balls of radius d_min stay in their centre's decision region: prune by region
            reg_tr = region_labels(self.train, self.weight, self.bias, self.lower, self.upper)
            reg_q = region_labels(Xq, self.weight, self.bias, self.lower, self.upper)
            cnt = ball_counts(self.train[tidx], trf.margin, self.train, exclude_self=tidx,
                              center_regions=reg_tr[tidx], point_regions=reg_tr)
            st["ball/frac_with_other"] = float((cnt > 0).float().mean())
            st["ball/mean_count"] = float(cnt.float().mean())
            st["ball/max_count"] = int(cnt.max()) if cnt.numel() else 0
            st["ball/num_centers"] = int(tidx.numel())
            cov = union_coverage(Xq, self.train[tidx], trf.margin, reg_q, reg_tr[tidx])
            st["ball/union_coverage"] = float(cov.float().mean())
            tc = ball_counts(Xq, fr.margin, Xq, exclude_self=True, center_regions=reg_q, point_regions=reg_q)
            st["ball/test/frac_with_other"] = float((tc > 0).float().mean())
            st["ball/test/mean_count"] = float(tc.float().mean())
            st["ball/test/max_count"] = int(tc.max()) if tc.numel() else 0
            ps.update(ball_count_test=tc, in_train_union=cov)

        if hull:
            hr = hull_distances(Xq, self.train, tol=hull_tol, **(hull_kw or {}))
            dh = hr.distance
            amb = ambiguity(fr.margin, dh)
            ps.update(hull_distance=dh, ambiguity=amb, hull_certified=hr.certified,
                      hull_projection=hr.projection, support_index=hr.support_index,
                      support_weight=hr.support_weight)
            inside = hr.distance <= hr.stats["inside_tol"]
            st["hull/frac_outside"] = float((~inside).float().mean())
            st["hull/certified_frac"] = float(hr.certified.float().mean())
            st["hull/max_relative_gap"] = float(hr.relative_gap.max())
            _describe("hull/distance", dh, st)
            st["hull/distance_median"] = st.get("hull/distance/median", float("nan"))
            st["frac_hull_lt_margin"] = float((dh < fr.margin).float().mean())
            _describe("ambiguity", amb, st)
            st["ambiguity/frac_negative"] = float((amb < 0).float().mean())
            st["hull/support_size_mean"] = float((hr.support_index >= 0).sum(1).float().mean())
            pl = torch.addmm(self.bias, hr.projection.to(self.dtype), self.weight.T).argmax(1)
            ps["hull_projection_pred"] = pl
            st["hull/projection_pred_agreement"] = float((pl == fr.pred).float().mean())
            if yq is not None:
                st["hull/projection_accuracy"] = float((pl == yq).float().mean())
                lab = self.train_labels[hr.support_index.clamp_min(0)]
                same = ((lab == yq[:, None]) & (hr.support_index >= 0)).to(hr.support_weight.dtype)
                agree = (same * hr.support_weight).sum(1)
                ps["support_label_agreement"] = agree
                st["hull/support_label_agreement"] = float(agree.mean())
                st["hull/support_label_agreement_unweighted"] = float(
                    (same.sum(1) / (hr.support_index >= 0).sum(1).clamp_min(1)).mean())
        return GeometryReport(stats=st, per_sample=ps)
