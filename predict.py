"""Use an exported model: one mode per run; without a mode flag, generate new brain slices.

    python predict.py --n 16                             # 16 new slices from the prior, one PNG each and a grid
    python predict.py --n 16 --label AD                  # of one class, for a class-conditional (ADNI) model
    python predict.py --reconstruct /data/ADNI           # test inputs above their reconstructions, with SSIM
    python predict.py --evaluate /data/ADNI              # metrics JSON, per-image CSV and figures of a split
    python predict.py --curves logs                      # train/validation loss, SSIM and prior NLL per epoch
    python predict.py --compress /data/ADNI/AD_NC/test --out coded    # one small .vqz file per image
    python predict.py --decompress coded --out decoded                # and back to PNGs
    python predict.py --reconstruct-volume scan.nii.gz --out recon.nii.gz   # a whole volume, slice by slice
    python predict.py --denoise noisy/ --out clean       # every image below noisy/ freed of MRI (Rician) noise
    python predict.py --denoise scan.nii.gz --out clean.nii.gz             # a volume, slice by slice
    python predict.py --anomaly slices/ --out maps       # anomaly maps (.npy, .png) and scores.csv, by healing
    python predict.py --anomaly scan.nii.gz --out map.nii.gz               # a volume's map, slice by slice

--out is the output folder in every mode except --reconstruct-volume, and --denoise and --anomaly of a volume,
where it is the new .nii or .nii.gz file.
A run writes its folder beside --out and, when it succeeds, replaces --out with it as a whole (a failed run
leaves --out as it was); a second run on the same --out meanwhile is refused.
--reconstruct and --evaluate split DATA as the model's training did, with the data settings its config.json
recorded (seed, layout, axis, slices, validation fraction), so a test split never holds a training patient.
Only the SavedModel written by train.py is loaded (and, for --curves, its TensorBoard logs).
"""

import runtime  # noqa: F401  (first: it sets TensorFlow's environment before TensorFlow loads)

import argparse
import json
import math
import os
import shlex
from pathlib import Path

import numpy as np

import anomaly
import dataset
import denoising
import evaluation
import figures
import generating
import volumes
from codec import HEADER, CodecError, PriorCodec, compress_files, decompress_files, model_fingerprint, prior_bits
from export import load_export
from metrics import psnr_text
from orders import ORDERS
from settings import INT32_MAX, SEEDS, integers, numbers
from utils import check_apart, check_output_folder, check_writable, fail, final_path, replaced_folder, save_figure

MAX_SAMPLES = 1_000_000  # --n beyond this is refused as a typo rather than a plan
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_SHOWN = 16  # --reconstruct shows at most this many test slices
DEFAULT_OUT = "saved_models/predictions"
MODES = {"reconstruct": "--reconstruct", "evaluate": "--evaluate", "curves": "--curves", "compress": "--compress",
         "decompress": "--decompress", "reconstruct_volume": "--reconstruct-volume", "denoise": "--denoise",
         "anomaly": "--anomaly"}
# Flags that only some modes use: (flag, the modes that use it, its default there).
MODE_FLAGS = {"n": ("--n", ("generate", "reconstruct"), 16),
              "label": ("--label", ("generate", "anomaly"), None),
              "temperature": ("--temperature", ("generate",), 1.0),
              "top_k": ("--top-k", ("generate",), 0),
              "top_p": ("--top-p", ("generate",), 1.0),
              "keep_background": ("--keep-background", ("generate",), True),
              "texture": ("--texture", ("generate",), True),
              "split": ("--split", ("evaluate",), "test"),
              "metrics_out": ("--metrics-out", ("evaluate",), None),
              "noise_sigma": ("--noise-sigma", ("denoise",), None),
              "threshold": ("--threshold", ("anomaly",), anomaly.DEFAULT_THRESHOLD),
              "orders": ("--orders", ("anomaly",), None),
              "batch_size": ("--batch-size", ("generate", "compress", "reconstruct_volume", "denoise", "anomaly"),
                             64)}
