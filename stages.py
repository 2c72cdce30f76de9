"""How one training stage runs: where a run writes (`Run`), the stage's batches, and `fit_stage`, which fits a
model with checkpoints every epoch, TensorBoard, stops on NaN, signals and the time limit, and the best epoch
restored at the end. train.py runs its stages through it.
"""

import collections
import contextlib
import dataclasses
import math
import shlex
import sys
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

import dataset
from callbacks import StopOnSignal, TrainingClock
from checkpoints import CheckpointState, EpochCheckpoints, ResumeError
from utils import (RunLock, check_output_folder, check_writable, describe, enclosing_output, fail, is_inside, is_ours,
                   marker_of)


@dataclasses.dataclass(frozen=True)
class Run:
    """Where a run writes and how it trains, shared by both stages.

    `is_chief` is whether this process writes the outputs: false only on the other workers of a multi-worker
    run, which write their checkpoints and logs to a scratch folder.
    """

    out: Path
    logdir: Path
    scratch: Path
    is_chief: bool
    strategy: tf.distribute.Strategy
    jit: bool
    max_minutes: float = None
    data: Path = None  # --data; None for the embedded demo

    @classmethod
    def of(cls, args, strategy, jit):
        """The run that the command line `args` asks for, on `strategy`."""
        is_chief = strategy.extended.should_checkpoint
        scratch = Path(tempfile.mkdtemp(prefix="brain_vqvae_worker_")) if not is_chief else None
        return cls(Path(args.out), scratch / "logs" if scratch else Path(args.logdir), scratch, is_chief, strategy,
                   jit, args.max_minutes, args.data and Path(args.data))

    @property
    def checkpoints(self):
        """The folder of both stages' checkpoints, beside the export: OUT_checkpoints."""
        return Path(f"{self.out}_checkpoints")

    def log_folder(self, stage):
        """Where `stage` writes its TensorBoard logs."""
        return self.logdir / stage

    def open_checkpoints(self, stage, stage_settings, resume, required, data):
        """The CheckpointState of `stage` to continue from, or a fresh one; exits with one line if --resume
        cannot continue."""
        write_folder = self.checkpoints / stage if self.is_chief else self.scratch / "checkpoints" / stage
        try:
            return CheckpointState.open(self.checkpoints / stage, stage_settings, resume, required, write_folder,
                                        data)
        except ResumeError as error:
            fail(f"--resume: {error}")

    @contextlib.contextmanager
    def claim_outputs(self):
        """Check, before any work, that this run may write its outputs, then hold the lock that keeps a
        second run off them until this one ends (the chief alone; the other workers write nothing)."""
        if not self.is_chief:
            yield
            return
        self.check_outputs()
        with RunLock(self.checkpoints, "checkpoints", owner=self.out.name, flag=f"--out {self.out}"):
            yield

    def check_outputs(self):
        """Exit with one line unless --out is new, empty or an export of train.py, OUT_checkpoints new, empty or
        this --out's checkpoints, and --logdir writable; none of them inside another of the tools' folders or
        --data, where the next training run would read them as images."""
        check_output_folder("--out", self.out, "the SavedModel", "export")
        if self.out.name.endswith("_checkpoints"):
            fail(f"--out {self.out}: expected a name that does not end in _checkpoints, the name train.py gives "
                 f"the checkpoints of another --out")
        check_output_folder("--out", self.checkpoints, "the checkpoints (OUT_checkpoints)", "checkpoints")
        check_writable("--logdir", self.logdir)  # also refuses a file there
        if is_inside(self.logdir, self.out):
            fail(f"--logdir {self.logdir}: expected a folder outside --out {self.out}, which is replaced on export")
        enclosing = self.logdir if is_ours(self.logdir) else enclosing_output(self.logdir)
        if enclosing is not None:
            fail(f"--logdir {self.logdir}: inside {enclosing}, {describe(marker_of(enclosing))}; expected a "
                 f"folder outside the tools' outputs")
        if self.data is None:
            return
        for flag, path in (("--out", self.out), ("--out", self.checkpoints), ("--logdir", self.logdir)):
            if is_inside(path, self.data):
                fail(f"{flag} {path}: inside --data {self.data}, where the next training run would read what "
                     f"this one writes as data; expected a folder outside it")
        if is_inside(self.data, self.out):
            fail(f"--data {self.data}: inside --out {self.out}, which is replaced on export; move the data out")

    def on_chief_alone(self):
        """This run with the chief's local devices only, for the prior (see main)."""
        if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return self
        return dataclasses.replace(self, strategy=tf.distribute.get_strategy())


