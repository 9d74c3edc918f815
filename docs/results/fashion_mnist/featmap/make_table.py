"""Tables of a FeatMap analysis from its metrics.json (keys featmap/<layer>/<manipulation>/<mapping>/<metric>).

    python docs/results/fashion_mnist/featmap/make_table.py docs/results/fashion_mnist/featmap

writes table.md (one row per layer x manipulation x map: cosine, top-1 agreement with the manipulated and
the original image, JS, decoded SSIM, effective rank, wx_share, bias_share) and summary.md (per layer a
manipulation x map matrix of the cosine, and the shared-linear vs global-linear comparison).
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

COLS = ["cosine", "top1_manip", "top1_orig", "js", "ssim_decoded", "erank", "wx_share", "bias_share"]
MAPS = ["identity", "permutation", "linear", "procrustes", "global_linear", "mlp", "cnn", "transformer",
        "transformer_nopos"]


def fmt(v):
    if v is None:
        return ""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def load(folder: Path):
    m = json.loads((folder / "metrics.json").read_text())
    rows = defaultdict(dict)
    layers, manips = [], []
    for k, v in m.items():
        parts = k.split("/")
        if len(parts) != 5 or parts[0] != "featmap":
            continue
        _, layer, manip, mapping, metric = parts
        rows[(layer, manip, mapping)][metric] = v
        if layer not in layers:
            layers.append(layer)
        if manip not in manips:
            manips.append(manip)
    layers.sort(key=lambda name: (name == "pooled", name))  # stage1-3 / layers.0-3, then pooled
    manips.sort()
    return m, rows, layers, manips


def main(folder: str) -> None:
    folder = Path(folder)
    m, rows, layers, manips = load(folder)
    out = ["| layer | manipulation | map | " + " | ".join(COLS) + " |", "|---" * (3 + len(COLS)) + "|"]
    for layer in layers:
        for manip in manips:
            for mapping in MAPS:
                r = rows.get((layer, manip, mapping))
                if r:
                    out.append(f"| {layer} | {manip} | {mapping} | " + " | ".join(fmt(r.get(c)) for c in COLS) + " |")
    (folder / "table.md").write_text("\n".join(out) + "\n")

    s = [f"n_train {m.get('featmap/n_train')}, n_eval {m.get('featmap/n_eval')}, study {m.get('featmap/seconds', 0):.0f} s", ""]
    for layer in layers:
        maps = [mp for mp in MAPS if any((layer, mn, mp) in rows for mn in manips)]
        s += [f"### {layer}: median per-position cosine (held-out images)", "",
              "| manipulation | " + " | ".join(maps) + " |", "|---" * (1 + len(maps)) + "|"]
        for manip in manips:
            s.append(f"| {manip} | " + " | ".join(fmt(rows.get((layer, manip, mp), {}).get("cosine")) for mp in maps) + " |")
        s.append("")
    s += ["### shared linear vs global linear (cosine; top-1 agreement with the manipulated image)", "",
          "| layer | manipulations | linear >= 0.95 x global | median cosine linear / global | median top-1 linear / global |",
          "|---|---|---|---|---|"]
    for layer in layers:
        pairs = [(rows[(layer, mn, "linear")], rows[(layer, mn, "global_linear")]) for mn in manips
                 if (layer, mn, "linear") in rows and (layer, mn, "global_linear") in rows]
        if not pairs:
            continue
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        close = sum(a["cosine"] >= 0.95 * b["cosine"] for a, b in pairs)
        s.append(f"| {layer} | {len(pairs)} | {close} | {fmt(med([a['cosine'] for a, _ in pairs]))} / "
                 f"{fmt(med([b['cosine'] for _, b in pairs]))} | {fmt(med([a['top1_manip'] for a, _ in pairs]))} / "
                 f"{fmt(med([b['top1_manip'] for _, b in pairs]))} |")
    s += ["", "### linear maps: effective rank (of C channels) and weight vs bias, medians over the manipulations", "",
          "| layer | map | erank | rank | wx_share | bias_share | cos(Wx, Wx+b) |", "|---|---|---|---|---|---|---|"]
    for layer in layers:
        for mapping in ("linear", "procrustes", "global_linear"):
            rs = [rows[(layer, mn, mapping)] for mn in manips if (layer, mn, mapping) in rows]
            if not rs:
                continue
            med = lambda key: fmt(sorted(r[key] for r in rs)[len(rs) // 2]) if all(key in r for r in rs) else ""  # noqa: E731
            s.append(f"| {layer} | {mapping} | {med('erank')} | {med('rank')} | {med('wx_share')} | "
                     f"{med('bias_share')} | {med('cos_wx_full')} |")
    (folder / "summary.md").write_text("\n".join(s) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent))
