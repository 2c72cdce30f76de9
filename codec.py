"""The VQ-VAE as an image codec: an image becomes its code grid, range-coded with the prior's probabilities.

A file is a 14-byte header and the coder's 32-bit words (big-endian):

    magic b"VQ" | format version (1 byte) | model fingerprint (4 bytes) | image side (2 bytes)
    | class label (1 byte; 255 when the prior is unconditional) | CRC-32 of the codes (4 bytes) | words

Of a hierarchical model (VQ-VAE-2, metadata top_grid > 0) a file holds both levels of codes in the one
stream of words, the top grid first and then the bottom grid, and the CRC-32 covers the top codes and then
the bottom codes. The header is the same: the fingerprint names the model, and the model its levels.

The probabilities come from the export's `prior_step` (and `top_prior_step` for a top grid; the bottom
level's prior is given the top codes), one position at a time, on the encoder's side and the decoder's
alike: both run the same compiled function on one image, so they see bit-identical logits, which
`constriction` turns into the same integer probabilities (never zero for any code). A file therefore
decodes only with the model that wrote it: the fingerprint names that model, and the checksum catches any
difference in arithmetic (another platform, another build) instead of writing a wrong image.

`compress_files` and `decompress_files` code the files and folders named on predict.py's command line.
"""
import functools
import hashlib
import struct
import time
import zlib

import constriction
import keras
import numpy as np
import tensorflow as tf

import dataset
from figures import png_bytes
from folders import mirrored_inputs, output_path
from utils import fail, write_bytes

MAGIC = b"VQ"
VERSION = 1
HEADER = struct.Struct(">2sB4sHBI")
NO_LABEL = 255
SUFFIX = ".vqz"


class CodecError(ValueError):
    """A file that this model cannot decode: not a codec file, damaged, or written by another model."""


def model_fingerprint(path):
    """4 bytes naming the export at `path`: its graph and its weights (TensorFlow's SavedModel fingerprint)."""
    fingerprint = tf.saved_model.experimental.read_fingerprint(str(path))
    text = f"{fingerprint.saved_model_checksum}:{fingerprint.checkpoint_hash}"
    return hashlib.sha256(text.encode()).digest()[:4]


def code_checksum(*levels):
    """CRC-32 of the code grids of one image's levels (top first), as unsigned 16-bit little-endian numbers in
    raster order, one level after the other."""
    return zlib.crc32(b"".join(np.asarray(codes, "<u2").tobytes() for codes in levels))


def encode_levels(model, metadata, images):
    """The code grids of images float32 [N, S, S, 1], int32 [N, g, g] per level, top first: (top, bottom) of
    a hierarchical export, (codes,) of another."""
    images = tf.convert_to_tensor(images, tf.float32)
    levels = (model.encode_top(images), model.encode(images)) if metadata["top_grid"] else (model.encode(images),)
    return tuple(codes.numpy() for codes in levels)


def decode_levels(model, levels):
    """Images float32 [N, S, S, 1] of the code grids of each level, as `encode_levels` gives them."""
    *top, bottom = (tf.constant(codes, tf.int32) for codes in levels)
    return model.decode(bottom, *top).numpy()


def probabilities(logits):
    """Unnormalised float64 probabilities from float32 logits [..., K], the same on both sides of the codec."""
    logits = np.asarray(logits, np.float64)
    return np.exp(logits - logits.max(axis=-1, keepdims=True))


def prior_bits(model, metadata, images):
    """(-log2 p of each image's codes under the export's prior, [N]; for a conditional prior the class each is
    cheapest under, [N], else None). What an ideal entropy coder would spend, and the label the codec stores."""
    images = tf.convert_to_tensor(images, tf.float32)
    if not metadata["class_names"]:  # train.py names classes only for a conditional prior
        return -model.log_prob(images).numpy() / np.log(2), None
    costs = np.stack([-model.log_prob(images, tf.fill([len(images)], k)).numpy()
                      for k in range(len(metadata["class_names"]))]) / np.log(2)
    return costs.min(axis=0), costs.argmin(axis=0).astype(np.int32)


