"""Every flag of train.py is declared once in settings.py, reaches the models, and is checked by --resume."""

import pytest

import settings
from checkpoints import CheckpointState, ResumeError
from modules import VQVAETrainer
from prior import GatedPixelCNN
from train import build_parser, parse_args
from utils import write_json

# Settings of the data, model and prior groups that may change between sessions of one run, and why.
MAY_CHANGE_ON_RESUME = {
    "skip_bad": "skipping unreadable files does not change a model; a changed file list is the data's check",
    "prior_epochs": "a resumed run may train for more epochs, like --epochs",
    "top_prior_epochs": "a resumed run may train for more epochs, like --epochs",
}


def changed(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    return f"{value}-changed"


@pytest.mark.parametrize("argv, message", [
    (["--downsamplings", "0"], "--downsamplings 0: expected a positive integer up to 10"),
    (["--image-size", "30"], "--image-size 30: expected a multiple of 2^downsamplings = 4, at least 16"),
    (["--image-size", "8", "--downsamplings", "1"], "--image-size 8: expected an integer from 16 to 1,024"),
    (["--num-codes", "1"], "--num-codes 1: expected an integer from 2 to 2,147,483,647"),
    (["--epochs", "0"], "--epochs 0: expected a positive integer"),
    (["--prior-layers", "-1"], "--prior-layers -1: expected a positive integer"),
    (["--dataset", "folder"], "--dataset folder needs --data PATH"),
    (["--slices", "central:2"], "--slices 'central:2': expected all"),
    (["--max-minutes", "0"], "--max-minutes 0.0: expected a finite positive number"),
    (["--ema-decay", "1"], "--ema-decay 1.0: expected 0 (off) or a value in (0, 1)"),
    (["--top-downsamplings", "6"], "--top-downsamplings 6: expected 2^top-downsamplings to divide the code grid's "
                                   "side, 32"),
    (["--top-downsamplings", "9"], "--top-downsamplings 9: expected 0 or a positive integer up to 8"),
])
def test_values_no_run_can_use_are_refused_with_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_data_is_recorded_as_an_absolute_path_and_the_defaults_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_args(["--data", "scans"]).data == str(tmp_path / "scans")
    assert vars(parse_args([])) == vars(settings.defaults())


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
