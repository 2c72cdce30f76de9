"""Every setting of a training run, declared once: its flag, default and help, which stage's checkpoints it
defines, and which model's constructor it goes to.

train.py builds its command line from `SETTINGS` and refuses values no run can use (`check_arguments`);
`--resume` refuses to continue a stage whose defining settings changed (`checkpoint_settings`); the models are
built from `model_arguments`; config.json records them all. A new flag is one entry here.
"""

import argparse
import dataclasses
import os

import volumes

VQVAE, PRIOR = "vqvae", "prior"
BOTH = (VQVAE, PRIOR)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One command-line flag of train.py.

    `defines`: the stages whose checkpoints depend on its value, so that --resume refuses a change (empty
    for settings that may change between sessions of one run, such as --epochs or the hardware).
    `argument`: (model, parameter) where the value is passed to that model's constructor, if it is.
    `options`: argparse's add_argument keywords (default, type, choices, help, ...).
    """

    name: str
    group: str
    defines: tuple = ()
    argument: tuple = None
    options: dict = dataclasses.field(default_factory=dict)

    @property
    def flag(self):
        """The command-line spelling, e.g. --num-codes."""
        return "--" + self.name.replace("_", "-")


def _setting(name, group, defines=(), argument=None, **options):
    return Setting(name, group, defines, argument, options)


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
    _setting("image_size", "data", BOTH, type=int, default=128,
             help="side S of the square images (default: %(default)s)"),
    _setting("validation_fraction", "data", BOTH, type=float, default=0.1,
             help="share of train patients held out for validation where the data has no such split"),
    _setting("skip_bad", "data", action="store_true", help="skip unreadable image files instead of stopping"),

    _setting("num_codes", "model", (VQVAE,), (VQVAE, "num_codes"), type=int, default=256,
             help="codebook size K (default: %(default)s)"),
    _setting("code_dim", "model", (VQVAE,), (VQVAE, "code_dim"), type=int, default=32,
             help="code vector size D (default: %(default)s)"),
    _setting("channels", "model", (VQVAE,), (VQVAE, "channels"), type=int, default=64,
             help="channels at the code grid (default: %(default)s)"),
    _setting("downsamplings", "model", (VQVAE,), (VQVAE, "downsamplings"), type=int, default=2,
             help="stride-2 steps; the code grid is S/2^d a side (default: %(default)s)"),
    _setting("res_blocks", "model", (VQVAE,), (VQVAE, "res_blocks"), type=int, default=2,
             help="residual blocks in encoder and decoder"),
    _setting("beta", "model", (VQVAE,), (VQVAE, "beta"), type=float, default=0.25,
             help="commitment loss weight (default: %(default)s)"),
    _setting("ssim_weight", "model", (VQVAE,), (VQVAE, "ssim_weight"), type=float, default=0.05,
             help="weight of 1 - SSIM added to the squared error (default: %(default)s)"),
    _setting("ema_decay", "model", (VQVAE,), (VQVAE, "ema_decay"), type=float, default=0.99,
             help="EMA decay of the codebook; 0 learns it by gradient instead (default: %(default)s)"),
    _setting("train_noise", "model", (VQVAE,), (VQVAE, "train_noise"), type=float, default=0.0,
             metavar="SIGMA_MAX", help="train the VQ-VAE to denoise: its encoder sees each training slice with "
             "Rician noise of a sigma drawn per slice up to SIGMA_MAX (a fraction of the intensity range; a "
             "quarter of the slices stay clean) and the loss compares its output with the clean slice; 0 trains "
             "on clean slices only (default: %(default)s)"),

    _setting("prior_epochs", "prior", type=int, default=8, help="epochs of the prior (default: %(default)s)"),
    _setting("prior_channels", "prior", (PRIOR,), (PRIOR, "channels"), type=int, default=32,
             help="prior channels (default: %(default)s)"),
    _setting("prior_layers", "prior", (PRIOR,), (PRIOR, "num_layers"), type=int, default=10,
             help="gated blocks (default: %(default)s)"),
    _setting("prior_attention", "prior", (PRIOR,), (PRIOR, "attention_layers"), type=int, default=1,
             help="self-attention layers in the prior's vertical stack, for global structure (default: %(default)s)"),
    _setting("prior_attention_pool", "prior", (PRIOR,), (PRIOR, "attention_pool"), type=int, default=4,
             help="columns of the code grid averaged into one attention token; 1 attends to every code, at "
             "pool^2 times the cost of the attention (default: %(default)s)"),
    _setting("prior_dropout", "prior", (PRIOR,), (PRIOR, "dropout"), type=float, default=0.0,
             help="fraction of each gated block's horizontal features dropped in training, against over-fitting on "
             "small data (default: %(default)s)"),
    _setting("prior_batch_size", "prior", (PRIOR,), type=int, default=8,
             help="code grids per step of the prior: small, because the prior learns from more steps and on a CPU "
             "an epoch costs hardly more in smaller batches; raise it on a GPU (default: %(default)s)"),
    _setting("prior_learning_rate", "prior", (PRIOR,), type=float, default=6e-3,
             help="Adam learning rate of the prior (default: %(default)s)"),
    _setting("unconditional", "prior", (PRIOR,), action="store_true",
             help="ignore class labels (ADNI AD/NC); by default the prior is conditional on them"),

    _setting("stage", "training", default="all", choices=["all", "vqvae", "prior"],
             help="what to train; prior reuses the VQ-VAE already at --out (default: %(default)s)"),
    _setting("epochs", "training", type=int, default=12, help="epochs of the VQ-VAE (default: %(default)s)"),
    _setting("batch_size", "training", BOTH, type=int, default=16, help="images per step (default: %(default)s)"),
    _setting("learning_rate", "training", (VQVAE,), type=float, default=2e-3,
             help="Adam learning rate (default: %(default)s)"),
    _setting("max_minutes", "training", type=float, help="stop each stage's training cleanly after this many minutes"),
    _setting("seed", "training", BOTH, (VQVAE, "seed"), type=int, default=0,
             help="seed for data splits, shuffling and weights"),
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
             help="TensorBoard folder; vqvae/ and prior/ go inside (default: %(default)s)"),
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
    """Refuse, with parser.error, values that no run can use; make --data absolute."""
    factor = 2 ** args.downsamplings
    if args.downsamplings < 1:
        parser.error(f"--downsamplings {args.downsamplings}: expected 1 or more")
    if args.image_size < 16 or args.image_size % factor:
        parser.error(f"--image-size {args.image_size}: expected a multiple of 2^downsamplings = {factor}, at least 16")
    for flag in ("num_codes", "code_dim", "channels", "batch_size", "epochs", "prior_epochs", "prior_channels",
                 "prior_layers", "prior_attention_pool", "prior_batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected a positive integer")
    if args.num_codes < 2:
        parser.error(f"--num-codes {args.num_codes}: expected at least 2")
    if args.dataset not in ("auto", "demo") and args.data is None:
        parser.error(f"--dataset {args.dataset} needs --data PATH")
    try:
        volumes.parse_slices(args.slices)
    except ValueError as error:
        parser.error(f"--slices {error}")
    if args.max_minutes is not None and args.max_minutes <= 0:
        parser.error(f"--max-minutes {args.max_minutes}: expected a positive number")
    if args.ssim_weight < 0:
        parser.error(f"--ssim-weight {args.ssim_weight}: expected a weight >= 0")
    if not 0 <= args.prior_dropout < 1:
        parser.error(f"--prior-dropout {args.prior_dropout}: expected a fraction in [0, 1)")
    if not 0 <= args.ema_decay < 1:
        parser.error(f"--ema-decay {args.ema_decay}: expected 0 (off) or a value in (0, 1)")
    if args.data is not None:  # --resume compares where the data is, however it was spelled
        args.data = os.path.abspath(args.data)