class PriorCodec:
    """Compress images into files and back with one export of train.py (which must have a prior)."""

    def __init__(self, model, metadata, fingerprint):
        if not metadata["has_prior"]:
            raise CodecError("this export has no prior to code with; train one with train.py --stage prior")
        self.model = model
        self.side = metadata["image_size"]
        self.grid = metadata["grid"]
        # Each level as (its endpoints' prefix, its grid), top first: the order of the codes in a file.
        top = (("top_prior", metadata["top_grid"]),) if metadata["top_grid"] else ()
        self.levels = (*top, ("prior", self.grid))
        self.num_codes = metadata["num_codes"]
        self.class_names = metadata["class_names"]
        self.metadata = metadata
        self.fingerprint = fingerprint
        self._decoder = None
        self._teacher_forced = tf.function(self._teacher_forced_logits)
        self._decoded = tf.function(self._decoded_codes)

    # The prior, one position at a time, on one image (so that no file depends on what it was batched with).

    def _autoregress(self, label, next_code):
        """(codes [g*g], logits [g*g, K]) of each level, top first, where the code at each position of level
        `l` is `next_code(l, position, logits)`; each level after the top is given the codes of the one before."""
        top, levels = None, []
        for level, (prefix, grid) in enumerate(self.levels):
            next_level_code = functools.partial(next_code, level)
            levels.append(self._autoregress_level(prefix, grid * grid, label, top, next_level_code))
            top = tf.reshape(levels[-1][0], [1, grid, grid])
        return levels

    def _autoregress_level(self, prefix, positions, label, top, next_code):
        """(codes [positions], logits [positions, K]) of the level whose endpoints are PREFIX_start and
        PREFIX_step, given the top codes `top` [1, T, T] (None for the top level or a one-level model)."""
        state = getattr(self.model, f"{prefix}_start")(
            1, *([] if top is None else [top]), *([label[None]] if self.class_names else []))
        codes = tf.TensorArray(tf.int32, size=positions)
        logits = tf.TensorArray(tf.float32, size=positions)
        previous = tf.zeros([1], tf.int32)
        for position in tf.range(positions):
            outputs = getattr(self.model, f"{prefix}_step")(state, position, previous)
            state = {name: tf.ensure_shape(outputs[name], value.shape) for name, value in state.items()}
            previous = next_code(position, outputs["logits"])
            codes = codes.write(position, previous[0])
            logits = logits.write(position, outputs["logits"][0])
        return codes.stack(), logits.stack()

    def _teacher_forced_logits(self, levels, label):
        def given(level, position, logits):
            return levels[level][position][None]
        return [logits for _, logits in self._autoregress(label, given)]

    def _decoded_codes(self, label):
        def decode(level, position, logits):
            code = tf.numpy_function(self._decode_one, [logits[0]], tf.int32, stateful=True)
            return tf.reshape(code, [1])
        return [codes for codes, _ in self._autoregress(label, decode)]

    def _decode_one(self, logits):
        model = constriction.stream.model.Categorical(probabilities(logits), perfect=False)
        return np.int32(self._decoder.decode(model))

    # Files.

    def compress(self, images, labels=None):
        """Files (bytes) for images float32 [N, S, S, 1]; `labels` as from `prior_bits` (conditional only)."""
        images = tf.convert_to_tensor(images, tf.float32)
        all_levels = [codes.reshape(len(images), -1) for codes in encode_levels(self.model, self.metadata, images)]
        if self.class_names and labels is None:
            labels = prior_bits(self.model, self.metadata, images)[1]
        files = []
        for index in range(len(images)):
            levels = [codes[index].astype(np.int32) for codes in all_levels]
            label = int(labels[index]) if self.class_names else 0
            all_logits = self._teacher_forced([tf.constant(codes) for codes in levels], tf.constant(label, tf.int32))
            encoder = constriction.stream.queue.RangeEncoder()
            for codes, logits in zip(levels, all_logits):
                encoder.encode(codes, constriction.stream.model.Categorical(perfect=False),
                               probabilities(logits.numpy()))
            header = HEADER.pack(MAGIC, VERSION, self.fingerprint, self.side,
                                 label if self.class_names else NO_LABEL, code_checksum(*levels))
            files.append(header + encoder.get_compressed().astype(">u4").tobytes())
        return files

    def read_header(self, data):
        """(label or None, checksum, payload words) of a file's bytes; CodecError if this model cannot decode it."""
        if len(data) < HEADER.size or data[:2] != MAGIC:
            raise CodecError("not a file of this codec (no VQ header)")
        magic, version, fingerprint, side, label, checksum = HEADER.unpack_from(data)
        if version != VERSION:
            raise CodecError(f"codec format version {version}; this program reads version {VERSION}")
        if fingerprint != self.fingerprint:
            raise CodecError(f"written by another model (fingerprint {fingerprint.hex()}, this model's is "
                             f"{self.fingerprint.hex()}); decode it with the export that wrote it")
        if side != self.side:
            raise CodecError(f"a {side}x{side} image; this model's images are {self.side}x{self.side}")
        if (label == NO_LABEL) != (not self.class_names) or (self.class_names and label >= len(self.class_names)):
            raise CodecError(f"class label {label} does not fit this model's classes {self.class_names}")
        payload = data[HEADER.size:]
        if len(payload) % 4:
            raise CodecError("truncated: the coded data is not a whole number of 32-bit words")
        words = np.frombuffer(payload, ">u4").astype(np.uint32)
        return (label if self.class_names else None), checksum, words

    def decompress(self, data):
        """(code grids, label or None) of one file's bytes: the grids int32 [g, g] of each level, top first as in
        `encode_levels` ((top, bottom), or (codes,) of a one-level model). CodecError if it does not decode."""
        label, checksum, words = self.read_header(data)
        self._decoder = constriction.stream.queue.RangeDecoder(words)
        try:
            levels = [codes.numpy() for codes in self._decoded(tf.constant(label or 0, tf.int32))]
        except tf.errors.OpError as error:
            raise CodecError(f"damaged coded data ({str(error).strip().splitlines()[0][:120]})") from None
        finally:
            self._decoder = None
        if code_checksum(*levels) != checksum:
            raise CodecError("the decoded codes fail the checksum: the file is damaged, or this platform's "
                             "arithmetic differs from the encoder's")
        return tuple(codes.reshape(grid, grid) for codes, (_, grid) in zip(levels, self.levels)), label


