"""One image file as grayscale float32 in [0, 1], read the same way in a tf.data pipeline and on its own.

Before TensorFlow decodes a file, its header is read (without decoding the pixels) to learn:
- its size, so that a file over `MAX_PIXELS` (a decompression bomb) is named as too large;
- whether it is transparent (PNG with alpha or a tRNS chunk): transparent pixels become background (black);
- whether TensorFlow can decode it: CMYK JPEGs are decoded by Pillow instead;
- whether it is a 16-bit PNG, and how many of its bits the data uses: 12-bit scans are often stored in 16-bit
  PNGs, and dividing them by 65535 would leave them nearly black.
"""

import collections
import struct
import warnings

import numpy as np
import tensorflow as tf
from PIL import Image

MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's decompression-bomb limit
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# How each file is decoded: TensorFlow as one grey channel, as RGBA composited on black, as RGB (GIF, which
# TensorFlow decodes only in colour), or by Pillow (formats TensorFlow cannot decode).
GREY, TRANSPARENT, COLOUR, PILLOW = range(4)
# The colour channels' entries of a PNG sBIT chunk, by PNG colour type (grey, RGB, palette, grey+alpha, RGBA).
SBIT_COLOUR_ENTRIES = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}

Header = collections.namedtuple("Header", ["decoder", "bit_depth", "significant_bits", "problem"])
Header.__doc__ = """What a file's header says: how to decode it (GREY, TRANSPARENT, COLOUR or PILLOW), its bit
depth (16 for a 16-bit PNG, else 8), the significant bits its PNG sBIT chunk states (or None), and why it
cannot be used (None if it may be; unreadable headers are left for the decoder to find)."""


def read_header(path):
    """The `Header` of one image file, read without decoding its pixels."""
    try:
        with open(path, "rb") as file:
            start = file.read(8)
            if start == PNG_SIGNATURE:
                return _png_header(path, file)
    except OSError:
        return Header(GREY, 8, None, None)  # TensorFlow's decoder names the file it cannot read
    if start[:3] == b"GIF":
        return _size_checked(path, _pillow_size_and_mode(path), COLOUR)
    return _size_checked(path, _pillow_size_and_mode(path), GREY)


def _too_large(path, size=None):
    pixels = f"{size[0]}x{size[1]} pixels" if size else "an image"
    return f"{path}: {pixels}, too large: over the limit of {MAX_PIXELS} pixels (a decompression bomb?)"


def _size_checked(path, size_and_mode, decoder):
    if size_and_mode == "too large":
        return Header(decoder, 8, None, _too_large(path))
    if size_and_mode and size_and_mode[1] == "CMYK":  # TensorFlow's JPEG decoder has no CMYK conversion
        decoder = PILLOW
    return Header(decoder, 8, None, None)


def _pillow_size_and_mode(path):
    """((width, height), mode) from Pillow's lazy open, "too large" over MAX_PIXELS, None if Pillow cannot
    read the header."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                return image.size, image.mode
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            return "too large"
        except Exception:  # noqa: BLE001  (any damage: TensorFlow's decoder then names the file unreadable)
            return None


def _png_header(path, file):
    """The `Header` of a PNG from its chunks before the pixel data (IHDR, sBIT, tRNS)."""
    chunks = {}
    try:
        while True:
            length, kind = struct.unpack(">I4s", file.read(8))
            if kind in (b"IDAT", b"IEND"):
                break
            chunks[kind] = file.read(length)
            file.seek(4, 1)  # the chunk's CRC
        width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    except (struct.error, KeyError):
        return Header(GREY, 8, None, None)  # damaged: TensorFlow's decoder names it
    if width * height > MAX_PIXELS:
        return Header(GREY, depth, None, _too_large(path, (width, height)))
    decoder = TRANSPARENT if colour in (4, 6) or b"tRNS" in chunks else GREY
    stated = chunks.get(b"sBIT", b"")[:SBIT_COLOUR_ENTRIES.get(colour, 1)]
    significant = max(stated) if depth == 16 and stated and 0 < max(stated) <= 16 else None
    return Header(decoder, depth, significant, None)


def sixteen_bit_range(files, where, headers=None, quiet=False):
    """The value of the 16-bit PNGs among `files` that becomes 1.0 (65535 when there are none): 2**bits - 1
    for the bits the data uses, the most any file's sBIT chunk states or the bit length of the largest value
    of the files without one. One range for all the files, so that the slices of a patient keep their
    contrast. `headers` are the files' (read here from the .png files if not given). Prints a note naming
    `where` when the data uses fewer than 16 bits, unless `quiet`."""
    if headers is None:
        headers = [read_header(file) if file.lower().endswith(".png") else None for file in files]
    deep = [(file, header) for file, header in zip(files, headers) if header and header.bit_depth == 16]
    if not deep:
        return 65535
    stated = [header.significant_bits for _, header in deep if header.significant_bits]
    unstated = [file for file, header in deep if not header.significant_bits]
    largest = _largest_value(unstated) if unstated else 0
    bits = max(stated + [largest.bit_length(), 8])
    if bits >= 16 or (not stated and largest == 0):
        return 65535
    if not quiet:
        how = f"largest value {largest}" if unstated else "as their sBIT chunks state"
        print(f"Note: the {len(deep)} 16-bit PNGs of {where} use {bits} bits ({how}): read as values "
              f"0..{2 ** bits - 1}, not 0..65535.")
    return 2 ** bits - 1


def _largest_value(files):
    """The largest pixel value of 16-bit PNG files (unreadable ones are left out: decoding names them)."""
    def largest(path):
        return tf.cast(tf.reduce_max(tf.io.decode_png(tf.io.read_file(path), dtype=tf.uint16)), tf.int32)

    maxima = tf.data.Dataset.from_tensor_slices(files).map(largest, num_parallel_calls=tf.data.AUTOTUNE)
    return int(max(maxima.ignore_errors().as_numpy_iterator(), default=0))


def decode_grey(path, decoder, scale, with_pillow=True):
    """The image of `path` as float32 [H, W, 1] in [0, 1], grayscale, transparency composited on black, 16-bit
    values multiplied by `scale` (65535 / the data's largest value). `decoder` is the header's; graph-safe.
    Without `with_pillow` there is no Pillow branch, so pipelines that need none stay pure TensorFlow."""
    branches = [lambda: _tf_grey(path, 1), lambda: _tf_grey(path, 4), lambda: _tf_grey(path, 3)]
    if with_pillow:
        branches.append(lambda: _pillow_grey_op(path))
    return tf.switch_case(tf.convert_to_tensor(decoder, tf.int32), branches) * scale


def _tf_grey(path, channels):
    image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False,
                               dtype=tf.uint16)
    image = tf.image.convert_image_dtype(image, tf.float32)
    if channels == 1:
        return image
    grey = tf.image.rgb_to_grayscale(image[..., :3])
    return grey * image[..., 3:] if channels == 4 else grey


def _pillow_grey_op(path):
    image = tf.numpy_function(pillow_grey, [path], tf.float32, stateful=False)
    image.set_shape([None, None, 1])
    return image


def pillow_grey(path):
    """An image Pillow decodes (CMYK JPEG) as float32 [H, W, 1] in [0, 1], transparency composited on black."""
    path = np.asarray(path).item()  # a str, or bytes from a tensor
    path = path.decode() if isinstance(path, bytes) else path
    with Image.open(path) as image:
        image = image.convert("RGB") if image.mode == "CMYK" else image
        grey_and_alpha = np.asarray(image.convert("LA"), np.float32) / 255
    return grey_and_alpha[..., :1] * grey_and_alpha[..., 1:]
