"""Every setting of a training run, declared once: its flag, default and help, which stage's checkpoints it
defines, and which model's constructor it goes to.

train.py builds its command line from `SETTINGS` and refuses values no run can use (`check_arguments`);
`--resume` refuses to continue a stage whose defining settings changed (`checkpoint_settings`); the models are
built from `model_arguments`; config.json records them all. A new flag is one entry here.
"""

import argparse
import dataclasses
import math
import os

import volumes

VQVAE, PRIOR = "vqvae", "prior"
BOTH = (VQVAE, PRIOR)
# The quantizer's seed and the export's seed, counts and top-k are int32 tensors, into which TensorFlow wraps a
# larger Python int without a word (two seeds would then draw alike): no integer flag goes beyond this.
INT32_MAX = 2**31 - 1
# MRI slices are acquired at 512 voxels a side or fewer; the decoded data and the VQ-VAE's first layers grow
# with the square of the side, so larger images only cost memory.
MAX_IMAGE_SIZE = 1024
# A model of more layers takes minutes to build before its first step: such a count is a typo, not a plan.
MAX_LAYERS = 1000


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric flag accepts: `low` to `high` (None: no bound), both ends included unless
    `exclusive` names them ("low", "high" or "both"); never NaN or infinite. `expected` words it for the
    error message when the generated wording would not do; `note` is added to the generated wording."""

    integer: bool
    low: float
    high: float = None
    exclusive: str = ""
    note: str = ""
    expected: str = None

    def __contains__(self, value):
        if not math.isfinite(value):
            return False
        above = value > self.low if self.exclusive in ("low", "both") else value >= self.low
        below = self.high is None or (value < self.high if self.exclusive in ("high", "both") else value <= self.high)
        return above and below

    def describe(self):
        """The accepted values in words, e.g. 'a positive integer up to 2,147,483,647'."""
        if self.expected:
            return self.expected
        if self.integer:
            start = {1: "a positive integer up to", 0: "0 or a positive integer up to"}.get(
                self.low, f"an integer from {self.low} to")
            words = f"{start} {self.high:,}"
        elif self.high is None:
            words = ("a finite positive number" if self.low == 0 and self.exclusive == "low" else
                     f"a finite number {'>' if self.exclusive == 'low' else '>='} {self.low:g}")
        else:
            left = "(" if self.exclusive in ("low", "both") else "["
            right = ")" if self.exclusive in ("high", "both") else "]"
            words = (f"a {'fraction' if (self.low, self.high) == (0, 1) else 'number'} in "
                     f"{left}{self.low:g}, {self.high:g}{right}")
        return f"{words} {self.note}" if self.note else words


def integers(low=1, high=INT32_MAX, note="", expected=None):
    """The Range of an integer flag (by default: positive and an int32)."""
    return Range(True, low, high, note=note, expected=expected)


def numbers(low=0, high=None, exclusive="low", note="", expected=None):
    """The Range of a float flag (by default: positive and finite)."""
    return Range(False, low, high, exclusive, note, expected)


SEEDS = integers(0, note="(the quantizer's and the export's seeds are int32)")
IMAGE_SIZES = integers(16, MAX_IMAGE_SIZE,
                       note="and a multiple of 2^downsamplings (MRI slices have 512 voxels a side or fewer)")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One command-line flag of train.py.

    `defines`: the stages whose checkpoints depend on its value, so that --resume refuses a change (empty
    for settings that may change between sessions of one run, such as --epochs or the hardware).
    `argument`: (model, parameter) where the value is passed to that model's constructor, if it is.
    `accepts`: the Range of a numeric flag's values, which check_arguments enforces.
    `options`: argparse's add_argument keywords (default, type, choices, help, ...).
    """

    name: str
    group: str
    defines: tuple = ()
    argument: tuple = None
    accepts: Range = None
    options: dict = dataclasses.field(default_factory=dict)

    @property
    def flag(self):
        """The command-line spelling, e.g. --num-codes."""
        return "--" + self.name.replace("_", "-")


def _setting(name, group, defines=(), argument=None, accepts=None, **options):
    return Setting(name, group, defines, argument, accepts, options)