# The values each numeric flag accepts. The export takes the seed, top-k and counts as int32 and the
# temperature and top-p as float32, into which TensorFlow would wrap or round larger values without a word.
VALUE_RANGES = {"n": integers(1, MAX_SAMPLES, expected=f"a number of images from 1 to {MAX_SAMPLES:,}"),
                "seed": SEEDS,
                "batch_size": integers(),
                "temperature": numbers(0, FLOAT32_MAX, expected="a finite positive number"),
                "top_k": integers(0, expected=f"0 (keep all codes) or a positive number up to {INT32_MAX:,}"),
                "top_p": numbers(0, 1, expected="a probability above 0 and at most 1"),
                "noise_sigma": numbers(0, FLOAT32_MAX, exclusive="", expected="a finite noise level of 0 or more "
                                       "(a fraction of the intensity range)"),
                "threshold": numbers(0, 1, expected="a probability above 0 and at most 1"),
                "orders": integers(1, ORDERS, expected=f"1 to {ORDERS} scan orders (at most those the prior learnt)")}


def build_parser():
    """The command line: a group of mutually exclusive modes, and the options each mode reads."""
    usage = "%(prog)s [MODE] [OPTIONS]  (MODE: one of the modes --help lists; none: generate)"
    parser = argparse.ArgumentParser(description=__doc__, usage=usage,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("modes (at most one; without one, predict.py generates)")
    modes = group.add_mutually_exclusive_group()
    modes.add_argument("--reconstruct", metavar="DATA",
                       help="show test slices of DATA (or 'demo') above their reconstructions")
    modes.add_argument("--evaluate", metavar="DATA", help="evaluate on a split of DATA (or 'demo'): metrics "
                       "JSON, per-image CSV, best/median/worst figure and codebook-usage histogram")
    modes.add_argument("--curves", metavar="LOGDIR", help="plot the training curves of train.py's --logdir")
    modes.add_argument("--compress", nargs="+", metavar="IMAGE_OR_FOLDER",
                       help="write one .vqz file per image (folders: every image below them, same layout): "
                       "its code grid range-coded with the prior's probabilities")
    modes.add_argument("--decompress", nargs="+", metavar="FILE_OR_FOLDER",
                       help="write the PNG of each .vqz file (folders: every .vqz below them) that --compress "
                       "wrote with this --model")
    modes.add_argument("--reconstruct-volume", metavar="VOLUME",
                       help="encode and decode every slice of a NIfTI or Analyze volume along the model's axis and "
                       "write the volume in the input's voxel grid to --out, with a figure of three orthogonal "
                       "views beside it")
    modes.add_argument("--denoise", nargs="+", metavar="IMAGE_FOLDER_OR_VOLUME",
                       help="free images of MRI (Rician) noise, each in its own size: image files, and folders "
                       "(every image below them, written as PNGs in the same layout under --out); or one NIfTI or "
                       "Analyze volume, denoised slice by slice along the model's axis into the new volume --out, "
                       "with a figure of three orthogonal views beside it. Needs an export with a denoiser")
    modes.add_argument("--anomaly", nargs="+", metavar="IMAGE_FOLDER_OR_VOLUME",
                       help="anomaly maps by healing with the prior, as --denoise reads its inputs: per image "
                       "NAME_anomaly.npy (its own size) and NAME_anomaly.png, and scores.csv; of a volume, its map "
                       "as the new volume --out, with a figure of three orthogonal views beside it")
    parser.add_argument("--model", default="saved_models/vqvae", help="SavedModel folder (default: %(default)s)")
    parser.add_argument("--out", help=f"the output folder, replaced as a whole when the run succeeds (default: "
                        f"{DEFAULT_OUT}); with --reconstruct-volume, and --denoise and --anomaly of a volume, the new "
                        ".nii or .nii.gz file to write (required there)")
    parser.add_argument("--n", type=int, help="generating: how many images to generate (default: 16); "
                        f"--reconstruct: how many test slices to show, at most {MAX_SHOWN} (default: 16)")
    parser.add_argument("--seed", type=int, default=0, help=f"seed of the sampler (and of --anomaly's healing), 0 "
                        f"to {INT32_MAX:,} (default: %(default)s); data splits always use the seed the model was "
                        "trained with")
    parser.add_argument("--batch-size", type=int, help="images generated, compressed, reconstructed, denoised or "
                        "healed at once; memory does not grow with --n (default: 64)")
    _add_generation_flags(parser)
    scoring = parser.add_argument_group("--evaluate")
    scoring.add_argument("--split", choices=dataset.SPLITS, help="split to evaluate (default: test)")
    scoring.add_argument("--metrics-out", help="metrics JSON (default: OUT/evaluation_SPLIT.json)")
    denoising_flags = parser.add_argument_group("--denoise")
    denoising_flags.add_argument("--noise-sigma", type=float, help="the standard deviation of the noise, a "
                                 "fraction of the intensity range, at the input's own resolution (default: "
                                 "estimated per image, or per volume, from its background)")
    healing_flags = parser.add_argument_group("--anomaly (and --label, above)")
    healing_flags.add_argument("--threshold", type=float, help="codes less likely than this under the prior, given "
                               f"the codes before them, are replaced (default: {anomaly.DEFAULT_THRESHOLD})")
    healing_flags.add_argument("--orders", type=int, help="heal in this many of the scan orders the prior learnt "
                               "and average the maps (default: all)")
    return parser


def _add_generation_flags(parser):
    """The sampling controls, used when generating only."""
    group = parser.add_argument_group("generating (no mode flag)")
    group.add_argument("--label", help="class to generate, e.g. AD or NC (conditional models only); with --anomaly, "
                       "the class to heal under (default: each input's most likely)")
    group.add_argument("--temperature", type=float,
                       help="sampling temperature; lower is more conservative (default: 1.0)")
    group.add_argument("--top-k", type=int,
                       help="draw each code from the K most likely only; 0 keeps all (default: 0)")
    group.add_argument("--top-p", type=float, help="draw each code from the most likely codes that make up this "
                       "probability (nucleus sampling); 1 keeps all (default: 1.0)")
    group.add_argument("--keep-background", action=argparse.BooleanOptionalAction,
                       help="--temperature, --top-k and --top-p reshape only the codes of anatomy; the codes of "
                       "empty background keep the probability the prior gives them, so heads keep their size "
                       "(--no-keep-background: reshape every code; default: on)")
    group.add_argument("--texture", action=argparse.BooleanOptionalAction,
                       help="give generated slices the fine texture that the codes do not carry, drawn from the "
                       "export's model of the decoder's residual (--no-texture: the decoder's smooth mean; "
                       "default: on)")


def parse_args(argv=None):
    """The command line, with `mode` set ("generate" without a mode flag) and every default filled in; a flag
    that the mode does not use, or a value out of range, exits with argparse's error (status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.mode = next((mode for mode in MODES if getattr(args, mode) is not None), "generate")
    for name, (flag, modes, default) in MODE_FLAGS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
        elif args.mode not in modes:
            named = [{**MODES, "generate": "generating"}[mode] for mode in (*modes, args.mode)]
            users = " and ".join(filter(None, [", ".join(named[:-2]), named[-2]]))
            parser.error(f"{flag} is for {users} only, not {named[-1]}")
    if args.out is None and args.mode == "reconstruct_volume":
        parser.error("--reconstruct-volume needs --out, the new .nii or .nii.gz file to write")
    if args.out is None and args.mode in ("denoise", "anomaly") and any(map(volumes.is_volume,
                                                                              getattr(args, args.mode))):
        parser.error(f"{MODES[args.mode]} of a volume needs --out, the new .nii or .nii.gz file to write")
    args.out = args.out or DEFAULT_OUT
    _check_values(parser, args)
    return args


def _check_values(parser, args):
    """Refuse, with parser.error, a numeric flag outside its VALUE_RANGES (None: not given, the mode's
    default)."""
    for name, accepts in VALUE_RANGES.items():
        if getattr(args, name) is not None and getattr(args, name) not in accepts:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected {accepts.describe()}")


# ----------------------------------------------------------------------------------------------------------
# The model, its recorded training settings, and the outputs


def open_model(path):
    """The export at `path` and its metadata; exits with one line if it is not one of this project's."""
    try:
        return load_export(path)
    except ValueError as error:
        hint = ""
        if "no SavedModel" in str(error):
            hint = f" (train one with `{shlex.join(['python', 'train.py', '--out', str(path)])}`)"
        fail(f"--model {error}{hint}")


def check_outputs(args):
    """Exit with one line, before any work, if the outputs cannot be written where the flags say: --out new,
    empty or predict.py's own, apart from what this run reads and from the data the model was trained on."""
    check_output_folder("--out", args.out, "this run's files", "predictions")
    check_apart("--out", args.out, read_paths(args))
    if args.metrics_out:
        metrics_out = Path(args.metrics_out)
        if metrics_out.is_dir() or (metrics_out.exists() and not _is_evaluation(metrics_out)):
            fail(f"--metrics-out {metrics_out}: something that predict.py did not write is there; choose a new file")
        check_writable("--metrics-out", metrics_out.parent)


def read_paths(args):
    """(what, path) of each file and folder that the flags name for this run to read, and of the data that the
    model was trained on, which the next training run reads."""
    given = {"--model": [args.model], "--reconstruct": [args.reconstruct], "--evaluate": [args.evaluate],
             "--curves": [args.curves], "--compress": args.compress or [], "--decompress": args.decompress or [],
             "--denoise": args.denoise or [], "--anomaly": args.anomaly or []}
    named = [(flag, path) for flag, paths in given.items() for path in paths if path not in (None, "demo")]
    return named + [(f"--model {args.model}'s training data", path) for path in evaluation.training_data(args.model)]


def new_outputs(args):
    """utils.replaced_folder of --out, once check_outputs passes: the folder to write this run's outputs in."""
    check_outputs(args)
    return replaced_folder(args.out, "predictions")


def _is_evaluation(path):
    """Whether `path` is a metrics JSON that predict.py --evaluate wrote (and may replace)."""
    try:
        return {"n_images", "ssim_mean", "split", "model"} <= set(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return False


def check_volume_outputs(out, model, mode="--reconstruct-volume"):
    """(output volume path, figure path), or exit with one line if --out is not a new .nii/.nii.gz file in a
    folder that is there, outside the data the model at `model` was trained on. `mode` names the mode flag."""
    out = Path(out)
    if not out.name.endswith((".nii", ".nii.gz")):
        fail(f"--out {out}: expected a .nii or .nii.gz file name for {mode}")
    figure = out.with_name(out.name.rsplit(".nii", 1)[0] + "_views.png")
    for path in (out, figure):
        if path.exists():
            fail(f"--out {out}: {path} is already there; choose a new name (nothing was changed)")
    check_writable("--out", out, new_file=True)
    check_apart("--out", out, [(f"--model {model}'s training data", path) for path in evaluation.training_data(model)])
    return out, figure


# ----------------------------------------------------------------------------------------------------------
# Reconstructing and evaluating a split


def metrics_path(args, folder):
    """Where --evaluate writes its metrics JSON, given new_outputs' `folder`: --metrics-out (in `folder` if it
    is inside --out), else evaluation_SPLIT.json in `folder`."""
    if args.metrics_out is None:
        return folder / f"evaluation_{args.split}.json"
    path, out = Path(os.path.abspath(args.metrics_out)), Path(os.path.abspath(args.out))
    return folder / path.relative_to(out) if out in path.parents else path


# ----------------------------------------------------------------------------------------------------------
# The modes


def run_generate(args):
    """Generate --n slices and their grid."""
    with new_outputs(args) as folder:
        model, metadata = open_model(args.model)
        grid, paths = generating.generate(model, metadata, args, folder)
    first, last = (final_path(path, folder, args.out) for path in (paths[0], paths[-1]))
    print(f"Grid:   {final_path(grid, folder, args.out)}")
    print(f"Images: {len(paths)} PNGs, {first} ... {last}")


def run_reconstruct(args):
    """Show test slices of --reconstruct above their reconstructions."""
    with new_outputs(args) as folder:
        model, metadata = open_model(args.model)
        path = evaluation.reconstruct_figure(model, metadata, args.model, args.reconstruct, min(args.n, MAX_SHOWN),
                                             folder)
    print(f"Reconstructions: {final_path(path, folder, args.out)}")


def run_evaluate(args):
    """Evaluate the model on a split of --evaluate."""
    with new_outputs(args) as folder:
        model, metadata = open_model(args.model)
        summary, paths = evaluation.evaluate_split(model, metadata, args.model, args.evaluate, args.split,
                                                   metrics_path(args, folder), folder)
    bits = summary.get("prior_bits_per_code")
    prior = f", prior {bits:.3f} bits per code" if bits is not None else ""
    print(f"{summary['source']} {args.split} ({summary['n_images']} images): SSIM {summary['ssim_mean']:.4f} "
          f"± {summary['ssim_std']:.4f}, {psnr_text(summary)}, codes used "
          f"{summary['codes_used']}/{summary['num_codes']}{prior}")
    for name, path in paths.items():
        print(f"{name:>9}: {final_path(path, folder, args.out)}")


def run_curves(args):
    """Plot the training curves of the logs at --curves."""
    with new_outputs(args) as folder:
        try:
            figure = figures.training_curves_figure(args.curves)
        except FileNotFoundError as error:
            fail(f"--curves {error}")
        save_figure(figure, folder / "training_curves.png", dpi=100)
    print(f"Training curves: {Path(args.out) / 'training_curves.png'}")


def open_codec(args):
    """The codec of the export at --model; exits with one line if it cannot code (it has no prior)."""
    model, metadata = open_model(args.model)
    try:
        return PriorCodec(model, metadata, model_fingerprint(args.model))
    except CodecError as error:
        fail(f"--model {args.model}: {error}")


def run_compress(args):
    """Compress the images of --compress into one file each."""
    with new_outputs(args) as folder:
        codec = open_codec(args)
        written, total, ideal, seconds = compress_files(codec, args.compress, folder, args.batch_size)
    side, count = codec.side, len(written)
    print(f"Compressed {count} images to {args.out}: {total / count:.1f} bytes per image (prior's ideal "
          f"{ideal / 8 / count:.1f} + the {HEADER.size}-byte header), {8 * total / count / side ** 2:.4f} bits "
          f"per pixel of the {side}x{side} image, {count / seconds:.2f} images/s")


def run_decompress(args):
    """Decode the files of --decompress into PNGs."""
    with new_outputs(args) as folder:
        codec = open_codec(args)
        written, seconds = decompress_files(codec, args.decompress, folder)
    print(f"Decompressed {len(written)} files to {args.out} ({len(written) / seconds:.2f} images/s): "
          f"{final_path(written[0], folder, args.out)} ... {final_path(written[-1], folder, args.out)}")


def run_reconstruct_volume(args):
    """Reconstruct the volume of --reconstruct-volume slice by slice along the model's axis."""
    out, figure_path = check_volume_outputs(args.out, args.model)
    model, metadata = open_model(args.model)
    axis = evaluation.recorded_config(args.model)["axis"]
    try:
        trip = volumes.reconstruct_volume(args.reconstruct_volume, axis, metadata["image_size"], model,
                                          args.batch_size)
    except volumes.VolumeError as error:
        fail(f"--reconstruct-volume {error}")
    if trip.note:
        print(trip.note)
    codes = trip.codes.size * (1 + (metadata["top_grid"] / metadata["grid"]) ** 2)  # and the top level's
    code_bits = int(codes * math.log2(metadata["num_codes"]))
    volumes.write_volume(out, trip.reconstruction)
    title = (f"reconstruction: SSIM {trip.ssim:.3f}, PSNR {trip.psnr:.1f} dB over {trip.brain_slices} {axis} "
             f"brain slices")
    save_figure(figures.volume_views_figure(trip.original, trip.reconstruction, title), figure_path, dpi=100)
    prior = ""
    if metadata.get("has_prior"):
        prior = f", prior {float(prior_bits(model, metadata, trip.inputs)[0].sum()):,.0f}"
    print(f"{args.reconstruct_volume}: SSIM {trip.ssim:.4f}, PSNR {trip.psnr:.2f} dB over {trip.brain_slices} "
          f"{axis} brain slices of {len(trip.inputs)}; code grids {code_bits:,} bits raw{prior}")
    print(f"Volume: {out}")
    print(f"Views:  {figure_path}")


def open_denoiser(args):
    """The export at --model and its metadata; exits with one line if it has no denoiser."""
    model, metadata = open_model(args.model)
    if not metadata.get("has_denoiser"):
        fail(f"--model {args.model}: this export has no denoiser; retrain it with this version of train.py")
    return model, metadata


def sigma_text(item):
    """The noise level that --denoise used for one input, in words."""
    return f"noise sigma {item.sigma:.4f} ({'estimated' if item.estimated else 'given'})"


def one_volume(args):
    """Whether the mode's inputs (of --denoise or --anomaly) are one volume, not images; exits with one line if a
    volume comes with other inputs, or images with a volume's name as --out."""
    flag, given = MODES[args.mode], getattr(args, args.mode)
    if any(map(volumes.is_volume, given)) and len(given) > 1:
        fail(f"{flag} {' '.join(given)}: a volume is read on its own; give it in a separate run")
    if not volumes.is_volume(given[0]) and args.out.endswith((".nii", ".nii.gz")):
        fail(f"--out {args.out}: a volume's name; {flag} writes images to a folder")
    return volumes.is_volume(given[0])


def run_denoise(args):
    """Denoise the images, or the volume, of --denoise."""
    if one_volume(args):
        return run_denoise_volume(args)
    with new_outputs(args) as folder:
        model, metadata = open_denoiser(args)
        done, seconds = denoising.denoise_files(model, metadata["image_size"], args.denoise, folder,
                                                args.noise_sigma, args.batch_size)
    for item in done:
        print(f"{item.path}: {sigma_text(item)}")
    print(f"Denoised {len(done)} images to {args.out}: {seconds:.3f} s per image")


def run_denoise_volume(args):
    """Denoise the volume of --denoise slice by slice along the model's axis into the new file --out."""
    out, figure_path = check_volume_outputs(args.out, args.model, "--denoise of a volume")
    model, metadata = open_denoiser(args)
    axis = evaluation.recorded_config(args.model)["axis"]
    try:
        original, denoised, item, seconds, note = denoising.denoise_volume(
            model, metadata["image_size"], args.denoise[0], axis, args.noise_sigma, args.batch_size)
    except volumes.VolumeError as error:
        fail(f"--denoise {error}")
    if note:
        print(note)
    volumes.write_volume(out, denoised)
    title = f"denoised ({axis} slices, noise sigma {item.sigma:.4f})"
    save_figure(figures.volume_views_figure(original, denoised, title), figure_path, dpi=100)
    print(f"{item.path}: {sigma_text(item)}; {seconds:.3f} s per {axis} slice")
    print(f"Volume: {out}")
    print(f"Views:  {figure_path}")


def run_anomaly(args):
    """Anomaly maps of the images, or of the volume, of --anomaly, by healing them with the prior."""
    if one_volume(args):
        return run_anomaly_volume(args)
    with new_outputs(args) as folder:
        model, metadata = open_model(args.model)
        healer = anomaly.open_healer(model, metadata, args)
        done, seconds = anomaly.anomaly_files(healer, metadata["image_size"], args.anomaly, folder)
    for item in done:
        print(item.summary())
    print(f"Anomaly maps of {len(done)} images in {args.out}, scores in {Path(args.out) / anomaly.SCORES_FILE}: "
          f"{seconds:.3f} s per image")


def run_anomaly_volume(args):
    """The anomaly map of the volume of --anomaly, healed slice by slice along the model's axis, as the new
    file --out."""
    out, figure_path = check_volume_outputs(args.out, args.model, "--anomaly of a volume")
    model, metadata = open_model(args.model)
    healer = anomaly.open_healer(model, metadata, args)
    axis = evaluation.recorded_config(args.model)["axis"]
    try:
        original, mapped, item, seconds, note = anomaly.anomaly_volume(healer, metadata["image_size"],
                                                                       args.anomaly[0], axis)
    except volumes.VolumeError as error:
        fail(f"--anomaly {error}")
    if note:
        print(note)
    volumes.write_volume(out, mapped)
    orders = f"{healer.orders} scan order" + ("s" if healer.orders > 1 else "")
    title = f"anomaly map ({axis} slices, threshold {healer.threshold:g}, {orders})"
    save_figure(figures.anomaly_views_figure(original, mapped, title), figure_path, dpi=100)
    print(f"{item.summary()}; {seconds:.3f} s per {axis} slice")
    print(f"Volume: {out}")
    print(f"Views:  {figure_path}")


RUNS = {"generate": run_generate, "reconstruct": run_reconstruct, "evaluate": run_evaluate, "curves": run_curves,
        "compress": run_compress, "decompress": run_decompress, "reconstruct_volume": run_reconstruct_volume,
        "denoise": run_denoise, "anomaly": run_anomaly}


def main(argv=None):
    """`python predict.py`: run the mode the flags name (generate without one)."""
    args = parse_args(argv)
    RUNS[args.mode](args)


if __name__ == "__main__":
    main()
