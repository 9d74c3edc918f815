"""Learned inversion of feature maps back to images (FeatInv: Neukirch, Vielhaben, Strodthoff,
arXiv 2505.21032), on fsl's own models. Pure torch; no Lightning here."""
from fsl.featinv.decoders import ConvDecoder, featinv_loss, fit_decoder, reencoding_cosine
from fsl.featinv.metrics import reconstruction_metrics

__all__ = ["ConvDecoder", "reencoding_cosine", "fit_decoder", "featinv_loss", "reconstruction_metrics"]