SETTINGS = (
    _setting("data", "data", BOTH, help="folder of OASIS, ADNI or plain image slices, or of NIfTI/Analyze volumes "
             "(default: the embedded demo)"),
    _setting("dataset", "data", BOTH, default="auto", choices=["auto", "oasis", "adni", "folder", "volumes", "demo"],
             help="layout of --data; auto detects it (default: %(default)s)"),
    _setting("axis", "data", BOTH, default="axial", choices=["axial", "coronal", "sagittal"],
             help="volumes: the axis to slice along, after turning each volume to RAS (default: %(default)s)"),
    _setting("slices", "data", BOTH, default="all",
             help="volumes: which brain slices to keep: all, central:F (the middle fraction F), every:K, or "
             "central:F,every:K (default: %(default)s)"),
    _setting("image_size", "data", BOTH, accepts=IMAGE_SIZES, type=int, default=128,
             help=f"side S of the square images, a multiple of 2^downsamplings up to {MAX_IMAGE_SIZE} "
             "(default: %(default)s)"),
    _setting("validation_fraction", "data", BOTH, accepts=numbers(0, 1, "both"), type=float, default=0.1,
             help="share of train patients held out for validation where the data has no such split, in (0, 1) "
             "(default: %(default)s)"),
    _setting("skip_bad", "data", action="store_true", help="skip unreadable image files instead of stopping"),

    _setting("num_codes", "model", (VQVAE,), (VQVAE, "num_codes"), integers(2), type=int, default=256,
             help="codebook size K (default: %(default)s)"),
    _setting("code_dim", "model", (VQVAE,), (VQVAE, "code_dim"), integers(), type=int, default=32,
             help="code vector size D (default: %(default)s)"),
    _setting("channels", "model", (VQVAE,), (VQVAE, "channels"), integers(), type=int, default=64,
             help="channels at the code grid (default: %(default)s)"),
    _setting("downsamplings", "model", (VQVAE,), (VQVAE, "downsamplings"),
             integers(1, MAX_IMAGE_SIZE.bit_length() - 1), type=int, default=2,
             help="stride-2 steps; the code grid is S/2^d a side (default: %(default)s)"),
    _setting("top_downsamplings", "model", (VQVAE,), (VQVAE, "top_downsamplings"), integers(0, 8), type=int,
             default=0, help="stride-2 steps from the code grid to a coarser top grid of codes (a hierarchical "
             "VQ-VAE-2), where the prior draws the anatomy before the detail; 0: one level (default: %(default)s)"),
    _setting("res_blocks", "model", (VQVAE,), (VQVAE, "res_blocks"), integers(0, MAX_LAYERS),
             type=int, default=2, help="residual blocks in encoder and decoder; 0: none (default: %(default)s)"),
    _setting("beta", "model", (VQVAE,), (VQVAE, "beta"), numbers(), type=float, default=0.25,
             help="commitment loss weight (default: %(default)s)"),
    _setting("ssim_weight", "model", (VQVAE,), (VQVAE, "ssim_weight"),
             numbers(exclusive="", expected="a weight >= 0, finite (0 turns the SSIM term off)"), type=float,
             default=0.05, help="weight of 1 - SSIM added to the squared error; 0: none (default: %(default)s)"),
    _setting("ema_decay", "model", (VQVAE,), (VQVAE, "ema_decay"),
             numbers(0, 1, "high", expected="0 (off) or a value in (0, 1)"), type=float, default=0.99,
             help="EMA decay of the codebook; 0 learns it by gradient instead (default: %(default)s)"),
    _setting("train_noise", "model", (VQVAE,), (VQVAE, "train_noise"),
             numbers(0, 1, "", expected="0 (off) or a noise sigma up to 1, the intensity range"), type=float,
             default=0.0,
             metavar="SIGMA_MAX", help="train the VQ-VAE to denoise: its encoder sees each training slice with "
             "Rician noise of a sigma drawn per slice up to SIGMA_MAX (a fraction of the intensity range; a "
             "quarter of the slices stay clean) and the loss compares its output with the clean slice; 0 trains "
             "on clean slices only (default: %(default)s)"),

    _setting("prior_epochs", "prior", accepts=integers(), type=int, default=8,
             help="epochs of the prior (default: %(default)s)"),
    _setting("top_prior_epochs", "prior", accepts=integers(), type=int, default=8,
             help="epochs of the top level's prior, with --top-downsamplings (default: %(default)s)"),
    _setting("prior_channels", "prior", (PRIOR,), (PRIOR, "channels"), integers(), type=int, default=32,
             help="prior channels (default: %(default)s)"),
    _setting("prior_layers", "prior", (PRIOR,), (PRIOR, "num_layers"), integers(1, MAX_LAYERS), type=int, default=10,
             help="gated blocks (default: %(default)s)"),
    _setting("prior_attention", "prior", (PRIOR,), (PRIOR, "attention_layers"), integers(0, MAX_LAYERS),
             type=int, default=1, help="self-attention layers in the prior's vertical stack, for global structure, "
             "each before a different gated block after the first: fewer than --prior-layers; 0: none "
             "(default: %(default)s)"),
    _setting("prior_attention_pool", "prior", (PRIOR,), (PRIOR, "attention_pool"), integers(), type=int,
             default=4, help="columns of the code grid averaged into one attention token, at most the grid's side; "
             "1 attends to every code, at pool^2 times the cost of the attention (default: %(default)s)"),
    _setting("prior_dropout", "prior", (PRIOR,), (PRIOR, "dropout"), numbers(0, 1, "high"), type=float, default=0.0,
             help="fraction of each gated block's horizontal features dropped in training, against over-fitting on "
             "small data (default: %(default)s)"),
    _setting("prior_scan_orders", "prior", (PRIOR,), (PRIOR, "scan_orders"), integers(1, 8), type=int, default=1,
             help="scan orders the prior learns, the first N of the square's 8 symmetries (4 rotations, then "
             "their transposes): it is trained on the code grids turned by each, its order a condition, so that "
             "anomaly maps (predict.py --anomaly) judge each code from several sides; sampling and the codec use "
             "order 0 (default: %(default)s)"),
    _setting("prior_batch_size", "prior", (PRIOR,), accepts=integers(), type=int, default=8,
             help="code grids per step of the prior: small, because the prior learns from more steps and on a CPU "
             "an epoch costs hardly more in smaller batches; raise it on a GPU (default: %(default)s)"),
    _setting("prior_learning_rate", "prior", (PRIOR,), accepts=numbers(), type=float, default=6e-3,
             help="Adam learning rate of the prior (default: %(default)s)"),
    _setting("unconditional", "prior", (PRIOR,), action="store_true",
             help="ignore class labels (ADNI AD/NC); by default the prior is conditional on them"),

    _setting("stage", "training", default="all", choices=["all", "vqvae", "prior"],
             help="what to train; prior reuses the VQ-VAE already at --out (default: %(default)s)"),
    _setting("epochs", "training", accepts=integers(), type=int, default=12,
             help="epochs of the VQ-VAE (default: %(default)s)"),
    _setting("batch_size", "training", BOTH, accepts=integers(), type=int, default=16,
             help="images per step (default: %(default)s)"),
    _setting("learning_rate", "training", (VQVAE,), accepts=numbers(), type=float, default=2e-3,
             help="Adam learning rate (default: %(default)s)"),
    _setting("max_minutes", "training", accepts=numbers(), type=float,
             help="stop each stage's training cleanly after this many minutes"),
    _setting("seed", "training", BOTH, (VQVAE, "seed"), SEEDS, type=int, default=0,
             help=f"seed for data splits, shuffling and weights, 0 to {INT32_MAX:,} (default: %(default)s)"),
    _setting("resume", "training", action="store_true",
             help="continue the interrupted run with this --out from its last completed epoch"),
    _setting("deterministic", "training", action="store_true",
             help="deterministic TensorFlow ops: the same seed and data give the same metrics (slower)"),

    _setting("strategy", "hardware", default="auto", choices=["auto", "none", "mirrored", "multiworker"],
             help="auto: MirroredStrategy over all GPUs when there are several; multiworker: "
             "MultiWorkerMirroredStrategy configured by TF_CONFIG. --batch-size is the global batch, split over "
             "the replicas (default: %(default)s)"),
    _setting("mixed_precision", "hardware", nargs="?", const="on", default="auto", choices=["auto", "on", "off"],
             help="mixed_float16 compute (the quantizer stays float32); auto: on for GPUs of compute capability "
             "7.0 or newer, off on CPU (default: %(default)s)"),
    _setting("jit", "hardware", nargs="?", const="on", default="auto", choices=["auto", "on", "off"],
             help="compile the training steps with XLA; auto: on with a GPU, off on CPU, where it is slower "
             "(default: %(default)s)"),

    _setting("out", "outputs", default="saved_models/vqvae", help="SavedModel folder (default: %(default)s)"),
    _setting("logdir", "outputs", default="logs",
             help="TensorBoard folder; vqvae/, prior/ (and top_prior/ with two levels) inside (default: %(default)s)"),
)


