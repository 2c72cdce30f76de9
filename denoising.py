"""predict.py --denoise: image files and volumes of any size through the export's denoise endpoint.

The export denoises images of its own size S that carry Rician noise of one sigma: it removes the Rician bias
of that sigma (the floor of the background, the lift of dark tissue) and weighs the image's detail against
noise of that sigma. An image is padded to a square of side D, and its noise level is estimated there, at its
own resolution, where the Rician model holds (the export's noise_sigma where D is S, else the estimate that
noise_sigma makes, `noise.estimate_sigma`). Area-resizing the square to S averages about (D/S)^2 pixels into
one: the noise's standard deviation shrinks by `noise_scale(D, S)`, but the bias does not, since averaging
keeps means. So denoise is given the smaller sigma, and `model_inputs` first removes the part of the bias that
it would leave: its own correction then totals that of the full sigma. The output is resized back to D and
cropped to the input's shape.
"""

import dataclasses
import time

import keras
import numpy as np
import tensorflow as tf

import dataset
import images
import noise
import volumes
from figures import png_bytes
from folders import mirrored_inputs, output_path
from utils import fail, write_bytes


@dataclasses.dataclass
class Denoised:
    """What --denoise did to one input: its path, the noise sigma it assumed (a fraction of the intensity
    range, at the input's own resolution), and whether that was estimated or given."""

    path: str
    sigma: float
    estimated: bool


def noise_scale(side, size):
    """The factor by which area-resizing a side x side image to size x size scales the standard deviation of
    white noise (1 / f for a whole factor f = side / size; 1 where it enlarges within pixels): the root mean
    square over the output pixels of the root sum of squares of their area weights."""
    edges = np.arange(size + 1) * side / size
    pixels = np.arange(side)
    overlap = np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels)
    weights = np.clip(overlap, 0.0, None) / (side / size)  # [size, side]: one row's weight on each input row
    return float(np.mean(np.sum(weights ** 2, axis=1)))


def model_inputs(resized, sigma, model_sigma):
    """`resized` images [N, S, S, 1] whose Rician bias is that of `sigma` [N], less the bias that correcting for
    `model_sigma` [N] (<= sigma) removes: sqrt(max(x^2 - 2 (sigma^2 - model_sigma^2), 0)), so that the
    correction `noise.rician_bias_correct(_, model_sigma)` of the result is that of `sigma`."""
    excess = np.sqrt(np.maximum(np.square(sigma) - np.square(model_sigma), 0.0)).astype(np.float32)
    return noise.rician_bias_correct(resized, excess).numpy()


def estimate_sigma(model, squares, size):
    """The Rician noise sigma [N] of `squares` [N, D, D, 1] at their own resolution: the export's noise_sigma
    where D is the model's `size`, else `noise.estimate_sigma`, the estimate that noise_sigma makes."""
    squares = tf.convert_to_tensor(squares, tf.float32)
    if squares.shape[1] == size:
        return model.noise_sigma(squares).numpy()
    return noise.estimate_sigma(squares).numpy()


def denoise_resized(model, resized, sigma, scale, batch_size):
    """The export's denoise of `resized` [N, S, S, 1]: squares with Rician noise of `sigma` [N], area-resized
    to the model's size by factors that scaled their noise by `scale` [N] (`noise_scale`); `batch_size`
    images per call."""
    sigma = np.asarray(sigma, np.float32)
    model_sigma = (sigma * np.asarray(scale, np.float32)).astype(np.float32)
    inputs = model_inputs(resized, sigma, model_sigma)
    return np.concatenate([model.denoise(tf.constant(inputs[start:start + batch_size]),
                                         tf.constant(model_sigma[start:start + batch_size])).numpy()
                           for start in range(0, len(inputs), batch_size)])


def read_native(flag, path):
    """One image file as grayscale float32 [H, W, 1] in [0, 1] at its own size (`images.decode_grey`), or exit
    with one line naming `flag` and the file."""
    header = images.read_header(str(path))
    if header.problem:
        fail(f"{flag} {header.problem}")
    scale = 65535 / images.sixteen_bit_range([str(path)], str(path), [header], quiet=True)
    try:
        return images.decode_grey(tf.constant(str(path)), header.decoder, scale).numpy()
    except (tf.errors.OpError, ValueError):
        fail(f"{flag} {path}: not a readable PNG/JPEG/BMP/GIF image")


def resized_for_model(model, size, image, sigma=None):
    """(`image` [H, W, 1] padded to a square and area-resized to the model's `size`, [S, S, 1]; the square's
    side; the sigma of its noise: `sigma`, or if None estimated on the square)."""
    square, side = dataset.square_and_resize(tf.constant(image[None]), max(image.shape[:2]))
    if sigma is None:
        sigma = float(estimate_sigma(model, square, size)[0])
    return dataset.square_and_resize(square, size)[0][0].numpy(), int(side), sigma


def denoise_files(model, size, given, out, sigma=None, batch_size=64, flag="--denoise"):
    """Write the denoised PNG of each image in `given` (files, and folders: every image below them, in the same
    layout) below `out`, in the image's own size; returns (a `Denoised` per image, seconds per image spent
    denoising, reading and writing left out). Each image's noise is estimated on its own unless `sigma` is
    given."""
    inputs = mirrored_inputs(flag, given, lambda path: path.suffix.lower() in dataset.IMAGE_EXTENSIONS)
    done, seconds = [], 0.0
    progress = keras.utils.Progbar(len(inputs), unit_name="image")
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]
        natives = [read_native(flag, path) for path, _ in batch]
        started = time.perf_counter()
        resized, sides, sigmas = zip(*(resized_for_model(model, size, image, sigma) for image in natives))
        outputs = denoise_resized(model, np.stack(resized), sigmas, [noise_scale(side, size) for side in sides],
                                  batch_size)
        denoised = [volumes.unsquare(output[None], side, *image.shape[:2])[0]
                    for output, side, image in zip(outputs, sides, natives)]
        seconds += time.perf_counter() - started
        for (path, name), image, used in zip(batch, denoised, sigmas):
            write_bytes(output_path(out, name.with_suffix(".png")), png_bytes(image))
            done.append(Denoised(str(path), used, sigma is None))
        progress.add(len(batch))
    return done, seconds / len(inputs)


def denoise_volume(model, size, path, axis, sigma=None, batch_size=64):
    """(the volume at `path` as read, as a nibabel image; the volume denoised slice by slice along `axis`, in
    its voxel grid and intensity range; a `Denoised`; seconds per slice; a note or None). One sigma serves the
    whole volume: the median of its slices' estimates if `sigma` is None. Raises volumes.VolumeError for a
    file that is not a usable volume."""
    scan = volumes.read_scan(path)
    slices = volumes.slice_stack(scan.volume, axis)
    side = max(slices.shape[1:3])
    started = time.perf_counter()
    used = sigma
    if sigma is None:
        squares, _ = dataset.square_and_resize(tf.constant(slices), side)
        used = float(np.median(estimate_sigma(model, squares, size)))
    scale = noise_scale(side, size)
    denoised, _ = volumes.through_slices(scan.volume, axis, size, lambda resized: denoise_resized(
        model, resized, np.full(len(resized), used), np.full(len(resized), scale), batch_size))
    seconds = (time.perf_counter() - started) / len(slices)
    return scan.original(), scan.stored(denoised), Denoised(str(path), used, sigma is None), seconds, scan.note