@dataclasses.dataclass(frozen=True)
class Stage:
    """One of the two training stages, as `fit_stage` needs it."""

    name: str  # "vqvae" or "prior": also its checkpoint and log folder
    epochs: int
    monitor: str  # the validation log whose lowest value picks the best epoch
    learning_rate_flag: str  # the flag to lower when the loss becomes NaN
    learning_rate: float


Batches = collections.namedtuple("Batches", ["train", "validate", "steps_per_epoch"])
Batches.__doc__ = """A stage's batches: the training stream of its remaining epochs, the validation batches, and the
training steps per epoch."""


def stage_batches(train, validate, batch_size, seed, first_epoch, epochs, augment=None):
    """Batches of a stage: the shuffled training stream from `first_epoch` on (each element changed by
    `augment`, see `dataset.epochs_of_batches`), the validation batches, and the full batches per epoch
    (`check_batch_sizes` made sure there is one)."""
    return Batches(dataset.epochs_of_batches(train, batch_size, seed, first_epoch, epochs, augment),
                   dataset.batched(validate, batch_size), int(train.cardinality()) // batch_size)


def fit_stage(model, stage, state, batches, run, callbacks=()):
    """model.fit of one stage from the state's epoch on, with checkpoints every epoch, TensorBoard, and stops
    on NaN, on signals and at the time limit; then restores the best epoch's weights. Returns the clock.

    Raises KeyboardInterrupt after a Ctrl-C (the last completed epoch is saved).
    """
    try:
        state.restore_latest(model)
    except ResumeError as error:
        fail(f"--resume: {error}")
    clock = TrainingClock(run.max_minutes, state.train_seconds, state.train_steps)
    stop = StopOnSignal()
    callbacks = [EpochCheckpoints(state, clock, stage.monitor),
                 keras.callbacks.TensorBoard(str(run.log_folder(stage.name)), write_graph=False), *callbacks,
                 keras.callbacks.TerminateOnNaN(), clock, stop]
    if state.epochs_done < stage.epochs:
        # A progress bar on a terminal; one line per epoch in a cluster job's log file.
        history = model.fit(batches.train, validation_data=batches.validate, epochs=stage.epochs,
                            initial_epoch=state.epochs_done, steps_per_epoch=batches.steps_per_epoch,
                            callbacks=callbacks, shuffle=False, verbose=1 if sys.stdout.isatty() else 2)
        losses = history.history["loss"]
        if not all(math.isfinite(loss) for loss in losses):
            fail(f"{stage.learning_rate_flag} {stage.learning_rate:g}: the {stage.name} training loss became NaN "
                 f"in epoch {len(losses)}; try a lower learning rate")
    if stop.requested:
        raise KeyboardInterrupt
    if clock.stopped:
        print(f"Stopped the {stage.name} training after --max-minutes {run.max_minutes} in epoch "
              f"{state.epochs_done} of {stage.epochs}; to train the rest, run: {resume_command()}")
    state.restore_best(model)
    return clock


def resume_command():
    """This run's command line with --resume, for the messages that say how to continue."""
    argv = [arg for arg in sys.argv[1:] if arg != "--resume"]
    return shlex.join(["python", "train.py", *argv, "--resume"])


def cosine_adam(learning_rate, epochs, steps_per_epoch):
    """Adam whose learning rate follows a cosine decay to a tenth of its start over the planned epochs.

    In the short runs this tool is used for, annealing gives a clearly better final model than a constant rate.
    """
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps_per_epoch, alpha=0.1)
    return keras.optimizers.Adam(schedule)