def add_arguments(parser):
    """Add every setting to an argparse parser, in argument groups."""
    groups = {}
    for setting in SETTINGS:
        if setting.group not in groups:
            groups[setting.group] = parser.add_argument_group(setting.group)
        groups[setting.group].add_argument(setting.flag, dest=setting.name, **setting.options)


def defaults():
    """Every setting's default, as an argparse Namespace: what `python train.py` runs with."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args([])


def checkpoint_settings(args, stage):
    """The values of the settings that define `stage`'s checkpoints: what --resume compares."""
    return {setting.name: getattr(args, setting.name) for setting in SETTINGS if stage in setting.defines}


def model_arguments(args, model):
    """Keyword arguments for `model`'s constructor (VQVAE or PRIOR) from the settings that go to it."""
    return {setting.argument[1]: getattr(args, setting.name) for setting in SETTINGS
            if setting.argument and setting.argument[0] == model}


def check_arguments(parser, args):
    """Refuse, with parser.error, values that no run can use, each flag against its Range and then against
    the others, and models that would not fit in memory; make --data absolute."""
    for setting in SETTINGS:
        value = getattr(args, setting.name)
        if setting.accepts and value is not None and value not in setting.accepts:
            parser.error(f"{setting.flag} {value}: expected {setting.accepts.describe()}")
    factor = 2 ** args.downsamplings
    if args.image_size % factor:
        parser.error(f"--image-size {args.image_size}: expected a multiple of 2^downsamplings = {factor}, at least 16")
    grid = args.image_size // factor
    if grid % 2 ** args.top_downsamplings:
        parser.error(f"--top-downsamplings {args.top_downsamplings}: expected 2^top-downsamplings to divide the code "
                     f"grid's side, {grid} (--image-size {args.image_size} / 2^downsamplings)")
    if args.prior_attention >= args.prior_layers:
        parser.error(f"--prior-attention {args.prior_attention}: expected fewer than --prior-layers "
                     f"{args.prior_layers}, each before a different gated block after the first")
    if args.prior_attention_pool > grid:
        parser.error(f"--prior-attention-pool {args.prior_attention_pool}: expected at most the code grid's side, "
                     f"{grid} (--image-size {args.image_size} / 2^downsamplings)")
    if args.dataset not in ("auto", "demo") and args.data is None:
        parser.error(f"--dataset {args.dataset} needs --data PATH")
    try:
        volumes.parse_slices(args.slices)
    except ValueError as error:
        parser.error(f"--slices {error}")
    _check_memory(parser, args)
    if args.data is not None:  # --resume compares where the data is, however it was spelled
        args.data = os.path.abspath(args.data)


