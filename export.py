"""The SavedModel contract: what train.py exports, and what any TensorFlow code can load without this project.

Images are float32 [N, S, S, 1] in [0, 1]; codes int32 [N, G, G]; labels int32 [N], class indices into
class_names. A hierarchical model (metadata top_grid T > 0) also has top codes, int32 [N, T, T]. Each endpoint
has one signature and every argument is required: counts, seeds, top_k, positions and labels are int32 scalars,
temperature and top_p float32 scalars, keep_background a bool scalar.

Always:
    encode(images) -> codes (of a hierarchical model: its bottom level)
    decode(codes[, top_codes]) -> images
    reconstruct(images) -> images
    metadata() -> a JSON string: image_size, grid, top_grid (0: one level), num_codes, class_names,
        class_counts (the training images of each class), has_prior, has_texture, has_denoiser, scan_orders
        (those the prior learnt, `orders`; 0 without a prior)
    encode_top(images) -> top_codes; hierarchical models only
    texture(images, seed) -> the images plus one draw of the residual texture that the codes do not carry
        (`texture.DecoderTexture`), for generated slices; where has_texture
    denoise(images, sigma) -> the images freed of Rician noise of standard deviation sigma [N] (float32, a
        fraction of the intensity range, one per image; negative: estimated from the image), by the
        reconstruction and the Wiener filter of `denoiser.Denoiser`; where has_denoiser
    noise_sigma(images) -> [N], the Rician noise sigma that denoise estimates for each image; where
        has_denoiser
With a prior (has_prior):
    sample(n, temperature, seed, top_k, top_p, keep_background) -> images. top_k 0 and top_p 1 keep every
        code; keep_background True makes temperature, top_k and top_p reshape only the codes that are not
        those of an empty image, which keep the prior's probability (`sampling.filter_logits`). A conditional
        prior draws each image's class in proportion to class_counts. A hierarchy draws its top codes, then
        its bottom codes given them, with the same controls.
    sample_class(n, label, temperature, seed, top_k, top_p, keep_background) -> images of one class
        (conditional priors only)
    log_prob(images[, labels]) -> [N], the natural-log likelihood of the images' codes under the prior (of a
        hierarchy: of both levels' codes)
    prior_logits(codes[, top_codes][, labels]) -> logits [N, G, G, K]
    prior_start(n[, top_codes][, labels]) -> state
    prior_step(state, position, previous) -> the next state with "logits" [N, K] added: the prior one position
        at a time in raster order (previous: the codes at position - 1), which the codec runs
    top_prior_logits(top_codes[, labels]), top_prior_start(n[, labels]), top_prior_step(state, position,
        previous): the same for the top level of a hierarchy, whose bottom level the prior_... endpoints are
    code_log_likelihoods(images[, labels]) -> [N, G, G], log p(code | the codes before it in raster order) of
        each of the images' codes: with top_code_log_likelihoods(images[, labels]) -> [N, T, T] of a
        hierarchy, they sum to log_prob
    heal(images, threshold, seed, orders[, labels]) -> a dict of anomaly maps (`healing.anomaly_maps`):
        healed [N, S, S, 1], replaced [N, S, S, 1], anomaly [N, S, S, 1], score [N], codes_replaced [N]. Codes
        less likely than threshold (float32, in (0, 1]) given those before them are replaced, in each of the
        first `orders` (1..scan_orders) scan orders; labels: the class to heal each image under
`[, labels]`: an input of conditional priors only, and required there; `[, top_codes]`: of hierarchical
models only, and required there.

Every endpoint checks its inputs before any work and raises tf.errors.InvalidArgumentError, its message
naming the argument and what it expects, instead of wrapping, clamping or drawing from nonsense: images with
values outside [0, 1] or NaN; sigma not finite or not one for each image; codes and previous outside
0..num_codes-1; label and labels outside 0..len(class_names)-1; labels or previous not one for each image; n
below 1; temperature not positive and finite; top_k outside 0..num_codes; top_p and threshold outside (0, 1];
position outside 0..grid*grid-1; orders outside 1..scan_orders.
"""

import json
import shlex
from pathlib import Path

import numpy as np
import tensorflow as tf

import healing
import noise
from hierarchy import HierarchicalPrior
from utils import first_line

REQUIRED_ENDPOINTS = ("encode", "decode", "reconstruct", "metadata")
PRIOR_ENDPOINTS = ("sample", "prior_logits", "log_prob", "prior_start", "prior_step", "code_log_likelihoods", "heal")
METADATA_KEYS = ("image_size", "grid", "top_grid", "num_codes", "class_names", "class_counts", "has_prior",
                 "has_texture", "has_denoiser", "scan_orders")
