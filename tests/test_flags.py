"""Every numeric flag of train.py and predict.py is checked at parse time against its range: zero, negative,
NaN, infinite and huge values get one line naming the flag and what it expects, before any work."""

import threading

import keras
import pytest
import tensorflow as tf

import dataset
import predict
import settings
import train

NUMERIC = [setting for setting in settings.SETTINGS if setting.options.get("type") in (int, float)]


def refusal(parse, argv, capsys):
    """The one error line with which `parse(argv)` exits with status 2."""
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(lines)
    return lines[-1]


def hostile_values(setting):
    """Values a careless or hostile user might pass: negative, NaN, infinite, beyond int32, zero."""
    if setting.options["type"] is int:
        return ["-1", str(2**31), "100000000000000000000", "0"]
    return ["-1", "nan", "inf", "-inf", "1e400", "0"]


def test_every_numeric_flag_declares_its_range():
    assert len(NUMERIC) >= 20
    for setting in NUMERIC:
        assert isinstance(setting.accepts, settings.Range), setting.flag
        assert setting.accepts.integer == (setting.options["type"] is int), setting.flag
        default = setting.options.get("default")
        assert default is None or default in setting.accepts, setting.flag


@pytest.mark.parametrize("setting", NUMERIC, ids=lambda setting: setting.flag)
def test_hostile_values_of_each_train_flag_are_refused_naming_the_flag_or_accepted(setting, capsys):
    for text in hostile_values(setting):
        value = setting.options["type"](float(text) if setting.options["type"] is float else int(text))
        if value in setting.accepts:  # 0 where it means none or off: a run can use it
            assert getattr(train.parse_args([f"{setting.flag}={text}"]), setting.name) == value
            continue
        line = refusal(train.parse_args, [f"{setting.flag}={text}"], capsys)
        assert f"error: {setting.flag} {value}: expected " in line, line


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "--seed -1: expected 0 or a positive integer up to 2,147,483,647"),
    (["--seed", "100000000000000000000"], "--seed 100000000000000000000: expected 0 or a positive integer up to"),
    (["--image-size", "65536"], "--image-size 65536: expected an integer from 16 to 1,024 and a multiple of 2^"),
    (["--validation-fraction", "-1"], "--validation-fraction -1.0: expected a fraction in (0, 1)"),
    (["--validation-fraction", "nan"], "--validation-fraction nan: expected a fraction in (0, 1)"),
    (["--validation-fraction", "5"], "--validation-fraction 5.0: expected a fraction in (0, 1)"),
    (["--ssim-weight", "nan"], "--ssim-weight nan: expected a weight >= 0, finite"),
    (["--learning-rate", "-1"], "--learning-rate -1.0: expected a finite positive number"),
    (["--learning-rate", "0"], "--learning-rate 0.0: expected a finite positive number"),
    (["--prior-learning-rate", "inf"], "--prior-learning-rate inf: expected a finite positive number"),
    (["--beta", "-5"], "--beta -5.0: expected a finite positive number"),
    (["--max-minutes", "nan"], "--max-minutes nan: expected a finite positive number"),
    (["--res-blocks", "-3"], "--res-blocks -3: expected 0 or a positive integer up to 1,000"),
    (["--prior-attention", "-2"], "--prior-attention -2: expected 0 or a positive integer up to 1,000"),
    (["--prior-attention", "3", "--prior-layers", "3"], "--prior-attention 3: expected fewer than --prior-layers 3"),
    (["--prior-attention-pool", "64"], "--prior-attention-pool 64: expected at most the code grid's side, 32"),
    (["--downsamplings", "1000000000"], "--downsamplings 1000000000: expected a positive integer up to 10"),
])
def test_each_case_of_the_hostile_pass_names_its_flag_and_range(argv, message, capsys):
    assert message in refusal(train.parse_args, argv, capsys)


def test_a_codebook_that_cannot_fit_in_memory_is_refused_with_the_estimate(capsys):
    line = refusal(train.parse_args, ["--num-codes", "1000000000"], capsys)
    assert "error: --num-codes 1000000000 --batch-size 16 --image-size 128: training would need about" in line
    assert "GB of it for the quantizer's distances to every code; this machine has" in line
    # The estimate of one part, counted independently: 16 images of a 32x32 grid, 10^9 float32 distances each,
    # kept with their one-hot codes and gradient.
    assert f"{16 * 32 * 32 * 10**9 * 4 * 3 / 1e9:,.1f} GB of it" in line


def test_the_memory_estimate_names_the_largest_part_and_the_defaults_fit(monkeypatch, capsys):
    assert train.parse_args([]).num_codes == 256  # the defaults fit on this machine
    parts = settings.training_memory(settings.defaults())
    largest = max(parts)
    monkeypatch.setattr(settings, "physical_memory", lambda: sum(size for size, _, _ in parts) - 1)
    line = refusal(train.parse_args, [], capsys)
    assert f"for {largest[1]};" in line and f"error: --{largest[2][0].replace('_', '-')} " in line
    # --stage vqvae trains no prior: the prior's parts are not counted.
    assert train.parse_args(["--stage", "vqvae"]).stage == "vqvae"


@pytest.mark.parametrize("argv, message", [
    (["--top-k", "100000000000"], "--top-k 100000000000: expected 0 (keep all codes) or a positive number up to "
                                  "2,147,483,647"),
    (["--seed", "10000000000"], "--seed 10000000000: expected 0 or a positive integer up to 2,147,483,647"),
    (["--seed", "-1"], "--seed -1: expected 0 or a positive integer up to 2,147,483,647"),
    (["--temperature", "1e39"], "--temperature 1e+39: expected a finite positive number"),
    (["--batch-size", "3000000000"], "--batch-size 3000000000: expected a positive integer up to 2,147,483,647"),
])
def test_predict_refuses_values_beyond_the_exports_int32_and_float32(argv, message, capsys):
    assert message in refusal(predict.parse_args, argv, capsys)


def test_a_billion_epochs_are_planned_at_once_and_shuffled_as_a_short_run():
    numbers = tf.data.Dataset.range(10)
    built = {}
    thread = threading.Thread(target=lambda: built.update(
        stream=dataset.epochs_of_batches(numbers, 3, seed=5, first_epoch=0, last_epoch=10**9)), daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert "stream" in built, "epochs_of_batches built every epoch before the first"
    stream = built["stream"]
    assert int(stream.cardinality()) == 3 * 10**9  # fit's steps_per_epoch and tf.distribute can count it
    short = [batch.numpy().tolist() for batch in dataset.epochs_of_batches(numbers, 3, 5, 0, 2)]
    assert [batch.numpy().tolist() for batch in stream.take(6)] == short


@pytest.mark.parametrize("global_seed", [0, 7])
def test_each_epochs_order_depends_on_the_seed_and_the_epoch_alone(global_seed):
    keras.utils.set_random_seed(global_seed)  # as train.py does with --seed, 0 included
    numbers = tf.data.Dataset.range(12)
    stream = [batch.numpy().tolist() for batch in dataset.epochs_of_batches(numbers, 4, 3, 0, 3)]
    keras.utils.set_random_seed(global_seed + 1)
    assert [batch.numpy().tolist() for batch in dataset.epochs_of_batches(numbers, 4, 3, 2, 3)] == stream[6:]
    assert stream[:3] != [batch.numpy().tolist() for batch in dataset.epochs_of_batches(numbers, 4, 4, 0, 1)]