# ----------------------------------------------------------------------------------------------------------
# Memory


FLOAT_BYTES = 4
BACKWARD = 2  # training keeps each activation for the backward pass, which makes a gradient of each


def training_memory(args):
    """About how many bytes the largest tensors of training take, from the flags alone: a list of (bytes,
    what they are, the flags they grow with), the stages that --stage trains only."""
    grid = args.image_size // 2 ** args.downsamplings
    codes, prior_codes = args.batch_size * grid ** 2, args.prior_batch_size * grid ** 2
    levels = sum((args.image_size // 2 ** level) ** 2 * max(16, args.channels // 2 ** (args.downsamplings - level))
                 for level in range(1, args.downsamplings + 1))
    per_image = 2 * levels + grid ** 2 * args.channels * (2 + 2 * args.res_blocks)  # encoder and decoder
    tokens = grid * -(-grid // args.prior_attention_pool)
    vqvae = [
        (args.batch_size * per_image * FLOAT_BYTES * BACKWARD, "the VQ-VAE's activations",
         ("image_size", "batch_size", "channels", "res_blocks")),
        # The distance of every code vector to every code, their one-hot codes and the distances' gradient.
        (codes * args.num_codes * FLOAT_BYTES * 3, "the quantizer's distances to every code",
         ("num_codes", "batch_size", "image_size")),
        (args.num_codes * args.code_dim * FLOAT_BYTES * 4, "the codebook", ("num_codes", "code_dim"))]
    prior = [
        # The logits, their softmax and the softmax's gradient: K floats at every position of every grid.
        (prior_codes * args.num_codes * FLOAT_BYTES * 3, "the prior's logits over every code",
         ("num_codes", "prior_batch_size", "image_size")),
        # Each gated block holds a vertical and a horizontal stack, each with gates of twice the channels.
        (prior_codes * args.prior_channels * args.prior_layers * 8 * FLOAT_BYTES * BACKWARD,
         "the prior's activations", ("prior_batch_size", "prior_channels", "prior_layers", "image_size")),
        (args.prior_attention * args.prior_batch_size * 2 * tokens ** 2 * FLOAT_BYTES * BACKWARD,
         "the prior's attention weights",
         ("prior_attention_pool", "prior_batch_size", "prior_attention", "image_size"))]
    return (vqvae if args.stage != "prior" else []) + (prior if args.stage != "vqvae" else [])


def physical_memory():
    """This machine's memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(parser, args):
    """Refuse settings whose training would need more memory than this machine has, naming the flags of the
    largest part of the estimate."""
    memory, parts = physical_memory(), training_memory(args)
    total = sum(size for size, _, _ in parts)
    if memory is None or total <= memory:
        return
    size, what, flags = max(parts)
    named = " ".join(f"--{flag.replace('_', '-')} {getattr(args, flag)}" for flag in flags)
    parser.error(f"{named}: training would need about {total / 1e9:,.1f} GB of memory, {size / 1e9:,.1f} GB of it "
                 f"for {what}; this machine has {memory / 1e9:,.1f} GB")
