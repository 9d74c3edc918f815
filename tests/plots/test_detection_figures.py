"""Detection figures: ROC and histogram PNGs from detection_table output."""
import numpy as np
import torch

from fsl.adversarial.metrics import detection_table
from fsl.plots.detection_figures import evaluation_scores, roc_figure, score_histograms


def test_roc_and_histogram_figures(tmp_path):
    g = torch.Generator().manual_seed(0)
    scores = {name: (torch.randn(100, generator=g), torch.randn(30, generator=g) + shift)
              for name, shift in [("margin", 3.0), ("ambiguity", 1.0), ("msp", 0.5), ("mahalanobis", 0.0)]}
    flat, curves = detection_table(scores)
    fig = roc_figure(curves, path=tmp_path / "roc.png")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == 4
    assert any(f"AUROC {flat['auroc/margin']:.3f}" in t for t in labels)
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig2 = score_histograms(scores, path=tmp_path / "hist.png")
    assert len(fig2.axes) == 4 and (tmp_path / "hist.png").stat().st_size > 1000
    assert not list(tmp_path.glob(".*.tmp"))


def test_evaluation_scores_signs():
    ps = {"success": torch.tensor([True, False]), "clean_margin": torch.tensor([2.0, 3.0]),
          "adv_margin": torch.tensor([0.1, 1.0]), "clean_hull": torch.tensor([1.0, 1.0]),
          "adv_hull": torch.tensor([0.5, 1.0]), "clean_msp": torch.tensor([0.9, 0.8]),
          "adv_msp": torch.tensor([0.5, 0.7]), "clean_mahalanobis": torch.tensor([1.0, 2.0]),
          "adv_mahalanobis": torch.tensor([3.0, 4.0]), "clean_energy": torch.tensor([-5.0, -4.0]),
          "adv_energy": torch.tensor([-1.0, -2.0]), "clean_knn": torch.tensor([0.2, 0.3]),
          "adv_knn": torch.tensor([0.6, 0.7]), "clean_fdbd": torch.tensor([-0.5, -0.4]),
          "adv_fdbd": torch.tensor([-0.1, -0.2])}
    s = evaluation_scores(ps)
    np.testing.assert_allclose(s["margin"][1], [-0.1])
    np.testing.assert_allclose(s["ambiguity"][0], [-1.0, -2.0])
    np.testing.assert_allclose(s["msp"][1], [-0.5])
    np.testing.assert_allclose(s["mahalanobis"][1], [3.0])
    np.testing.assert_allclose(s["energy"][1], [-1.0])
    np.testing.assert_allclose(s["knn"][0], [0.2, 0.3])
    np.testing.assert_allclose(s["fdbd"][1], [-0.1])
