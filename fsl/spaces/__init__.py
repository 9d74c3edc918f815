"""Signal spaces of layers (Pattichis & Pattichis, SSIAI 2024; docs/inversion.md): pure torch, float64 linear algebra.

* :func:`fundamental_subspaces`, :func:`layer_matrices`, :func:`layer_spectra`,
  :func:`all_layer_subspaces` -- SVD, numerical rank, condition numbers and the four fundamental
  subspaces of every Linear and Conv2d layer (kernels as ``out x in*kh*kw``).
* :func:`first_layer_signal_images`, :func:`class_residuals` -- ``sigma_i v_i`` images, residual
  images and residual energies.
* :func:`selu_inverse`, :func:`selu_invert` -- layer-wise SELU inversion.
* :func:`ideal_outputs`, :func:`ideal_inputs` -- ideal-output images per class.
"""
from fsl.spaces.ideal import INITS, IdealInputs, ideal_inputs, ideal_outputs, refine_to_outputs
from fsl.spaces.selu_inversion import (SELU_LOWER, SeluInversion, SeluLayer, forward_chain, selu64,
                                       selu_chain, selu_inverse, selu_invert)
from fsl.spaces.signal import (ClassResiduals, SignalImages, class_residuals, first_layer,
                               first_layer_signal_images, layer_input)
from fsl.spaces.subspaces import (FundamentalSubspaces, LayerMatrix, LayerSpectrum, all_layer_subspaces,
                                  fundamental_subspaces, layer_matrices, layer_spectra, rank_tolerance)

__all__ = [
    "fundamental_subspaces", "FundamentalSubspaces", "layer_matrices", "LayerMatrix", "layer_spectra",
    "LayerSpectrum", "all_layer_subspaces", "rank_tolerance",
    "first_layer", "first_layer_signal_images", "SignalImages", "class_residuals", "ClassResiduals",
    "layer_input",
    "selu64", "selu_inverse", "selu_chain", "selu_invert", "forward_chain", "SeluInversion", "SeluLayer",
    "SELU_LOWER",
    "ideal_outputs", "ideal_inputs", "IdealInputs", "refine_to_outputs", "INITS",
]
