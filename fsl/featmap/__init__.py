"""FeatMap (Krey, Neukirch, Strodthoff, arXiv 2605.11203) on fsl's models: manipulate images, map
the feature maps of the originals to those of the manipulated images (closed-form shared / global
linear maps, orthogonal Procrustes, baselines, trained MLP / CNN / transformer), and measure the
maps (effective rank, weight vs bias) and their predictions (cosine, class probabilities through the
rest of the network, FeatInv decodings). Pure torch; no Lightning here."""
from fsl.featmap.evaluate import class_metrics, decoded_metrics, js_divergence, masked_cosine, position_cosine
from fsl.featmap.manipulations import MANIPULATIONS, apply_manipulation, grid_move
from fsl.featmap.mappings import (AffineMap, GlobalLinearMap, fit_global_linear, fit_procrustes, fit_shared_linear,
                                  from_positions, to_positions)
from fsl.featmap.spectra import effective_rank, spectrum_metrics, weight_bias_metrics
from fsl.featmap.pipeline import MAPPINGS, FeatMapResult, featmap_study
from fsl.featmap.train import featmap_loss, fit_sgd

__all__ = ["MANIPULATIONS", "apply_manipulation", "grid_move", "AffineMap", "GlobalLinearMap", "fit_shared_linear",
           "fit_procrustes", "fit_global_linear", "to_positions", "from_positions", "effective_rank",
           "spectrum_metrics", "weight_bias_metrics", "position_cosine", "masked_cosine", "class_metrics",
           "js_divergence", "decoded_metrics", "featmap_loss", "fit_sgd", "MAPPINGS", "FeatMapResult", "featmap_study"]
