"""FeatInv decoders against fsl's optimisation inversion, same images, same layer (one run).

    python benchmarks/featinv.py <classifier.ckpt> <featinv.ckpt> [<featinv.ckpt> ...] [--n-eval 500] [--n-compare 100]

Prints, per layer and method, SSIM, re-encoded cosine, top-1 agreement with the original's
prediction, the layer feature residual and seconds per image on the same first ``n_compare`` test
images, the speed ratio inversion / decoder, and the targets on ResNet-20 / Fashion-MNIST stage3:
deterministic SSIM >= 0.85 and top-1 agreement >= 0.95 (on ``n_eval`` images), probabilistic
re-encoded cosine >= the deterministic one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fsl.analysis import Context, create_analysis  # noqa: E402
from fsl.data import create_datamodule  # noqa: E402
from fsl.training.checkpoint import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("classifier")
    ap.add_argument("decoders", nargs="+")
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--n-compare", type=int, default=100)
    args = ap.parse_args()
    model, hp = load_model(args.classifier)
    dm = create_datamodule(**hp["data"])
    dm.setup()
    ctx = Context.from_datamodule(model, dm, eval_split="test", progress=True, figures=False)
    res = create_analysis("featinv", checkpoints=args.decoders, n_eval=args.n_eval, n_compare=args.n_compare).run(ctx)
    m = res.metrics
    print(f"{'layer':10s} {'method':10s} {'ssim':>6s} {'cosine':>7s} {'top1':>6s} {'resid':>9s} {'s/img':>8s} {'inv/this':>9s}")
    for layer, methods in res.data.items():
        inv = m.get(f"compare/{layer}/inversion/seconds_per_image")
        for kind in methods:
            k = f"compare/{layer}/{kind}"
            s = m[f"{k}/seconds_per_image"]
            ratio = f"{inv / s:9.1f}" if inv and kind != "inversion" else " " * 9
            print(f"{layer:10s} {kind:10s} {m[f'{k}/ssim']:6.3f} {m[f'{k}/cosine']:7.4f} {m[f'{k}/top1_pred']:6.3f} "
                  f"{m[f'{k}/residual_median']:9.2e} {s:8.4f} {ratio}")
    if "stage3/conv/ssim" in m:
        print(f"target stage3 deterministic SSIM >= 0.85: {m['stage3/conv/ssim']:.3f}; top-1 agreement >= 0.95: "
              f"{m['stage3/conv/top1_pred']:.3f} (n_eval={args.n_eval})")
    if "stage3/flow/cosine" in m and "stage3/conv/cosine" in m:
        print(f"target stage3 probabilistic cosine >= deterministic: {m['stage3/flow/cosine']:.4f} vs "
              f"{m['stage3/conv/cosine']:.4f}")


if __name__ == "__main__":
    main()