SCALARS = {"n": tf.int32, "label": tf.int32, "temperature": tf.float32, "seed": tf.int32, "top_k": tf.int32,
           "top_p": tf.float32, "keep_background": tf.bool, "position": tf.int32, "threshold": tf.float32,
           "orders": tf.int32}
SAMPLING = ("temperature", "seed", "top_k", "top_p", "keep_background")


def export_savedmodel(vqvae, path, image_size, metadata, prior=None, class_counts=None, texture=None,
                      denoiser=None):
    """Write `vqvae` (and `prior`, with the training split's `class_counts` if it is conditional, and the
    fitted `texture` and `denoiser`) as one SavedModel at `path` with the endpoints above."""
    from keras.export import ExportArchive

    grid = image_size // vqvae.downsampling_factor
    top_grid = grid // vqvae.top_factor
    specs = {"images": tf.TensorSpec([None, image_size, image_size, 1], tf.float32, name="images"),
             "codes": tf.TensorSpec([None, grid, grid], tf.int32, name="codes"),
             "top_codes": tf.TensorSpec([None, top_grid, top_grid], tf.int32, name="top_codes"),
             **{name: tf.TensorSpec([], dtype, name=name) for name, dtype in SCALARS.items()}}
    metadata_json = json.dumps(metadata, sort_keys=True)
    archive = ExportArchive()
    archive.track(vqvae)
    num_codes = vqvae.quantizer.num_codes
    archive.add_endpoint("encode", lambda images: vqvae.encode(checked_images(images)),
                         input_signature=[specs["images"]])
    if vqvae.hierarchical:
        top_codes = vqvae.top_quantizer.num_codes
        archive.add_endpoint("encode_top", lambda images: vqvae.encode_levels(checked_images(images))[0],
                             input_signature=[specs["images"]])
        archive.add_endpoint("decode", lambda codes, top: vqvae.decode_levels(
            checked_codes(top, top_codes, "top_codes"), checked_codes(codes, num_codes)),
                             input_signature=[specs["codes"], specs["top_codes"]])
    else:
        archive.add_endpoint("decode", lambda codes: vqvae.decode(checked_codes(codes, num_codes)),
                             input_signature=[specs["codes"]])
    archive.add_endpoint("reconstruct", lambda images: vqvae.reconstruct(checked_images(images)),
                         input_signature=[specs["images"]])
    archive.add_endpoint("metadata", lambda: tf.constant(metadata_json), input_signature=[])
    if texture is not None:
        archive.track(texture)
        archive.add_endpoint("texture", lambda images, seed: texture(checked_images(images), seed=seed),
                             input_signature=[specs["images"], specs["seed"]])
    if denoiser is not None:
        _add_denoising_endpoints(archive, vqvae, denoiser, specs["images"])
    if prior is not None:
        archive.track(prior)
        _add_sampling_endpoints(archive, vqvae, prior, specs, class_counts, background_codes(vqvae, image_size))
        _add_scoring_endpoints(archive, vqvae, prior, specs)
        _add_anomaly_endpoints(archive, vqvae, prior, specs)
    archive.write_out(str(path), verbose=False)


def background_codes(vqvae, image_size):
    """bool [K] of each level (top first): the codes that `vqvae` gives an empty (all-zero) image, the
    background of skull-stripped slices (a few: the image's border changes them)."""
    levels = vqvae.encode_levels(tf.zeros((1, image_size, image_size, 1)))
    return tuple(np.isin(np.arange(vqvae.quantizer.num_codes), codes.numpy()) for codes in levels)


def _add_denoising_endpoints(archive, vqvae, denoiser, images_spec):
    """denoise and noise_sigma."""
    archive.track(denoiser)

    def denoise(images, sigma):
        images = checked_images(images)
        sigma = checked_sigma(sigma, tf.shape(images)[0])
        return denoiser(images, vqvae.reconstruct(images), sigma)

    archive.add_endpoint("denoise", denoise, input_signature=[images_spec, tf.TensorSpec([None], tf.float32,
                                                                                          name="sigma")])
    archive.add_endpoint("noise_sigma", lambda images: noise.estimate_sigma(checked_images(images)),
                         input_signature=[images_spec])


