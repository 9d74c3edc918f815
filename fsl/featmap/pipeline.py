"""Every layer x manipulation x map of FeatMap (Krey, Neukirch, Strodthoff, arXiv 2605.11203) on one
model: fit on the training images' features, evaluate on held-out images. Pure torch; the
``featmap`` analysis (``fsl.analysis.studies.featmap``) turns the rows into metrics, a table,
heat maps and image rows."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from fsl.data.subsets import stratified_subset
from fsl.errors import ConfigError
from fsl.featmap.evaluate import (class_metrics, decoded_metrics, masked_cosine, position_cosine, region_cells,
                                  relative_error)
from fsl.featmap.manipulations import (MANIPULATIONS, apply_manipulation, check_manipulation_images, grid_move,
                                       manipulation)
from fsl.featmap.mappings import check_features, fit_global_linear, fit_procrustes, fit_shared_linear
from fsl.featmap.nets import NET_DEFAULTS, build_net
from fsl.featmap.spectra import spectrum_metrics, weight_bias_metrics
from fsl.registry import closest

Tensor = torch.Tensor

#: every map, baselines first; ``permutation`` exists only for manipulations with a grid move
MAPPINGS = ("identity", "permutation", "linear", "procrustes", "global_linear", "mlp", "cnn", "transformer",
            "transformer_nopos")
#: the metrics of a row, in table order (a row has those that apply to its map and manipulation)
METRICS = ("cosine", "cosine_masked", "rel_error", "top1_manip", "top1_orig", "js", "entropy", "entropy_true",
           "mse_decoded", "ssim_decoded", "erank", "rank", "spectral_norm", "frobenius_norm", "energy_top1",
           "energy_top5", "energy_top10", "near_isometry", "wx_share", "bias_share", "cos_wx_full",
           "relative_bias_shift", "epochs", "stopped_early", "seconds")
CLOSED_FORM = ("linear", "procrustes", "global_linear")
TRAINED = ("mlp", "cnn", "transformer", "transformer_nopos")
SGD_DEFAULTS = {"lr": 1e-4, "weight_decay": 0.01, "batch_size": 32, "max_epochs": 10, "patience": 3,
                "val_fraction": 0.1, "mse_weight": 0.3, "cos_weight": 0.7, "plateau_patience": 1,
                "plateau_factor": 0.5, "max_seconds": None, "n_train": None}


def check_mapping(name: str) -> str:
    if name not in MAPPINGS:
        raise ConfigError(f"unknown mapping {name!r}" + closest(name, MAPPINGS))
    return name


def check_options(what: str, given: dict | None, defaults: dict) -> dict:
    """``{**defaults, **given}``; ConfigError for a key that ``defaults`` lacks."""
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        raise ConfigError(f"{what} has no option {unknown[0]!r}" + closest(unknown[0], defaults))
    return {**defaults, **(given or {})}


@dataclass
class FeatMapResult:
    """Rows (one per layer x manipulation x map: ``layer``, ``manipulation``, ``mapping`` and the
    metrics as floats), singular values of the linear maps ``spectra[(layer, manipulation,
    mapping)]``, image examples ``examples[(layer, manipulation)]`` (``original``, ``manipulated``,
    ``decoded_true``, ``decoded_mapped``: ``(n, C, H, W)``; the first ``n`` of ``decoded_index``),
    ``decoded_index`` (positions of the evaluation images decoded, a seeded draw) and the skipped
    combinations with why."""

    rows: list[dict] = field(default_factory=list)
    spectra: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    manipulations: list[str] = field(default_factory=list)
    decoded_index: Tensor | None = None


@torch.no_grad()
def layer_maps(model, images: Tensor, layers: Sequence[str], batch_size: int = 250, device=None
               ) -> tuple[dict[str, Tensor], Tensor]:
    """``({layer: (N, ...) CPU float32}, logits (N, n))`` of ``images`` through ``model.feature_maps``."""
    device = device or next(model.parameters()).device
    out: dict[str, list] = {k: [] for k in layers}
    logits = []
    for s in range(0, len(images), batch_size):
        maps = model.feature_maps(images[s:s + batch_size].to(device))
        for k in layers:
            out[k].append(maps[k].float().cpu())
        logits.append(model.forward_head(next(reversed(maps.values()))).float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}, torch.cat(logits)


@torch.no_grad()
def _rest(model, layer: str, feats: Tensor, batch_size: int, device) -> Tensor:
    dtype = next(model.parameters()).dtype
    return torch.cat([model.forward_from(layer, feats[s:s + batch_size].to(device, dtype)).float().cpu()
                      for s in range(0, len(feats), batch_size)])


def model_layers(model, layers: Sequence[str] | None) -> list[str]:
    """``layers`` checked against ``model.feature_maps`` (None: all of them)."""
    with torch.no_grad():
        probe = model.feature_maps(torch.zeros(1, *model.input_shape, device=next(model.parameters()).device))
    if layers is None:
        return list(probe)
    for k in layers:
        if k not in probe:
                raise ConfigError(f"{type(model).__name__} has no layer {k!r}" + closest(k, probe)
                              + f" (its layers, keys of feature_maps: {list(probe)})")
    return list(layers)


def featmap_study(model, train_images: Tensor, eval_images: Tensor, *, layers: Sequence[str] | None = None,
                  manipulations: Sequence[str] = tuple(MANIPULATIONS), mappings: Sequence[str] = MAPPINGS,
                  params: dict | None = None, permute_grid: bool = True, ridge: float = 1e-4,
                  global_ridge: float = 0.1, rank_rtol: float = 1e-5, sgd: dict | None = None,
                  nets: dict | None = None, decoders: dict[str, Callable[[Tensor], Tensor]] | None = None,
                  n_decode: int = 100, figure_mapping: str = "linear", n_figure: int = 1, seed: int = 0,
                  batch_size: int = 250, device=None, progress: bool = False, train_labels: Tensor | None = None,
                  eval_labels: Tensor | None = None) -> FeatMapResult:
    """Fit every map in ``mappings`` from the features of ``train_images`` to those of their
    manipulations, per layer and manipulation, and evaluate it on ``eval_images``.

    Args:
        model: an fsl model (``feature_maps``, ``forward_from``), in eval mode.
        train_images, eval_images: ``(N, C, H, W)`` in [0, 1].
        layers: keys of ``model.feature_maps`` (None: all).
        manipulations: names of :data:`fsl.featmap.MANIPULATIONS`; colour-only ones are skipped
            (and listed in ``skipped``) on grey images. params: ``{name: {parameter: value}}``.
        mappings: names of :data:`MAPPINGS`.
        permute_grid: for manipulations with a grid move (rot90s, flips) the source map of every
            fitted map is moved first, so per-position maps only have to change the channels. The
            ``permutation`` baseline is that move alone (either way), ``identity`` the unmoved map.
        ridge, global_ridge: relative ridges of the shared and the global linear map.
        rank_rtol: numerical rank threshold (relative to the largest singular value).
        sgd: options of :func:`fsl.featmap.train.fit_sgd` (:data:`SGD_DEFAULTS`; ``n_train``: train
            the SGD maps on n of the training maps only). nets: :data:`NET_DEFAULTS`.
        decoders: ``{layer: decode}``, a FeatInv decoder per layer (features -> images): MSE and SSIM
            of decoded mapped vs decoded true manipulated features on ``n_decode`` evaluation images.
        figure_mapping, n_figure: the map and number of images of the examples (decoded layers only;
            the first ``n_figure`` of the decoded images).
        seed: manipulations (training images ``seed``, evaluation images ``seed + 1``), SGD maps and
            the draws of the SGD training rows and decoded rows.
        train_labels, eval_labels: ``(N,)`` classes of the images: the SGD training rows and the decoded
            rows are seeded draws stratified by them (:func:`fsl.data.subsets.stratified_subset`);
            None: seeded uniform draws.

    Metrics of every row: ``cosine`` (median over images of the median-over-positions cosine, mapped
    vs true manipulated features), ``cosine_masked`` (masks: over the cells the mask touches),
    ``rel_error``, ``top1_manip``, ``top1_orig``, ``js``, ``entropy``, ``entropy_true`` (the mapped
    features through the rest of the network, :func:`fsl.featmap.evaluate.class_metrics`), with a
    decoder ``mse_decoded``, ``ssim_decoded``; linear maps add :func:`spectrum_metrics` and
    :func:`weight_bias_metrics`, trained ones ``epochs`` and ``stopped_early`` (1: early stopping ended
    the training, 0: it ran out of ``max_epochs``), and all ``seconds`` (fit and evaluation). The
    names and their order: :data:`METRICS`.
    """
    from tqdm.auto import tqdm

    check_manipulation_images(train_images, "featmap: training images")
    check_manipulation_images(eval_images, "featmap: evaluation images")
    mappings = [check_mapping(m) for m in mappings]
    sgd = check_options("featmap sgd", sgd, SGD_DEFAULTS)
    nets = check_options("featmap nets", nets, NET_DEFAULTS)
    params = dict(params or {})
    for name in params:
        manipulation(name)
    for name in manipulations:
        manipulation(name)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    layers = model_layers(model, layers)
    decoders = dict(decoders or {})
    if decoders and n_figure > 0 and figure_mapping not in mappings:
        raise ValueError(f"featmap: figure_mapping {figure_mapping!r} is not among the mappings {mappings}, so the "
                         f"image rows would be empty; set figure_mapping to one of them (or n_figure=0)")
    res = FeatMapResult(layers=list(layers))
    grey = train_images.shape[1] == 1
    todo = []
    for name in manipulations:
        if grey and manipulation(name).colour_only:
            res.skipped.append(f"{name}: colour only, the images are grey")
        else:
            todo.append(name)
    res.manipulations = todo
    sgd_rows = stratified_subset(train_labels, sgd["n_train"] or 0, seed, n_total=len(train_images))
    decode_rows = stratified_subset(eval_labels, int(n_decode), seed + 1, n_total=len(eval_images)) \
        if decoders and int(n_decode) > 0 else torch.empty(0, dtype=torch.long)
    res.decoded_index = decode_rows
    orig_tr, _ = layer_maps(model, train_images, layers, batch_size, device)
    orig_ev, logits_orig = layer_maps(model, eval_images, layers, batch_size, device)
    for k in layers:
        check_features(orig_tr[k], f"featmap: layer {k!r} of the training images")
        check_features(orig_ev[k], f"featmap: layer {k!r} of the evaluation images")
    bar = tqdm(total=len(todo) * len(layers), desc="featmap", disable=not progress, leave=False)
    for name in todo:
        p = params.get(name)
        man_tr, _ = apply_manipulation(name, train_images, seed=seed, params=p)
        man_ev, region = apply_manipulation(name, eval_images, seed=seed + 1, params=p)
        tgt_tr, _ = layer_maps(model, man_tr, layers, batch_size, device)
        tgt_ev, logits_true = layer_maps(model, man_ev, layers, batch_size, device)
        move = grid_move(name)
        for layer in layers:
            bar.set_postfix_str(f"{name} {layer}")
            shape = orig_ev[layer].shape
            X_tr, Y_tr = check_features(orig_tr[layer]), check_features(tgt_tr[layer], f"featmap: {layer}/{name}")
            X_ev, Y_ev = check_features(orig_ev[layer]), check_features(tgt_ev[layer], f"featmap: {layer}/{name}")
            S_tr, S_ev = (move(X_tr), move(X_ev)) if move is not None and permute_grid else (X_tr, X_ev)
            cells = region_cells(region, X_ev.shape[-2:]) if region is not None else None
            for mapping in mappings:
                if mapping == "permutation" and (move is None or X_tr.shape[-2:] == (1, 1)):
                    continue  # no grid to move: the permutation baseline is the identity
                t0 = time.perf_counter()
                row = {"layer": layer, "manipulation": name, "mapping": mapping}
                pred, fitted, wx = _fit_predict(mapping, X_ev, move, S_tr, Y_tr, S_ev, ridge, global_ridge, sgd,
                                                nets, seed, batch_size, device, row, sgd_rows)
                row.update(_scores(model, layer, pred, Y_ev, shape, logits_true, logits_orig, cells, batch_size,
                                   device))
                if fitted is not None:
                    s = fitted.singular_values()
                    res.spectra[(layer, name, mapping)] = s.float()
                    row.update(spectrum_metrics(s, rank_rtol))
                    row.update(weight_bias_metrics(wx, fitted.bias)[0])
                if layer in decoders and len(decode_rows):
                    nd, dr = len(decode_rows), decode_rows
                    dm, dec_t, dec_m = decoded_metrics(decoders[layer], pred[dr].reshape(nd, *shape[1:]).to(device),
                                                       Y_ev[dr].reshape(nd, *shape[1:]).to(device), batch_size)
                    row.update({k: float(v.mean()) for k, v in dm.items()})
                    if mapping == figure_mapping and n_figure > 0:
                        k = min(int(n_figure), nd)
                        res.examples[(layer, name)] = {"original": eval_images[dr[:k]].cpu(),
                                                       "manipulated": man_ev[dr[:k]].cpu(),
                                                       "decoded_true": dec_t[:k], "decoded_mapped": dec_m[:k]}
                row["seconds"] = time.perf_counter() - t0
                res.rows.append(row)
            bar.update(1)
    bar.close()
    return res


def _fit_predict(mapping, X_ev, move, S_tr, Y_tr, S_ev, ridge, global_ridge, sgd, nets, seed, batch_size, device, row,
                 sgd_rows):
    """``(prediction for S_ev, fitted closed-form map or None, its W x on S_ev or None)``; trained
    maps add ``epochs`` and ``stopped_early`` to ``row`` and are trained on the rows ``sgd_rows``.
    ``S_*``: the (grid-moved) source maps."""
    if mapping == "identity":
        return X_ev, None, None
    if mapping == "permutation":
        return move(X_ev), None, None
    if mapping in CLOSED_FORM:
        fitted = (fit_shared_linear(S_tr, Y_tr, ridge) if mapping == "linear" else
                  fit_procrustes(S_tr, Y_tr) if mapping == "procrustes" else fit_global_linear(S_tr, Y_tr, global_ridge))
        wx = fitted.wx(S_ev)
        return fitted.apply_wx(wx, S_ev), fitted, wx
    from fsl.featmap.train import fit_sgd

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_net(mapping, S_tr.shape[1], tuple(S_tr.shape[-2:]), nets)
    log = fit_sgd(net, S_tr[sgd_rows], Y_tr[sgd_rows], seed=seed, device=device,
                  **{k: v for k, v in sgd.items() if k != "n_train"})
    row["epochs"], row["stopped_early"] = float(len(log.val_loss)), float(log.stopped_early)
    with torch.no_grad():
        pred = torch.cat([net(S_ev[s:s + batch_size].to(device)).float().cpu() for s in range(0, len(S_ev), batch_size)])
    return pred, None, None


def _scores(model, layer, pred, true, shape, logits_true, logits_orig, cells, batch_size, device) -> dict:
    out = {"cosine": float(position_cosine(pred, true).median()),
           "rel_error": float(relative_error(pred, true).median())}
    if cells is not None:
        mc = masked_cosine(pred, true, cells)
        out["cosine_masked"] = float(mc[~mc.isnan()].median()) if (~mc.isnan()).any() else float("nan")
    logits = _rest(model, layer, pred.reshape(shape), batch_size, device)
    out.update({k: float(v.mean()) for k, v in class_metrics(logits, logits_true, logits_orig).items()})
    return out
