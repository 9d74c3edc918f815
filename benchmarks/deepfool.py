"""DeepFool three ways on the same samples: fsl (overshoot on the total, box-aware), torchattacks
(overshoot per step, clamped steps) and IBM ART (``art.attacks.evasion.DeepFool``, clip (0, 1)).

    python benchmarks/deepfool.py --checkpoint outputs/train/<run>/checkpoints/last.ckpt [--n 200]

Attacks the first ``n`` correctly classified samples of the checkpoint's validation split (its test
split when the data set has no validation split) and prints, per implementation: success by fsl's
rule (misclassified with a logit gap above float noise), success by a bare argmax, the number of
returned images on a tie (|gap| <= tolerance), median L2 and L-inf of the successful examples,
seconds, and the ratio of median L2 to ART's.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fsl.adversarial import run_attack, select_correct
from fsl.adversarial.success import gap_tolerance, logit_gap
from fsl.data.subsets import stratified_subset


def art_deepfool(model, x: torch.Tensor, steps: int, overshoot: float, batch_size: int) -> torch.Tensor:
    from art.attacks.evasion import DeepFool
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                            nb_classes=int(model.head.out_features), clip_values=(0.0, 1.0), device_type="cpu")
    atk = DeepFool(clf, max_iter=steps, epsilon=overshoot, nb_grads=int(model.head.out_features),
                   batch_size=batch_size, verbose=False)
    return torch.from_numpy(atk.generate(x.numpy().astype(np.float32)))


def summarize(name: str, model, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, seconds: float) -> dict:
    with torch.no_grad():
        z = model(adv)
    gap = logit_gap(z, y)
    tol = gap_tolerance(z)
    ok = gap > tol
    delta = (adv - x).flatten(1)
    l2, linf = delta.norm(dim=1), delta.abs().amax(dim=1)
    return {"name": name, "success": float(ok.double().mean()), "argmax": float((z.argmax(1) != y).double().mean()),
            "ties": int((gap.abs() <= tol).sum()), "l2": float(l2[ok].median()) if ok.any() else float("nan"),
            "linf": float(linf[ok].median()) if ok.any() else float("nan"), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--overshoot", type=float, default=0.02)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--skip-torchattacks", action="store_true", help="it loops over samples: slow on ResNet-20")
    args = ap.parse_args()

    from fsl.data import create_datamodule
    from fsl.training.checkpoint import load_model

    model, hp = load_model(args.checkpoint)
    dm = create_datamodule(**hp["data"])
    dm.setup()
    split = "val" if len(dm.tensors("val")[1]) else "test"
    images, labels = dm.tensors(split)
    ok = select_correct(model, images, labels).nonzero().flatten()
    ok = ok[stratified_subset(labels[ok], args.n, 0)]  # the stored order may be sorted by class
    x, y = images[ok], labels[ok]
    print(f"{hp['model']['name']} on {hp['data']['name']}: {len(y)} correctly classified {split} samples, "
          f"steps {args.steps}, overshoot {args.overshoot}, torch threads {torch.get_num_threads()}")

    rows = []
    r = run_attack(model, x, y, "deepfool", batch_size=args.batch_size, steps=args.steps, overshoot=args.overshoot)
    rows.append(summarize("fsl deepfool", model, x, y, r.adv_images, r.seconds))
    if not args.skip_torchattacks:
        r = run_attack(model, x, y, "deepfool_torchattacks", batch_size=args.batch_size, steps=args.steps,
                       overshoot=args.overshoot)
        rows.append(summarize("torchattacks DeepFool", model, x, y, r.adv_images, r.seconds))
    t0 = time.perf_counter()
    adv = art_deepfool(model, x, args.steps, args.overshoot, args.batch_size)
    rows.append(summarize("ART DeepFool", model, x, y, adv, time.perf_counter() - t0))

    art_l2 = rows[-1]["l2"]
    print("| implementation | success (gap > tol) | success (argmax) | ties | median L2 | median Linf | seconds "
          "| L2 / ART |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['name']} | {row['success']:.3f} | {row['argmax']:.3f} | {row['ties']} | {row['l2']:.4f} | "
              f"{row['linf']:.4f} | {row['seconds']:.1f} | {row['l2'] / art_l2:.3f} |")


if __name__ == "__main__":
    main()