# ----------------------------------------------------------------------------------------------------------
# Files and folders


def read_image(flag, path, image_size):
    """`dataset.decode_image` of one file, or exit with one line naming `flag` and the file."""
    try:
        return dataset.decode_image(str(path), image_size).numpy()
    except dataset.DataError as error:  # named by the header check: too large, say
        fail(f"{flag} {error}")
    except (tf.errors.OpError, ValueError):
        fail(f"{flag} {path}: not a readable PNG/JPEG/BMP/GIF image")


def compress_files(codec, given, out, batch_size, flag="--compress"):
    """Write one SUFFIX file per image in `given` (files, and folders: every image below them, in the same
    layout) below `out`; returns (files, total bytes, the prior's ideal bits, seconds)."""
    inputs = mirrored_inputs(flag, given, lambda path: path.suffix.lower() in dataset.IMAGE_EXTENSIONS)
    written, total, ideal = [], 0, 0.0
    progress = keras.utils.Progbar(len(inputs), unit_name="image")
    started = time.perf_counter()
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start:start + batch_size]
        images = np.stack([read_image(flag, path, codec.side) for path, _ in batch])
        bits, labels = prior_bits(codec.model, codec.metadata, images)
        ideal += float(bits.sum())
        for (_, name), data in zip(batch, codec.compress(images, labels)):
            written.append(output_path(out, name.with_suffix(SUFFIX)))
            write_bytes(written[-1], data)
            total += len(data)
        progress.add(len(batch))
    return written, total, ideal, time.perf_counter() - started


def decompress_files(codec, given, out, flag="--decompress"):
    """Write the PNG of each SUFFIX file in `given` (files, and folders: every one below them) below `out`;
    returns (PNG paths, seconds). A file that does not decode stops the run with one line naming it, and
    nothing is written for it."""
    inputs = mirrored_inputs(flag, given, lambda path: path.suffix == SUFFIX)
    written = []
    progress = keras.utils.Progbar(len(inputs), unit_name="file")
    started = time.perf_counter()
    for path, name in inputs:
        try:
            levels, _ = codec.decompress(path.read_bytes())
        except CodecError as error:
            fail(f"{flag} {path}: {error}")
        image = decode_levels(codec.model, [codes[None] for codes in levels])[0]
        written.append(output_path(out, name.with_suffix(".png")))
        write_bytes(written[-1], png_bytes(image))
        progress.add(1)
    return written, time.perf_counter() - started

