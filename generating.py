"""predict.py without a mode flag: new brain slices sampled from the export's prior (of one class, for a
conditional prior), each written as a PNG as soon as it is drawn, and a grid of the first of them."""

import keras
import numpy as np

import figures
from export import add_texture, sample_images
from utils import check_free_space, class_index, fail, save_figure, write_bytes

GRID_SIZE = 64  # the grid shows at most this many of the generated images


def generate(model, metadata, args, out):
    """Sample `args.n` new slices into the folder `out`, --batch-size at a time, each written as a PNG as soon
    as it is drawn (memory does not grow with --n), and a grid of the first GRID_SIZE. Returns (grid path, image
    paths)."""
    classes = metadata["class_names"]
    if not metadata.get("has_prior"):
        fail(f"--model {args.model}: this export has no prior to sample from; "
             f"use --reconstruct DATA, or train one with train.py --stage prior")
    class_index(args.label, classes, args.model)
    if args.top_k > metadata["num_codes"]:
        fail(f"--top-k {args.top_k}: expected 0 (keep all codes) up to {metadata['num_codes']}, the model's number "
             f"of codes")
    size = metadata["image_size"]
    needed = args.n * (size * size * 1.1 + 1024)  # an 8-bit PNG is at most about its raw size
    check_free_space(f"--n {args.n}", out, needed, f"{args.n:,} images of {size}x{size}")
    stem = f"sample_{args.label}" if args.label else "sample"
    width = max(3, len(str(args.n - 1)))
    paths, shown = [], []
    progress = keras.utils.Progbar(args.n, unit_name="image")
    for batch, start in enumerate(range(0, args.n, args.batch_size)):
        images = draw(model, metadata, args, min(args.batch_size, args.n - start), batch_seed(args.seed, batch))
        for image in images:
            paths.append(out / f"{stem}_{len(paths):0{width}d}.png")
            write_bytes(paths[-1], figures.png_bytes(image))
        shown.extend(images[:GRID_SIZE - len(shown)])
        progress.add(len(images))
    texture = ", texture" if args.texture else ""
    title = (f"{args.label or 'generated'} (temperature {args.temperature}{filter_text(args)}{texture}, "
             f"seed {args.seed})")
    if args.n > len(shown):
        title += f": the first {len(shown)} of {args.n}"
    grid = out / f"{stem}_grid.png"
    save_figure(figures.image_grid_figure(shown, title), grid, dpi=100, bbox_inches="tight")
    return grid, paths


def filter_text(args):
    """The sampling controls in use, for a figure title: '', ', top-k 20', ', top-p 0.9', ..."""
    return (f", top-k {args.top_k}" if args.top_k else "") + (f", top-p {args.top_p:g}" if args.top_p < 1 else "")


def batch_seed(seed, batch):
    """The sampler's seed for one batch: `seed` itself for the first (so --n up to --batch-size draws what the
    export's sample(n, temperature, seed, top_k, top_p, keep_background) draws), then seeds derived from
    (seed, batch)."""
    if batch == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**32, batch]).generate_state(1)[0] >> 1)


def draw(model, metadata, args, count, seed):
    """`count` images [count, S, S, 1] sampled from the export's prior (of --label's class if given), with
    the export's texture if `args.texture`."""
    label = class_index(args.label, metadata["class_names"], args.model)
    images = sample_images(model, count, args.temperature, seed, args.top_k, args.top_p, args.keep_background,
                           label)
    return add_texture(model, images, seed) if args.texture else images