def _add_sampling_endpoints(archive, vqvae, prior, specs, class_counts, background):
    """sample, and sample_class for a conditional prior; `background` marks the codes that keep_background
    leaves alone."""
    # ExportArchive traces endpoints without AutoGraph; the sampler's loops need it. XLA compiles the whole
    # cached loop, which runs much faster than the loop op by op.
    sample_codes = tf.function(prior.sample, autograph=True, jit_compile=True)

    def decoded_sample(n, labels, temperature, seed, top_k, top_p, keep_background):
        marked = tuple(tf.logical_and(tf.constant(codes), keep_background) for codes in background)
        levels = sample_codes(n, labels, temperature, seed, top_k=top_k, top_p=top_p,
                              background=marked if vqvae.hierarchical else marked[0])
        return vqvae.decode_levels(*(levels if vqvae.hierarchical else (levels,)))

    def sample(n, temperature, seed, top_k, top_p, keep_background):
        n, temperature, top_k, top_p = checked_sampling(n, temperature, top_k, top_p, prior.num_codes)
        labels = None
        if prior.num_classes:
            log_weights = tf.math.log(tf.constant(class_counts, tf.float32)[None, :])
            labels = tf.random.stateless_categorical(log_weights, n, tf.stack([seed, -1]), dtype=tf.int32)[0]
        return decoded_sample(n, labels, temperature, seed, top_k, top_p, keep_background)

    def sample_class(n, label, temperature, seed, top_k, top_p, keep_background):
        n, temperature, top_k, top_p = checked_sampling(n, temperature, top_k, top_p, prior.num_codes)
        label = _passed(label, _within(label, 0, prior.num_classes - 1, _class_message("label", prior.num_classes)))
        return decoded_sample(n, tf.fill([n], label), temperature, seed, top_k, top_p, keep_background)

    archive.add_endpoint("sample", sample, input_signature=[specs[name] for name in ("n", *SAMPLING)])
    if prior.num_classes:
        archive.add_endpoint("sample_class", sample_class,
                             input_signature=[specs[name] for name in ("n", "label", *SAMPLING)])


def _add_scoring_endpoints(archive, vqvae, prior, specs):
    """log_prob, and prior_logits, prior_start and prior_step of each level (top_prior_... for the top level
    of a hierarchy), with a labels input where the prior is conditional."""
    with_labels = [tf.TensorSpec([None], tf.int32, name="labels")] if prior.num_classes else []
    num_classes = prior.num_classes

    def log_prob(images, labels=None):
        images = checked_images(images)
        return prior.log_prob(*vqvae.encode_levels(images), checked_labels(labels, num_classes, tf.shape(images)[0]))

    archive.add_endpoint("log_prob", log_prob, input_signature=[specs["images"], *with_labels])
    if isinstance(prior, HierarchicalPrior):
        _add_level_endpoints(archive, prior.top, "top_prior", specs["top_codes"], with_labels)
        _add_level_endpoints(archive, prior.bottom, "prior", specs["codes"], with_labels, specs["top_codes"])
    else:
        _add_level_endpoints(archive, prior, "prior", specs["codes"], with_labels)


def _add_anomaly_endpoints(archive, vqvae, prior, specs):
    """code_log_likelihoods (and top_code_log_likelihoods of a hierarchy) and heal."""
    with_labels = [tf.TensorSpec([None], tf.int32, name="labels")] if prior.num_classes else []
    levels = (prior.top, prior.bottom) if isinstance(prior, HierarchicalPrior) else (prior,)

    def level_log_likelihoods(level):
        def log_likelihoods(images, labels=None):
            images = checked_images(images)
            codes = vqvae.encode_levels(images)
            labels = checked_labels(labels, prior.num_classes, tf.shape(images)[0])
            return healing.code_log_likelihoods(levels[level], codes[level], labels, codes[0] if level else None)
        return log_likelihoods

    archive.add_endpoint("code_log_likelihoods", level_log_likelihoods(len(levels) - 1),
                         input_signature=[specs["images"], *with_labels])
    if len(levels) == 2:
        archive.add_endpoint("top_code_log_likelihoods", level_log_likelihoods(0),
                             input_signature=[specs["images"], *with_labels])
    # The healing loop, like the sampler's, needs AutoGraph and runs much faster compiled by XLA.
    heal_levels = tf.function(healing.heal_levels, autograph=True, jit_compile=True)

    def heal(images, threshold, seed, orders, labels=None):
        images = checked_images(images)
        labels = checked_labels(labels, prior.num_classes, tf.shape(images)[0])
        threshold_message = "threshold: expected a probability above 0 and at most 1"
        threshold, orders = _passed((threshold, orders), [
            tf.debugging.assert_positive(threshold, message=threshold_message),
            tf.debugging.assert_less_equal(threshold, 1.0, message=threshold_message),
            *_within(orders, 1, prior.scan_orders, f"orders: expected 1 to {prior.scan_orders} scan orders")])
        return healing.anomaly_maps(vqvae, prior, images, threshold, seed, labels, orders, heal_levels)

    archive.add_endpoint("heal", heal, input_signature=[specs[name] for name in ("images", "threshold", "seed",
                                                                                 "orders")] + with_labels)


