"""The SavedModel contract: what train.py exports and what any TensorFlow code can load without this project.

Images are float32 [N, S, S, 1] in [0, 1]; codes are int32 [N, G, G]; labels int32 [N].
Always: encode(images) -> codes; decode(codes) -> images; reconstruct(images) -> images;
metadata() -> JSON string (image_size, grid, num_codes, class_names, has_prior, and from this version on
class_counts: the training images of each class, which `sample` draws classes in proportion to).
With a prior: sample(n, temperature=1, seed=0[, top_k, top_p[, keep_background]]) -> images (a conditional
prior draws classes in training proportions; top_k 0 and top_p 1 keep every code, as the three-argument form
does; keep_background True, from this version on, makes temperature, top_k and top_p reshape only the codes
that are not those of an empty image, which keep the prior's probability: `modules.filter_logits`);
prior_logits(codes[, labels]) -> [N, G, G, K]; log_prob(images[, labels]) -> [N], the natural-log
likelihood of the images' codes under the prior; prior_start(n[, labels]) -> state and
prior_step(state, position, previous) -> the next state with "logits" [N, K] added, the prior one
position at a time in raster order (previous: the codes at position - 1), which the codec runs; conditional priors add
sample_class(n, label, temperature=1, seed=0[, top_k, top_p[, keep_background]]). `[, labels]`: conditional
priors only.
From this version on, texture(images, seed) -> images: the images plus one draw of the residual texture that
the codes do not carry (`texture.DecoderTexture`), for generated slices; metadata has_texture says it is there.
"""

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

REQUIRED_ENDPOINTS = ("encode", "decode", "reconstruct", "metadata")
METADATA_KEYS = {"image_size", "grid", "num_codes", "class_names", "has_prior"}


def export_savedmodel(vqvae, path, image_size, metadata, prior=None, class_counts=None, texture=None):
    """Write `vqvae` (and `prior`, with the training split's `class_counts` if it is conditional, and the
    fitted `texture`) as one SavedModel at `path` with the endpoints above."""
    from keras.export import ExportArchive

    grid = image_size // vqvae.downsampling_factor
    specs = {"images": tf.TensorSpec([None, image_size, image_size, 1], tf.float32, name="images"),
             "codes": tf.TensorSpec([None, grid, grid], tf.int32, name="codes")}
    metadata_json = json.dumps(metadata, sort_keys=True)
    archive = ExportArchive()
    archive.track(vqvae)
    archive.add_endpoint("encode", vqvae.encode, input_signature=[specs["images"]])
    archive.add_endpoint("decode", vqvae.decode, input_signature=[specs["codes"]])
    archive.add_endpoint("reconstruct", vqvae.reconstruct, input_signature=[specs["images"]])
    archive.add_endpoint("metadata", lambda: tf.constant(metadata_json), input_signature=[])
    if texture is not None:
        archive.track(texture)
        archive.add_endpoint("texture", lambda images, seed: texture(images, seed=seed),
                             input_signature=[specs["images"], tf.TensorSpec([], tf.int32, name="seed")])
    if prior is not None:
        _add_prior_endpoints(archive, vqvae, prior, specs, class_counts, background_codes(vqvae, image_size))
    archive.write_out(str(path), verbose=False)


def background_codes(vqvae, image_size):
    """bool [K]: the codes that `vqvae` gives an empty (all-zero) image, the background of skull-stripped
    slices (a few: the image's border changes them)."""
    codes = vqvae.encode(tf.zeros((1, image_size, image_size, 1))).numpy()
    return np.isin(np.arange(vqvae.quantizer.num_codes), codes)


