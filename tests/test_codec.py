"""The codec: exact round trips, file sizes at the prior's ideal rate, and one clear line for every file that
does not decode (nothing written); of one-level exports and hierarchical ones (both levels in one file)."""

import struct
import zlib

import constriction
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import dataset
import predict
from codec import HEADER, CodecError, PriorCodec, model_fingerprint, prior_bits, probabilities
from conftest import call_main, png_claiming
from export import load_export


def coded_run(trained):
    """(codec, export, test images [N, 32, 32, 1], their files, the folder of test slices) of a tiny run."""
    out, _, data, _ = trained
    model, metadata = load_export(out)
    codec = PriorCodec(model, metadata, model_fingerprint(out))
    files = [str(path) for path in sorted((data / "test").rglob("*.jpeg"))][::4]
    images = np.stack([dataset.decode_image(path, metadata["image_size"]).numpy() for path in files])
    return codec, model, images, codec.compress(images), data / "test"


@pytest.fixture(scope="module")
def coded(trained):
    """`coded_run` of the tiny one-level run."""
    return coded_run(trained)


@pytest.fixture(scope="module")
def coded_hierarchical(trained_hierarchical):
    """`coded_run` of the tiny hierarchical run (a 4x4 top grid over the 8x8 grid)."""
    return coded_run(trained_hierarchical)


@pytest.fixture(params=["one level", "hierarchical"])
def either(request):
    """(`coded`, `trained`) of the one-level run, then of the hierarchical one."""
    suffix = "_hierarchical" if request.param == "hierarchical" else ""
    return request.getfixturevalue(f"coded{suffix}"), request.getfixturevalue(f"trained{suffix}")


def decoded_again(model, images):
    """decode(encode(x)), and of a hierarchical export decode(encode(x), encode_top(x)), from the endpoints."""
    images = tf.constant(images)
    top = [model.encode_top(images)] if hasattr(model, "encode_top") else []
    return model.decode(model.encode(images), *top).numpy()


def test_round_trip_is_exact_and_files_cost_what_the_prior_says(coded):
    codec, model, images, files, _ = coded
    expected = model.encode(tf.constant(images)).numpy()
    ideal, labels = prior_bits(model, codec.metadata, images)
    for data, codes, bits, label in zip(files, expected, ideal, labels):
        (decoded,), decoded_label = codec.decompress(data)  # one level
        np.testing.assert_array_equal(decoded, codes)
        assert decoded_label == label
        payload_bits = 8 * (len(data) - HEADER.size)
        # A range coder spends the ideal bits plus at most its final two 32-bit words.
        assert bits - 8 <= payload_bits <= 1.03 * bits + 64, (payload_bits, bits)


def test_the_header_holds_what_the_format_says(coded, trained):
    """magic, version, the model's fingerprint, the image side, the label and the CRC-32 of the codes, read
    with the layout the codec's docstring gives."""
    codec, model, images, files, _ = coded
    codes = model.encode(tf.constant(images)).numpy()
    labels = prior_bits(model, codec.metadata, images)[1]
    for data, grid, label in zip(files, codes, labels):
        magic, version, fingerprint, side, stored_label, checksum = struct.unpack(">2sB4sHBI", data[:14])
        assert (magic, version, side, stored_label) == (b"VQ", 1, 32, label)
        assert fingerprint == model_fingerprint(trained[0])
        assert checksum == zlib.crc32(grid.astype("<u2").tobytes())


def test_a_hierarchical_round_trip_gives_both_levels_exactly_at_the_prior_s_rate(coded_hierarchical):
    codec, model, images, files, _ = coded_hierarchical
    tops, bottoms = model.encode_top(tf.constant(images)).numpy(), model.encode(tf.constant(images)).numpy()
    assert tops.shape[1:] == (4, 4) and bottoms.shape[1:] == (8, 8)
    ideal, labels = prior_bits(model, codec.metadata, images)
    for data, top, bottom, bits, label in zip(files, tops, bottoms, ideal, labels):
        (decoded_top, decoded_bottom), decoded_label = codec.decompress(data)
        np.testing.assert_array_equal(decoded_top, top)
        np.testing.assert_array_equal(decoded_bottom, bottom)
        assert decoded_label == label
        payload_bits = 8 * (len(data) - HEADER.size)
        assert bits - 8 <= payload_bits <= 1.03 * bits + 64, (payload_bits, bits)


def reference_file(model, fingerprint, image, label):
    """The file the codec's docstring describes for a hierarchical export, built from its endpoints alone: the
    header with the CRC-32 of the top codes then the bottom codes, and one range-coded stream of the top codes
    (top_prior_step) then the bottom codes (prior_step, started with the top codes), one position at a time."""
    top, bottom = (encode(tf.constant(image[None])).numpy()[0] for encode in (model.encode_top, model.encode))
    labels = tf.constant([label])
    encoder = constriction.stream.queue.RangeEncoder()
    for codes, state, step in ((top, model.top_prior_start(1, labels), model.top_prior_step),
                               (bottom, model.prior_start(1, tf.constant(top[None]), labels), model.prior_step)):
        previous = 0
        for position, code in enumerate(codes.ravel()):
            outputs = step(state, position, tf.constant([previous], tf.int32))
            state = {name: outputs[name] for name in state}
            encoder.encode(int(code), constriction.stream.model.Categorical(probabilities(outputs["logits"][0]),
                                                                            perfect=False))
            previous = int(code)
    checksum = zlib.crc32(top.astype("<u2").tobytes() + bottom.astype("<u2").tobytes())
    return (struct.pack(">2sB4sHBI", b"VQ", 1, fingerprint, image.shape[0], label, checksum)
            + encoder.get_compressed().astype(">u4").tobytes())