def _add_level_endpoints(archive, prior, prefix, codes_spec, with_labels, top_spec=None):
    """PREFIX_logits(codes[, top_codes][, labels]), PREFIX_start(n[, top_codes][, labels]) and PREFIX_step of
    one level's gated PixelCNN; top codes for the bottom prior of a hierarchy."""
    num_codes, num_classes, positions = prior.num_codes, prior.num_classes, prior.grid_size ** 2
    with_top = [top_spec] if top_spec is not None else []

    def extras(args, count):
        """(labels, top codes) of the optional inputs `args`, checked."""
        top = checked_codes(args[0], prior.condition_codes, "top_codes") if with_top else None
        labels = checked_labels(args[-1], num_classes, count) if with_labels else None
        return labels, top

    def logits(codes, *args):
        codes = checked_codes(codes, num_codes, codes_spec.name)
        return prior.logits(codes, *extras(args, tf.shape(codes)[0]))

    def start(n, *args):
        n = _passed(n, [_positive_count(n)])
        return prior.initial_state(n, *extras(args, n))

    archive.add_endpoint(f"{prefix}_logits", logits, input_signature=[codes_spec, *with_top, *with_labels])
    archive.add_endpoint(f"{prefix}_start", start, input_signature=[tf.TensorSpec([], tf.int32, name="n"),
                                                                   *with_top, *with_labels])
    # Compiled alone, so that every caller (the codec's encoder and decoder alike) runs the same arithmetic.
    step = tf.function(prior.step, jit_compile=True)

    def prior_step(state, position, previous):
        position = _passed(position, _within(position, 0, positions - 1,
                                             f"position: expected a position from 0 to {positions - 1}"))
        previous = _passed(checked_codes(previous, num_codes, "previous"), [tf.debugging.assert_equal(
            tf.size(previous), tf.shape(state["row"])[0], message="previous: expected one code per grid of the state")])
        state, logits = step(state, position, previous)
        return {**state, "logits": logits}  # flat: a signature's outputs cannot nest

    archive.add_endpoint(f"{prefix}_step", prior_step,
                         input_signature=[prior_state_spec(prior), tf.TensorSpec([], tf.int32, name="position"),
                                          tf.TensorSpec([None], tf.int32, name="previous")])


# The checks of the endpoints' inputs. Each returns its input, which then depends on assertions that have
# passed, so that no work starts on a bad input. They run outside the XLA-compiled sampler and step: XLA
# drops assertions, and clamps an index out of range where TensorFlow would refuse it.

def _passed(values, assertions):
    """`values` (a tensor or a structure of them), once every one of `assertions` has passed."""
    with tf.control_dependencies(assertions):
        return tf.nest.map_structure(tf.identity, values)


def _within(value, low, high, message):
    """Assertions that every element of `value` is from `low` to `high` (NaN never is)."""
    return [tf.debugging.assert_greater_equal(value, tf.cast(low, value.dtype), message=message),
            tf.debugging.assert_less_equal(value, tf.cast(high, value.dtype), message=message)]


def _class_message(name, num_classes):
    return f"{name}: expected a class index from 0 to {num_classes - 1}"


def _positive_count(n):
    return tf.debugging.assert_positive(n, message="n: expected a positive number of images")


def checked_images(images):
    """`images` once their values are known to be in [0, 1]."""
    return _passed(images, _within(images, 0.0, 1.0, "images: expected values from 0 to 1 (and no NaN)"))


def checked_sigma(sigma, count):
    """`sigma` once it is known to be `count` finite numbers."""
    message = "sigma: expected a finite noise level (negative: estimate it) for each image"
    return _passed(sigma, [tf.debugging.assert_equal(tf.size(sigma), count, message=message),
                           tf.debugging.assert_less(tf.abs(sigma), tf.constant(np.inf), message=message)])


def checked_codes(codes, num_codes, name="codes"):
    """`codes` once each is known to be one of the `num_codes` codes."""
    return _passed(codes, _within(codes, 0, num_codes - 1, f"{name}: expected codes from 0 to {num_codes - 1}"))


def checked_labels(labels, num_classes, count):
    """`labels` once they are known to be `count` class indices (None stays None: an unconditional prior)."""
    if labels is None:
        return None
    message = _class_message("labels", num_classes) + " for each image"
    return _passed(labels, [*_within(labels, 0, num_classes - 1, message),
                            tf.debugging.assert_equal(tf.size(labels), count, message=message)])


