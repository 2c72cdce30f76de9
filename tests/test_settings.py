"""Every flag of train.py is declared once in settings.py, reaches the models, and is checked by --resume."""

import argparse

import pytest

import settings
from checkpoints import CheckpointState, ResumeError
from modules import VQVAETrainer
from prior import GatedPixelCNN
from train import build_parser
from utils import write_json

# Settings of the data, model and prior groups that may change between sessions of one run, and why.
MAY_CHANGE_ON_RESUME = {
    "skip_bad": "skipping unreadable files does not change a model; a changed file list is the data's check",
    "prior_epochs": "a resumed run may train for more epochs, like --epochs",
}


def changed(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    return f"{value}-changed"


def test_every_flag_of_train_is_a_declared_setting():
    declared = {setting.name for setting in settings.SETTINGS}
    flags = {action.dest for action in build_parser()._actions if not isinstance(action, argparse._HelpAction)}
    assert flags == declared


def test_every_model_and_data_setting_is_checked_by_resume():
    for setting in settings.SETTINGS:
        if setting.group in ("data", "model", "prior") and setting.name not in MAY_CHANGE_ON_RESUME:
            assert setting.defines, f"{setting.flag} is not checked by --resume"
        if setting.argument:
            model = setting.argument[0]
            assert model in setting.defines, f"{setting.flag} builds the {model} but is not checked for it"


@pytest.mark.parametrize("stage", settings.BOTH)
def test_resume_refuses_a_change_of_each_setting_that_defines_the_stage(tmp_path, stage):
    args = settings.defaults()
    saved = settings.checkpoint_settings(args, stage)
    assert "seed" in saved and "batch_size" in saved and len(saved) >= 8
    folder = tmp_path / stage
    folder.mkdir()
    write_json(folder / "state.json", {"settings": saved, "epochs_done": 1})
    for name, value in saved.items():
        args = settings.defaults()
        setattr(args, name, changed(value))
        with pytest.raises(ResumeError, match=f"used --{name.replace('_', '-')} "):
            CheckpointState.open(folder, settings.checkpoint_settings(args, stage), resume=True, required=True)
    same = CheckpointState.open(folder, settings.checkpoint_settings(settings.defaults(), stage), resume=True,
                                required=True)
    assert same.epochs_done == 1


def test_models_are_built_from_the_settings_they_declare():
    args = build_parser().parse_args(["--num-codes", "12", "--code-dim", "6", "--channels", "24", "--downsamplings",
                                      "1", "--res-blocks", "1", "--beta", "0.5", "--ssim-weight", "0.2",
                                      "--ema-decay", "0.9", "--seed", "7", "--prior-channels", "8",
                                      "--prior-layers", "3"])
    models = {settings.VQVAE: VQVAETrainer(**settings.model_arguments(args, settings.VQVAE)).get_config(),
              settings.PRIOR: GatedPixelCNN(grid_size=8, **settings.model_arguments(args, settings.PRIOR)).get_config()}
    passed = [setting for setting in settings.SETTINGS if setting.argument]
    assert {setting.argument[0] for setting in passed} == set(models)
    for setting in passed:
        model, parameter = setting.argument
        assert models[model][parameter] == getattr(args, setting.name), setting.flag
