"""benchmarks/anomaly.py: the synthetic lesions lie inside the brain at the sizes asked for, and the pixel and
image metrics agree with brute-force references."""

import numpy as np
import pytest

from benchmarks.anomaly import auroc, average_precision, best_dice, brain_mask, dice_at, insert_lesion


def brain_slice(size=128, seed=0):
    """A smooth brain-like slice: an ellipse of tissue with texture on a black background."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    inside = ((x - 0.5) / 0.35) ** 2 + ((y - 0.5) / 0.42) ** 2 < 1
    return np.where(inside, 0.45 + 0.1 * rng.standard_normal((size, size)), 0).clip(0, 1).astype(np.float32)


@pytest.mark.parametrize("area", [60, 110, 200])
def test_lesions_lie_inside_the_brain_at_the_requested_size(area):
    rng = np.random.default_rng(area)
    image = brain_slice()
    signs = set()
    for _ in range(12):
        lesioned, mask = insert_lesion(image, rng, area, (0.2, 0.4))
        assert not (mask & ~brain_mask(image)).any()
        assert 0.75 * area <= mask.sum() <= 1.25 * area
        changed = np.abs(lesioned - image) > 1e-6
        assert changed[mask].all() and not changed[~brain_mask(image)].any()
        signs.add(np.sign(np.mean(lesioned[mask] - image[mask])))
        assert lesioned.dtype == np.float32 and lesioned.min() >= 0 and lesioned.max() <= 1
    assert signs == {-1.0, 1.0}, "lesions both brighter and darker than the tissue"


def test_a_brain_too_small_for_the_lesion_gets_none():
    image = np.zeros((64, 64), np.float32)
    image[30:34, 30:34] = 0.5
    assert insert_lesion(image, np.random.default_rng(0), 110, (0.2, 0.4)) is None


def brute_force_curve(scores, truth):
    """(threshold, precision, recall, dice) at each distinct score, highest first, by counting."""
    rows = []
    for threshold in sorted(set(scores.ravel()), reverse=True):
        found = scores >= threshold
        hits = np.sum(found & truth)
        rows.append((threshold, hits / found.sum(), hits / truth.sum(), 2 * hits / (found.sum() + truth.sum())))
    return rows


def test_average_precision_and_best_dice_agree_with_counting_at_every_threshold():
    rng = np.random.default_rng(1)
    truth = rng.random((3, 9, 9)) < 0.2
    scores = np.round(rng.random((3, 9, 9)) + truth * 0.4, 1)  # rounded: many ties
    rows = brute_force_curve(scores, truth)
    recalls = [0.0] + [row[2] for row in rows]
    expected_ap = sum((recalls[k + 1] - recalls[k]) * row[1] for k, row in enumerate(rows))
    assert average_precision(scores, truth) == pytest.approx(expected_ap)
    best = max(rows, key=lambda row: row[3])
    assert best_dice(scores, truth) == pytest.approx((best[3], best[0]))
    assert dice_at(scores, truth, best[0]) == pytest.approx(best[3])


def test_auroc_is_the_share_of_pairs_ranked_right():
    rng = np.random.default_rng(2)
    positives, negatives = np.round(rng.random(30) + 0.3, 1), np.round(rng.random(40), 1)
    pairs = positives[:, None] - negatives[None, :]
    assert auroc(positives, negatives) == pytest.approx(np.mean(pairs > 0) + 0.5 * np.mean(pairs == 0))
