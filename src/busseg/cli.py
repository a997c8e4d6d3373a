"""`busseg <verb>`: thin command-line wrappers over the package's functions."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from busseg import __version__
from busseg.errors import BussegError, InvalidInput
from busseg.imageio import DEFAULT_MAX_PIXELS
from busseg.jsonio import clean


def _prepare(a: argparse.Namespace) -> int:
    from busseg.data.prepare import PrepareOptions, prepare

    try:
        fractions = tuple(float(f) for f in a.fractions.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3:
        raise InvalidInput(f"--fractions needs three numbers (train,val,test), got {a.fractions!r}")
    options = PrepareOptions(size=a.size, seed=a.seed, include_normal=a.include_normal,
                             twin_threshold=a.twin_threshold, fractions=fractions,
                             table_csv=a.table, normal_without_mask=a.normal_without_mask,
                             group_column=a.group_column)
    report = prepare(a.raw, a.out, options, overwrite=a.overwrite)
    print(report.summary())
    print(f"wrote {a.out}/{{train,val,test}}, {a.out}/splits.json, {a.out}/manifest.csv")
    return 0


def _train_config(a: argparse.Namespace):
    from busseg.config import resolve_config

    overrides = list(a.set or [])
    for key in ("data", "out", "epochs", "batch_size", "lr", "seed", "device", "size", "init",
                "limit"):
        value = getattr(a, key, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    if a.no_progress:  # tqdm's own switch; without it bars show on a terminal only
        os.environ["TQDM_DISABLE"] = "1"
    if a.no_cuda_graph:
        from busseg.cudagraph import NO_GRAPH_ENV

        os.environ[NO_GRAPH_ENV] = "1"
    return resolve_config(a.config, overrides)


def _train(a: argparse.Namespace) -> int:
    import yaml

    from busseg.config import config_to_dict
    from busseg.train import train

    cfg = _train_config(a)
    if a.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    summary = train(cfg, resume=a.resume, overwrite=a.overwrite)
    print(json.dumps(clean(summary), indent=1, allow_nan=False))
    return 0


def _cv(a: argparse.Namespace) -> int:
    from busseg.cv import gather_oof

    cfg = _train_config(a)  # the gather reads the data the folds trained on (--data, --set)
    if not a.gather_only:
        for s in _run_folds(a, cfg):
            where = ("inner validation" if a.inner_val else
                     f"val of the others (held out: {s['held_out']})" if "held_out" in s
                     else "held-out")
            print(f"fold {s['fold']}: {where} Dice {s['best_val_dice']:.3f}, "
                  f"{s['train_time_s'] / 60:.1f} min ({s.get('precision', 'fp32')})")
    if a.fold is None or a.gather_only:
        summary = gather_oof(a.out, cfg.data, device=a.device or "cpu",
                             overwrite=a.overwrite, progress=not a.no_progress)
        for src, part in summary.get("by_source", {}).items():
            lo, hi = part["dice_ci95"]
            print(f"{src}: lesion Dice {part['dice']:.3f} ({lo:.3f}-{hi:.3f}) over "
                  f"{part['n_images']} scans, missed {part['missed_lesion_rate']:.1%}")
        if "by_source" in summary:
            print(f"mean over sources {summary['source_mean_dice']:.3f}, worst "
                  f"{summary['source_worst']} {summary['source_worst_dice']:.3f}")
        print(f"OOF lesion Dice {summary['dice']:.3f} over {summary['n_images']} scans; "
              f"wrote {a.out}/oof/")
    return 0


def _run_folds(a: argparse.Namespace, cfg) -> list[dict]:
    from busseg.cv import run_cv
    from busseg.holdout import run_by_source

    if a.by == "fold":
        return run_cv(cfg, a.out, a.folds, a.fold, a.fold_seed, a.inner_val)
    if a.inner_val or a.folds != 5:
        raise InvalidInput("cv --by source: one fold per source; --folds and --inner-val apply "
                           "to --by fold")
    return run_by_source(cfg, a.out, a.fold)


def _model_choice(a: argparse.Namespace):
    """The model options that evaluate and predict share (`_model_options`)."""
    from busseg.inference import ModelChoice

    return ModelChoice(checkpoint=a.checkpoint, backend=a.backend, onnx_path=a.onnx,
                       device=a.device, plain=a.plain, threshold=a.threshold, tta=a.tta)


def _evaluate(a: argparse.Namespace) -> int:
    from busseg.evaluate import EvalOptions, evaluate, format_summary

    options = EvalOptions(filter_components=not a.no_filter, groups=a.groups,
                          group_by=a.group_by)
    s = evaluate(_model_choice(a), a.data, a.out, options, overwrite=a.overwrite)
    print(format_summary(s))
    print(f"wrote {a.out}/metrics.json, {a.out}/per_image.csv, {a.out}/test_preds/")
    return 1 if s["errors"] else 0


def _predict(a: argparse.Namespace) -> int:
    from busseg.predict import PredictOptions, predict, sample_files

    inputs = list(a.inputs) + (sample_files() if a.samples else [])
    if not inputs:
        print("error: give INPUT files/folders/globs, or --samples", file=sys.stderr)
        return 2
    options = PredictOptions(save_prob=a.save_prob, overlay=a.overlay, dicom_seg=a.dicom_seg,
                             frames=a.frames, max_pixels=a.max_pixels, batch_size=a.batch_size,
                             include_masks=a.include_masks)
    r = predict(inputs, a.out, _model_choice(a), options, overwrite=a.overwrite)
    for e in r.errors:
        print(f"error: {e}", file=sys.stderr)
    print(f"segmented {len(r.rows)} image(s) into {a.out} ({len(r.errors)} failed, "
          f"{len(r.skipped)} skipped: see results.json)")
    return 1 if r.errors else 0


def _fit_presence(a: argparse.Namespace) -> int:
    from busseg.presence import DEFAULT_L2, fit_cv_heads, fit_presence_head

    l2 = DEFAULT_L2 if a.l2 is None else a.l2
    data = a.data[0] if a.data and len(a.data) == 1 else a.data
    if a.cv:
        fits = fit_cv_heads(a.cv, a.out, data, l2, overwrite=a.overwrite)
        for f in fits:
            print(f"fold {f['fold']}: {f['n_lesion']} lesion, {f['n_normal']} normal scans, "
                  f"training AUC {f['train_auc']:.3f}")
        print(f"wrote {a.out}; next: busseg cv --out {a.out} --gather-only")
        return 0
    f = fit_presence_head(a.checkpoint, a.out, data, l2, overwrite=a.overwrite)
    print(f"{f['n_lesion']} lesion, {f['n_normal']} normal scans, training AUC "
          f"{f['train_auc']:.3f}; wrote {a.out} (choose its rule: busseg tune)")
    return 0


def _tune(a: argparse.Namespace) -> int:
    from busseg.tune import tune_postprocess

    r = tune_postprocess(a.checkpoint, val_dir=a.data, cv_dir=a.cv, overwrite=a.overwrite)
    b, st = r["best"], r["best"]["settings"]
    gate = st["presence_threshold"]
    print(f"chosen on {r['source']} ({r['n_lesion']} lesion, {r['n_normal']} normal scans): "
          f"tta={st['tta']} threshold={st['threshold']:.2f} "
          f"presence_threshold={'none' if gate is None else f'{gate:.3f}'} "
          f"min_area={st['min_area_frac']:.4f} keep_largest={st['keep_largest']}")
    print("  " + "  ".join(f"{k} {_fmt(b[k])}" for k in
                           ("dice_all", "dice_lesion", "missed_lesion_rate", "normal_fp_rate")))
    print(f"wrote {Path(a.checkpoint).parent / 'postprocess.json'} and tune.json")
    return 0


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _report(a: argparse.Namespace) -> int:
    from busseg.report import build_report

    path = build_report(a.run_dir, a.data, a.out, overwrite=a.overwrite, groups=a.groups,
                        group_by=a.group_by, from_eval=a.from_eval)
    print(f"wrote {path}")
    return 0


def _serve(a: argparse.Namespace) -> int:
    from busseg.serve.app import ServeConfig, serve

    config = ServeConfig(checkpoint=a.checkpoint, onnx=a.onnx,
                         max_upload_bytes=int(a.max_upload_mb * 2**20), max_pixels=a.max_pixels,
                         concurrency=a.concurrency, queue=a.queue, timeout_s=a.timeout,
                         docs=a.docs, read_timeout_s=a.read_timeout, threads=a.threads)
    serve(a.host, a.port, config, max_connections=a.max_connections)
    return 0


def _export(a: argparse.Namespace) -> int:
    if a.format == "onnx":
        from busseg.export import export_onnx

        calib = (a.calibration or "data/train/images") if a.int8 else None
        path = export_onnx(a.checkpoint, a.out or "model.onnx", overwrite=a.overwrite,
                           int8_calibration=calib)
        print(f"wrote {path}" + (f" (int8, calibrated on {calib})" if calib else ""))
        return 0
    from busseg.checkpoint import export_safetensors, run_dir_of

    if not a.checkpoint:
        print("error: --format safetensors needs --checkpoint RUN/unet_final.pt", file=sys.stderr)
        return 2
    out = a.out or "model.safetensors"
    export_safetensors(a.checkpoint, out, overwrite=a.overwrite)
    print(f"wrote {out} and its training logs in {run_dir_of(out)}/")
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default unless its help already names it or it has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the outputs of an earlier run (default: refuse)")


COMMON = argparse.ArgumentParser(add_help=False)
COMMON.add_argument("-v", "--verbose", action="store_true",
                    help="also print the libraries' own progress lines and debug details")


def _model_options(ensemble: bool) -> argparse.ArgumentParser:
    """The options of every verb that runs a model on scans (evaluate, predict); with
    `ensemble`, --checkpoint takes several files."""
    p = argparse.ArgumentParser(add_help=False)
    if ensemble:
        p.add_argument("--checkpoint", nargs="+",
                       help="a .pt or .safetensors file (default: shipped model); several "
                       "files run their ensemble (mean probability, the first file's settings)")
    else:
        p.add_argument("--checkpoint", help="a .pt or .safetensors file (default: shipped model)")
    p.add_argument("--threshold", type=float, help="probability threshold (default: model's)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="average with the horizontal flip (default: the model's setting)")
    p.add_argument("--plain", action="store_true",
                   help="the plain output: threshold 0.5, no TTA, no presence rule or filter")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="torch, or ONNX Runtime (with --onnx FILE, or an export of the model)")
    p.add_argument("--onnx", help="an exported .onnx file for --backend onnx (its own settings)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    return p


MODEL_OPTIONS, ENSEMBLE_OPTIONS = _model_options(False), _model_options(True)


def _verb(sub, name: str, text: str, *parents: argparse.ArgumentParser
          ) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter,
                          parents=[COMMON, *parents])


def _add_prepare(sub) -> None:
    s = _verb(sub, "prepare", "raw BUSI -> resized, leakage-free train/val/test split")
    s.add_argument("--raw", required=True,
                   help="the Dataset_BUSI_with_GT folder, or a folder with images/ and masks/")
    s.add_argument("--table", help="CSV with a 'name' column, a group column (scans of one group "
                   "never cross splits) and any others (kept in the manifest)")
    s.add_argument("--group-column", default="group", help="the group column of --table")
    s.add_argument("--normal-without-mask", action="store_true",
                   help="plain folders: an image without a mask file is a normal scan")
    s.add_argument("--fractions", default="0.8,0.1,0.1", help="train,val,test shares")
    s.add_argument("--out", default="data", help="output folder (default: data)")
    s.add_argument("--size", type=int, default=256,
                   help="side of the square output images (0: keep original sizes)")
    s.add_argument("--seed", type=int, default=0, help="split seed")
    s.add_argument("--include-normal", action="store_true", help="add normal images (empty masks)")
    s.add_argument("--twin-threshold", type=float, default=0.90,
                   help="thumbnail correlation at which two images count as near-duplicates")
    _add_overwrite(s)
    s.set_defaults(func=_prepare)


def _add_train(sub) -> None:
    s = _verb(sub, "train", "train a model (config file + overrides)")
    s.add_argument("--config", help="YAML config (see configs/)")
    s.add_argument("--data", help="prepared data folder (default: data)")
    s.add_argument("--out", help="run folder (default: results)")
    s.add_argument("--epochs", type=int, help="training epochs (default: the config's)")
    s.add_argument("--batch-size", dest="batch_size", type=int,
                   help="images per step and rank (default: the config's)")
    s.add_argument("--lr", type=float, help="peak learning rate (default: the config's)")
    s.add_argument("--seed", type=int, help="random seed (default: the config's)")
    s.add_argument("--size", type=int, help="training image side (default: the config's)")
    s.add_argument("--init", help="start from weights: 'default' (the shipped model) or a "
                   "checkpoint (default: random)")
    s.add_argument("--limit", type=int, help="train on N training scans only (quick runs)")
    s.add_argument("--print-config", action="store_true",
                   help="print the fully resolved config (every key) and exit")
    s.add_argument("--device", help="auto, cpu or cuda")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key, e.g. --set model.width=24 (repeatable)")
    s.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_no_graph(s)
    _add_overwrite(s)
    s.set_defaults(func=_train)


def _add_no_graph(s) -> None:
    s.add_argument("--no-cuda-graph", action="store_true",
                   help="one GPU: run the training steps eagerly instead of replaying them as "
                        "CUDA graphs")


def _add_cv(sub) -> None:
    s = _verb(sub, "cv", "k-fold cross-validation over train + val; out-of-fold results")
    s.add_argument("--config", help="YAML config (see configs/)")
    s.add_argument("--data", help="prepared data folder (default: data)")
    s.add_argument("--out", default="runs/cv", help="cross-validation folder (default: runs/cv)")
    s.add_argument("--by", choices=("fold", "source"), default="fold",
                   help="fold: k folds of whole groups over train + val (several data folders: "
                        "over all of them); source: hold each data folder out in turn, train "
                        "on the others, predict all its scans (default: fold)")
    s.add_argument("--folds", type=int, default=5, help="number of folds (default: 5)")
    s.add_argument("--fold", type=int, action="append",
                   help="train only this fold (repeatable; default: all, then gather)")
    s.add_argument("--fold-seed", type=int, default=0, help="fold assignment seed (default: 0)")
    s.add_argument("--inner-val", type=float, default=0.0, metavar="SHARE",
                   help="validate each fold on this share of its own training scans (whole "
                        "groups), so early stopping never sees the held-out fold (default: 0, "
                        "validate on the held-out fold)")
    s.add_argument("--epochs", type=int, help="override the config's epochs")
    s.add_argument("--device", help="auto, cpu or cuda")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key (repeatable)")
    s.add_argument("--gather-only", action="store_true",
                   help="only gather the finished folds' out-of-fold predictions")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_no_graph(s)
    _add_overwrite(s)
    s.set_defaults(func=_cv)


def _add_evaluate(sub) -> None:
    s = _verb(sub, "evaluate", "score a model on a folder of images and masks",
              ENSEMBLE_OPTIONS)
    s.add_argument("--data", default="data/test", help="folder with images/ and masks/")
    s.add_argument("--out", default="results", help="where metrics and predictions go")
    s.add_argument("--no-filter", action="store_true",
                   help="no presence rule or component filter (keeps threshold and TTA)")
    s.add_argument("--groups", help="CSV with a 'name' column and columns to group results by")
    s.add_argument("--group-by", action="append", metavar="COLUMN",
                   help="a column of --groups to report results by (repeatable)")
    _add_overwrite(s)
    s.set_defaults(func=_evaluate)


def _add_predict(sub) -> None:
    s = _verb(sub, "predict", "segment new scans (PNG, JPEG, BMP, TIFF, GIF, WebP, DICOM)",
              MODEL_OPTIONS)
    s.add_argument("inputs", nargs="*", metavar="INPUT", help="files, folders or globs")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--samples", action="store_true", help="also segment the shipped samples")
    s.add_argument("--save-prob", action="store_true", help="also write <stem>_prob.png")
    s.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    s.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    s.add_argument("--frames", default="all",
                   help="frames of a multi-frame DICOM, TIFF, GIF, PNG or WebP: all, first, "
                   "middle or indices like 0,5")
    s.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse files with more decoded pixels than this (all frames)")
    _add_overwrite(s)
    s.add_argument("--dicom-seg", action="store_true",
                   help="for DICOM inputs also write <stem>_seg.dcm, a DICOM Segmentation")
    s.add_argument("--include-masks", action="store_true",
                   help="also segment files named like masks (<stem>_mask.png)")
    s.set_defaults(func=_predict)


def _add_tune(sub) -> None:
    s = _verb(sub, "tune", "choose threshold, TTA, presence rule and component filter")
    s.add_argument("--checkpoint", required=True,
                   help="a .pt checkpoint; postprocess.json is written beside it")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--cv", help="cross-validation folder: choose on its out-of-fold results")
    src.add_argument("--data", help="or a validation folder (never the test set)")
    _add_overwrite(s)
    s.set_defaults(func=_tune)


def _add_fit_presence(sub) -> None:
    s = _verb(sub, "fit-presence", "fit a lesion-presence head on a trained, frozen model")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a .pt or .safetensors file: fit on the train + val "
                     "scans of --data, write --out (a .pt checkpoint)")
    src.add_argument("--cv", help="or a cross-validation folder: fit each fold model on its own "
                     "training scans, write a new cross-validation folder --out")
    s.add_argument("--out", required=True, help="the .pt file, or the new cross-validation folder")
    s.add_argument("--data", action="append", default=None,
                   help="prepared data folder (repeatable: several sources; default: the data "
                   "the model, or each fold model, was trained on)")
    s.add_argument("--l2", type=float, default=None,
                   help="L2 strength of the logistic regression on standardised features "
                   "(default: busseg.presence.DEFAULT_L2, chosen on OOF results)")
    _add_overwrite(s)
    s.set_defaults(func=_fit_presence)


def _add_report(sub) -> None:
    s = _verb(sub, "report", "self-contained HTML report of a run")
    s.add_argument("run_dir", nargs="?", help="run folder (default: the shipped model)")
    s.add_argument("--data", default="data/test", help="folder with images/ and masks/")
    s.add_argument("--out", default="report.html", help="the HTML file to write")
    s.add_argument("--groups", help="CSV with a 'name' column and columns to group results by")
    s.add_argument("--group-by", action="append", metavar="COLUMN",
                   help="a column of --groups to show results by (repeatable)")
    s.add_argument("--from-eval", metavar="DIR",
                   help="reuse this busseg evaluate folder (same model, same data) instead of "
                        "predicting again")
    _add_overwrite(s)
    s.set_defaults(func=_report)


def _add_serve(sub) -> None:
    s = _verb(sub, "serve", "web demo and HTTP inference service (FastAPI)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8000, help="port to listen on")
    s.add_argument("--checkpoint", help="a .pt or .safetensors file (default: shipped model)")
    s.add_argument("--onnx", help="serve an exported .onnx file with ONNX Runtime instead "
                   "(busseg export; --int8 is the fastest on CPUs with VNNI)")
    s.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted")
    s.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="largest decoded image accepted (pixels)")
    s.add_argument("--concurrency", type=int, default=2, help="inferences at once")
    s.add_argument("--threads", type=int, default=0,
                   help="threads per inference (default 0: the usable cores divided among the "
                        "--concurrency slots)")
    s.add_argument("--queue", type=int, default=16,
                   help="requests allowed to wait; more get 503 with Retry-After")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds per request (then 503)")
    s.add_argument("--read-timeout", type=float, default=15.0,
                   help="seconds a client has to send a request's headers, and again its body "
                        "(then the connection is closed, or 408)")
    s.add_argument("--max-connections", type=int, default=256,
                   help="open connections at most (uvicorn limit_concurrency)")
    s.add_argument("--docs", action="store_true",
                   help="serve /docs and /redoc (they load scripts from a CDN)")
    s.set_defaults(func=_serve)


def _add_export(sub) -> None:
    s = _verb(sub, "export", "export a model to ONNX")
    s.add_argument("--format", default="onnx", choices=("onnx", "safetensors"),
                   help="onnx (dynamic batch and size) or safetensors (weights + config + logs)")
    s.add_argument("--checkpoint", help="a .pt or .safetensors file (default: shipped model)")
    s.add_argument("--out", help="output file (default: model.onnx / model.safetensors)")
    s.add_argument("--int8", action="store_true",
                   help="ONNX only: static int8 quantization calibrated on training scans")
    s.add_argument("--calibration", help="folder of scans for --int8 "
                   "(default: data/train/images)")
    _add_overwrite(s)
    s.set_defaults(func=_export)


QUIET_LIBRARIES = ("highdicom", "pydicom", "PIL", "matplotlib", "onnxruntime", "httpx",
                   "multipart", "python_multipart")
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "starlette": "serve", "multipart": "serve",
          "python_multipart": "serve", "onnx": "onnx", "onnxruntime": "onnx",
          "onnxscript": "onnx", "matplotlib": "report", "nbclient": "report",
          "nbformat": "report"}  # optional module -> the pyproject extra that installs it


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="busseg", description=__doc__)
    p.add_argument("--version", action="version", version=f"busseg {__version__}")
    sub = p.add_subparsers(dest="verb", required=True)
    for add in (_add_prepare, _add_train, _add_cv, _add_evaluate, _add_predict, _add_tune,
                _add_fit_presence, _add_report, _add_serve, _add_export):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; expected failures print one line naming the problem, exit code non-zero."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    for name in QUIET_LIBRARIES:  # their INFO lines (about ten per DICOM SEG) only on request
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except BussegError as exc:  # the user's to fix; anything else is a bug: its traceback shows
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        extra = EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"error: busseg {args.verb} needs {exc.name}, part of the '{extra}' extra: "
              f"pip install 'busseg[{extra}]'", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