def checked_sampling(n, temperature, top_k, top_p, num_codes):
    """(n, temperature, top_k, top_p) of the sampling endpoints, once each is known to be in its range."""
    temperature_message = "temperature: expected a finite number above 0"
    top_p_message = "top_p: expected a probability above 0 and at most 1"
    return _passed((n, temperature, top_k, top_p), [
        _positive_count(n),
        tf.debugging.assert_positive(temperature, message=temperature_message),
        tf.debugging.assert_less(temperature, tf.constant(np.inf, temperature.dtype), message=temperature_message),
        *_within(top_k, 0, num_codes, f"top_k: expected 0 (every code) or a number of codes up to {num_codes}"),
        tf.debugging.assert_positive(top_p, message=top_p_message),
        tf.debugging.assert_less_equal(top_p, tf.constant(1.0, top_p.dtype), message=top_p_message)])


def prior_state_spec(prior):
    """The TensorSpecs of `prior.initial_state(n)` for any batch size n."""
    top = tf.TensorSpec([None, prior.condition_grid, prior.condition_grid], tf.int32) if prior.conditioned else None
    traced = tf.function(prior.initial_state).get_concrete_function(tf.TensorSpec([], tf.int32), None, top)
    return tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), traced.structured_outputs)


def sample_images(model, n, temperature=1.0, seed=0, top_k=0, top_p=1.0, keep_background=False, label=None):
    """float32 [n, S, S, 1] from a loaded export's `sample`, or its `sample_class` of class index `label`."""
    controls = [tf.constant(temperature, tf.float32), tf.constant(seed, tf.int32), tf.constant(top_k, tf.int32),
                tf.constant(top_p, tf.float32), tf.constant(keep_background)]
    if label is None:
        return model.sample(tf.constant(n, tf.int32), *controls).numpy()
    return model.sample_class(tf.constant(n, tf.int32), tf.constant(label, tf.int32), *controls).numpy()


def add_texture(model, images, seed):
    """`images` (numpy) with the texture of the export `model` (metadata has_texture) drawn with `seed`."""
    return model.texture(tf.constant(images), tf.constant(seed)).numpy()


def load_export(path):
    """(the SavedModel at `path`, its metadata dict); raises ValueError starting with `path` if it is not
    an export of this project, or was made by an earlier version of it."""
    path = Path(path)
    if path.is_file():
        raise ValueError(f"{path}: a file; expected the SavedModel folder that train.py writes (the folder "
                         f"holding saved_model.pb, model.keras and config.json)")
    if not (path / "saved_model.pb").exists():
        raise ValueError(f"{path}: no SavedModel there")
    try:
        model = tf.saved_model.load(str(path))
    except Exception as error:  # TensorFlow raises many kinds of error for a damaged SavedModel
        raise ValueError(f"{path}: not a loadable SavedModel ({first_line(error)})") from None
    if not all(hasattr(model, name) for name in REQUIRED_ENDPOINTS):
        raise ValueError(f"{path}: a SavedModel without this project's encode/decode/reconstruct endpoints")
    try:
        metadata = json.loads(model.metadata().numpy().decode())
    except (ValueError, UnicodeDecodeError, tf.errors.OpError) as error:
        raise ValueError(f"{path}: its metadata() is not this project's JSON ({first_line(error)})") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: its metadata() is not this project's JSON (not an object)")
    missing = _missing_parts(model, metadata)
    if missing:
        retrain = shlex.join(["python", "train.py", "--out", str(path)])
        raise ValueError(f"{path}: {missing}: made by an earlier version of this project; retrain it ({retrain})")
    return model, metadata


def _missing_parts(model, metadata):
    """What the export `model` lacks of the contract, in words ("" if nothing): metadata keys, and endpoints
    that its metadata promises."""
    promised = ["texture"] if metadata.get("has_texture") else []
    promised += ["denoise", "noise_sigma"] if metadata.get("has_denoiser") else []
    if metadata.get("has_prior"):
        promised += [*PRIOR_ENDPOINTS, *(["sample_class"] if metadata.get("class_names") else [])]
    keys = [key for key in METADATA_KEYS if key not in metadata]
    endpoints = [name for name in promised if not hasattr(model, name)]
    missing = [f"metadata without {', '.join(keys)}"] if keys else []
    if endpoints:
        missing.append(f"no {', '.join(endpoints)} endpoint" + ("s" if len(endpoints) > 1 else ""))
    return "; ".join(missing)