def _add_prior_endpoints(archive, vqvae, prior, specs, class_counts, background):
    """sample, prior_logits and log_prob, with a labels input where the prior is conditional, and
    sample_class for conditional priors; `background` marks the codes that keep_background leaves alone."""
    archive.track(prior)
    conditional = bool(prior.num_classes)
    scalar = {name: tf.TensorSpec([], dtype, name=name) for name, dtype in
              (("n", tf.int32), ("label", tf.int32), ("temperature", tf.float32), ("seed", tf.int32),
               ("top_k", tf.int32), ("top_p", tf.float32), ("keep_background", tf.bool))}
    with_labels = [tf.TensorSpec([None], tf.int32, name="labels")] if conditional else []
    # ExportArchive traces endpoints without AutoGraph; the sampler's loops need it. XLA compiles the whole
    # cached loop (about 3 times faster than without it on a CPU).
    sample_codes = tf.function(prior.sample, autograph=True, jit_compile=True)

    def prior_logits(codes, labels=None):
        return prior((codes, labels) if conditional else codes)

    def log_prob(images, labels=None):
        codes = vqvae.encode(images)
        log_probs = tf.nn.log_softmax(prior_logits(codes, labels), axis=-1)
        return tf.reduce_sum(tf.gather(log_probs, codes, batch_dims=3), axis=[1, 2])

    def sample(n, temperature=1.0, seed=0, top_k=0, top_p=1.0, keep_background=False):
        labels = None
        if conditional:
            log_weights = tf.math.log(tf.constant(class_counts, tf.float32)[None, :])
            labels = tf.random.stateless_categorical(log_weights, n, tf.stack([seed, -1]), dtype=tf.int32)[0]
        return vqvae.decode(sample_codes(n, labels, temperature, seed, **controls(top_k, top_p, keep_background)))

    def sample_class(n, label, temperature=1.0, seed=0, top_k=0, top_p=1.0, keep_background=False):
        return vqvae.decode(sample_codes(n, tf.fill([n], label), temperature, seed,
                                         **controls(top_k, top_p, keep_background)))

    def controls(top_k, top_p, keep_background):
        """Tensors even for the defaults, so that every endpoint reuses one trace of the sampler (tracing its
        loops is what makes an export slow); no code is marked as background unless keep_background."""
        return {"top_k": tf.convert_to_tensor(top_k, tf.int32), "top_p": tf.convert_to_tensor(top_p, tf.float32),
                "background": tf.logical_and(tf.constant(background), keep_background)}

    filters = [[scalar["top_k"], scalar["top_p"]], [scalar["keep_background"]]]
    sampling = [scalar["temperature"], scalar["seed"]]
    archive.add_endpoint("sample", _with_and_without(sample, [scalar["n"], *sampling], *filters))
    archive.add_endpoint("prior_logits", prior_logits, input_signature=[specs["codes"], *with_labels])
    archive.add_endpoint("log_prob", log_prob, input_signature=[specs["images"], *with_labels])
    state = prior_state_spec(prior)
    archive.add_endpoint("prior_start", lambda n, labels=None: prior.initial_state(n, labels),
                         input_signature=[scalar["n"], *with_labels])
    # Compiled alone, so that every caller (the codec's encoder and decoder alike) runs the same arithmetic.
    step = tf.function(prior.step, jit_compile=True)

    def prior_step(state, position, previous):
        state, logits = step(state, position, previous)
        return {**state, "logits": logits}  # flat: a signature's outputs cannot nest

    archive.add_endpoint("prior_step", prior_step,
                         input_signature=[state, tf.TensorSpec([], tf.int32, name="position"),
                                          tf.TensorSpec([None], tf.int32, name="previous")])
    if conditional:
        archive.add_endpoint("sample_class", _with_and_without(sample_class, [scalar["n"], scalar["label"], *sampling],
                                                              *filters))


def prior_state_spec(prior):
    """The TensorSpecs of `prior.initial_state(n)` for any batch size n."""
    traced = tf.function(prior.initial_state).get_concrete_function(tf.TensorSpec([], tf.int32))
    return tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), traced.structured_outputs)


def _with_and_without(function, signature, *optional):
    """`function` as a tf.function callable with the `signature` arguments alone or followed by the first
    one, two, ... groups of `optional` arguments: an endpoint that older callers use unchanged and newer ones
    extend."""
    function = tf.function(function)
    function.get_concrete_function(*signature)
    for count in range(1, len(optional) + 1):
        function.get_concrete_function(*signature, *sum(optional[:count], []))
    return function


def sample_images(model, n, temperature=1.0, seed=0, top_k=0, top_p=1.0, keep_background=False, label=None):
    """float32 [n, S, S, 1] from a loaded export's `sample` (or `sample_class` of class index `label`), called
    in the shortest form that carries the controls: with all of them at their defaults, the three-argument
    form every export has (keep_background changes nothing then). Raises ValueError for an export from
    before the controls asked for."""
    arguments = [tf.constant(n), tf.constant(temperature, tf.float32), tf.constant(seed)]
    if label is not None:
        arguments.insert(1, tf.constant(label))
    endpoint = model.sample if label is None else model.sample_class
    controls = [tf.constant(top_k), tf.constant(top_p, tf.float32)]
    if keep_background and (temperature != 1 or top_k or top_p < 1):
        controls.append(tf.constant(True))
    elif not (top_k or top_p < 1):
        controls = []
    try:
        return endpoint(*arguments, *controls).numpy()
    except (TypeError, ValueError):  # no such concrete function: an older export
        raise ValueError("predates " + ("keep_background" if len(controls) == 3 else "top_k/top_p")) from None


def add_texture(model, images, seed):
    """`images` (numpy) with the texture of the export `model` (metadata has_texture) drawn with `seed`."""
    return model.texture(tf.constant(images), tf.constant(seed)).numpy()


def load_export(path):
    """(the SavedModel at `path`, its metadata dict); raises ValueError starting with `path` if it is not
    one of this project's exports."""
    path = Path(path)
    if path.is_file():
        raise ValueError(f"{path}: a file; expected the SavedModel folder that train.py writes (the folder "
                         f"holding saved_model.pb, model.keras and config.json)")
    if not (path / "saved_model.pb").exists():
        raise ValueError(f"{path}: no SavedModel there")
    try:
        model = tf.saved_model.load(str(path))
    except Exception as error:  # TensorFlow raises many kinds of error for a damaged SavedModel
        raise ValueError(f"{path}: not a loadable SavedModel ({_first_line(error)})") from None
    if not all(hasattr(model, name) for name in REQUIRED_ENDPOINTS):
        raise ValueError(f"{path}: a SavedModel without this project's encode/decode/reconstruct endpoints")
    try:
        metadata = json.loads(model.metadata().numpy().decode())
    except (ValueError, UnicodeDecodeError, tf.errors.OpError) as error:
        raise ValueError(f"{path}: its metadata() is not this project's JSON ({_first_line(error)})") from None
    if not isinstance(metadata, dict) or not METADATA_KEYS <= set(metadata):
        raise ValueError(f"{path}: its metadata() lacks {', '.join(sorted(METADATA_KEYS))}")
    return model, metadata


def _first_line(error):
    """The first line of an error's message, with its type, at most 200 characters."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"