def test_a_hierarchical_file_is_the_header_then_the_top_codes_then_the_bottom_codes(coded_hierarchical,
                                                                                     trained_hierarchical):
    codec, model, images, files, _ = coded_hierarchical
    labels = prior_bits(model, codec.metadata, images)[1]
    for data, image, label in zip(files, images, labels):
        assert data == reference_file(model, model_fingerprint(trained_hierarchical[0]), image, int(label))


def test_a_file_of_one_model_is_refused_by_the_other(coded, coded_hierarchical):
    for (codec, *_), (_, _, _, files, _) in ((coded, coded_hierarchical), (coded_hierarchical, coded)):
        with pytest.raises(CodecError, match="another model"):
            codec.decompress(files[0])


def test_the_stored_label_is_the_class_whose_prior_costs_least(coded):
    codec, model, images, _, _ = coded
    costs = [-model.log_prob(tf.constant(images), tf.fill([len(images)], k)).numpy() for k in (0, 1)]
    np.testing.assert_array_equal(prior_bits(model, codec.metadata, images)[1], np.argmin(np.stack(costs), axis=0))


def test_compress_and_decompress_from_the_command_line(either, tmp_path, capsys):
    (codec, model, _, _, test_folder), trained = either
    inputs = tmp_path / "slices"
    for path in sorted(test_folder.rglob("*.jpeg"))[::5]:  # a few slices of each class, in class folders
        (inputs / path.parent.name).mkdir(parents=True, exist_ok=True)
        (inputs / path.parent.name / path.name).write_bytes(path.read_bytes())
    result = call_main(predict.main, ["--model", str(trained[0]), "--compress", str(inputs),
                                      "--out", str(tmp_path / "coded")], capsys)
    assert result.returncode == 0, result.stderr
    assert "bytes per image" in result.stdout and str(tmp_path / "coded") in result.stdout
    written = sorted((tmp_path / "coded").rglob("*.vqz"))
    assert [path.relative_to(tmp_path / "coded").with_suffix("") for path in written] == \
        [path.relative_to(inputs).with_suffix("") for path in sorted(inputs.rglob("*.jpeg"))]
    result = call_main(predict.main, ["--model", str(trained[0]), "--decompress", str(tmp_path / "coded"),
                                      "--out", str(tmp_path / "decoded")], capsys)
    assert result.returncode == 0, result.stderr
    for path in written:
        source = inputs / path.relative_to(tmp_path / "coded").with_suffix(".jpeg")
        image = dataset.decode_image(str(source), codec.side).numpy()[None]
        expected = np.round(decoded_again(model, image)[0, ..., 0] * 255)
        png = tmp_path / "decoded" / path.relative_to(tmp_path / "coded").with_suffix(".png")
        np.testing.assert_array_equal(np.asarray(Image.open(png)), expected.astype(np.uint8))


def _flip_a_payload_byte(data):
    return data[:HEADER.size + 5] + bytes([data[HEADER.size + 5] ^ 0x40]) + data[HEADER.size + 6:]


DAMAGES = {
    "a flipped byte": (_flip_a_payload_byte, "checksum"),
    "a cut header": (lambda data: data[:9], "not a file of this codec"),
    "a cut word": (lambda data: data[:-2], "truncated"),
    "a lost word": (lambda data: data[:-4], "checksum"),
    "another model's": (lambda data: data[:3] + bytes(b ^ 0xFF for b in data[3:7]) + data[7:], "another model"),
    "not a codec file": (lambda data: b"\x89PNG\r\n\x1a\n" + bytes(40), "not a file of this codec"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_file_that_does_not_decode_is_refused_with_the_reason(damage, either):
    codec, _, _, files, _ = either[0]
    change, words = DAMAGES[damage]
    with pytest.raises(CodecError, match=words):
        codec.decompress(change(files[0]))


def test_the_command_line_gives_one_line_for_a_damaged_file_and_writes_nothing(either, tmp_path, capsys):
    (_, _, _, files, _), trained = either
    path = tmp_path / "in" / "slice.vqz"
    path.parent.mkdir()
    path.write_bytes(_flip_a_payload_byte(files[0]))
    out = tmp_path / "decoded"
    result = call_main(predict.main, ["--model", str(trained[0]), "--decompress", str(path), "--out", str(out)],
                       capsys)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --decompress {path}: ") and "checksum" in lines[0], lines
    assert not out.exists()


def test_quantised_probabilities_never_give_a_code_zero_probability():
    """Even a code the prior all but rules out can be coded and decoded (constriction's guarantee, which the
    codec relies on), and decoding with the same logits gives the codes back."""
    logits = np.array([[0.0, -1e4, -60.0, 30.0, -np.float32(3e38)]] * 5, np.float32)
    codes = np.array([1, 4, 2, 3, 0], np.int32)
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(codes, constriction.stream.model.Categorical(perfect=False), probabilities(logits))
    decoder = constriction.stream.queue.RangeDecoder(encoder.get_compressed())
    decoded = [decoder.decode(constriction.stream.model.Categorical(p, perfect=False))
               for p in probabilities(logits)]
    np.testing.assert_array_equal(decoded, codes)


def test_compress_names_an_image_over_the_size_limit_in_one_line(trained, tmp_path, capsys):
    png_claiming(tmp_path / "huge.png", 30000, 30000)
    out = tmp_path / "coded"
    result = call_main(predict.main, ["--model", str(trained[0]), "--compress", str(tmp_path / "huge.png"), "--out",
                                      str(out)], capsys)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: --compress {tmp_path / 'huge.png'}: 30000x30000 pixels, too large")
    assert not out.exists()
