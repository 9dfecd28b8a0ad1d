"""The binary HER2 headline of SPEC 4: accuracy and SFS on {0, 1+} vs {2+, 3+}, the four-class figures beside them.

Hand-computed cases: perfect generation, a known confusion matrix, an error inside a HER2 group, degenerate test
sets; and the paired bootstrap (binary and four-class intervals from the same resampled test images).
"""

import warnings

import numpy as np
import pytest

from histodiff.sfs import (
    AbsentClassWarning,
    HER2_VIEWS,
    SFS_METRICS,
    binarize_her2,
    bootstrap_ci,
    confusion_matrix,
    accuracy_table,
    her2_wide,
    semantic_fidelity_score,
    sfs_report,
    sfs_table,
)
from histodiff.studies import classifier_bias_study, robustness_study

N_BOOT = 200


def values(table):
    "{(classes, metric): value} of a HER2 table."
    return table.set_index(['classes', 'metric']).value.to_dict()


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_perfect_generation_scores_half_of_one_plus_accuracy(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 120)
    real = np.where(rng.random(120) < 0.3, rng.integers(0, 4, 120), y)  # an imperfect classifier
    v = values(sfs_table(y, real, real, n_resamples=N_BOOT))
    acc_binary = (binarize_her2(y) == binarize_her2(real)).mean()
    assert v['binary', 'avg_deg'] == pytest.approx(0.0)
    assert v['binary', 'acc_gen'] == pytest.approx(acc_binary)
    assert v['binary', 'sfs'] == pytest.approx((acc_binary + 1) / 2)
    assert v['four-class', 'sfs'] == pytest.approx(((y == real).mean() + 1) / 2)


def test_spec_worked_example_holds_on_both_views():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    p = y.copy()
    wrong = rng.choice(200, 26, replace=False)
    p[wrong] = (y[wrong] + 2) % 4  # errors cross HER2 groups
    v = values(sfs_table(y, p, p, n_resamples=N_BOOT))
    for cls in HER2_VIEWS:
        assert v[cls, 'acc_gen'] == pytest.approx(0.87)
        assert v[cls, 'sfs'] == pytest.approx(0.935)


def test_known_confusion_matrix():
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    real = np.array([0, 0, 1, 1, 2, 2, 3, 2])
    gen = np.array([0, 2, 0, 1, 2, 3, 1, 2])
    np.testing.assert_array_equal(confusion_matrix(y, gen, 4), [[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 0]])
    np.testing.assert_array_equal(confusion_matrix(binarize_her2(y), binarize_her2(gen), 2), [[3, 1], [1, 3]])
    # four classes: recalls real [1, 1, 1, .5], generated [.5, .5, .5, 0]; Acc_gen 3/8, AvgDeg mean(.5, .5, .5, .5)
    # binary: real perfect, generated recalls [3/4, 3/4]; Acc_gen 6/8, AvgDeg 1/4
    expected = {
        ('binary', 'acc_real'): 1.0,
        ('binary', 'acc_gen'): 0.75,
        ('binary', 'avg_deg'): 0.25,
        ('binary', 'sfs'): (0.75 + 1 - 0.25) / 2,
        ('four-class', 'acc_real'): 0.875,
        ('four-class', 'acc_gen'): 0.375,
        ('four-class', 'avg_deg'): 0.5,
        ('four-class', 'sfs'): (0.375 + 1 - 0.5) / 2,
    }
    t = sfs_table(y, real, gen, n_resamples=N_BOOT)
    assert t.classes.tolist() == ['binary'] * 4 + ['four-class'] * 4  # the headline first
    assert t.metric.tolist() == list(SFS_METRICS) * 2
    assert values(t) == pytest.approx(expected)
    w = her2_wide(t).iloc[0]
    assert (w.sfs, w.sfs_4class, w.acc_gen, w.acc_gen_4class) == pytest.approx((0.75, 0.4375, 0.75, 0.375))


def test_error_inside_a_her2_group_costs_four_class_only():
    y = np.array([0, 1, 2, 3] * 6)
    gen = np.where(y == 1, 0, y)  # 1+ predicted as 0: both HER2-negative
    v = values(sfs_table(y, y, gen, n_resamples=N_BOOT))
    assert v['binary', 'acc_gen'] == 1.0 and v['binary', 'sfs'] == 1.0
    assert v['four-class', 'acc_gen'] == pytest.approx(0.75)
    assert v['four-class', 'sfs'] == pytest.approx((0.75 + 1 - 0.25) / 2)
    acc = values(accuracy_table(y, gen, n_resamples=N_BOOT))
    assert acc == pytest.approx({('binary', 'accuracy'): 1.0, ('four-class', 'accuracy'): 0.75})


def test_binary_and_four_class_intervals_share_resamples():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 80)
    real = np.where(rng.random(80) < 0.2, (y + 1) % 4, y)
    gen = np.where(rng.random(80) < 0.3, (y + 2) % 4, real)
    t = sfs_table(y, real, gen, n_resamples=N_BOOT, seed=7).set_index(['classes', 'metric'])
    for cls, c, f in (('binary', 2, binarize_her2), ('four-class', 4, lambda a: a)):
        one = bootstrap_ci(
            lambda a, b, g: semantic_fidelity_score(f(a), f(b), f(g), c, warn=False)['sfs'],
            y,
            real,
            gen,
            n_resamples=N_BOOT,
            seed=7,
        )
        assert (t.loc[(cls, 'sfs'), 'ci_low'], t.loc[(cls, 'sfs'), 'ci_high']) == pytest.approx(
            (one['low'], one['high'])
        )
    assert (t.ci_low <= t.value + 1e-12).all() and (t.value <= t.ci_high + 1e-12).all()


def test_sfs_report_keeps_its_shape():
    y = np.array([0, 1, 2, 3] * 10)
    gen = np.where(y == 3, 2, y)
    r = sfs_report(y, y, gen, 4, n_resamples=N_BOOT)
    assert set(r) == {
        'sfs',
        'avg_deg',
        'acc_gen',
        'acc_real',
        'recall_real',
        'recall_gen',
        'n_per_class',
        'classes_used',
    }
    assert set(r['sfs']) == {'value', 'low', 'high', 'level', 'n_resamples'}
    assert r['sfs']['value'] == pytest.approx((0.75 + 1 - 0.25) / 2)


@pytest.mark.parametrize(
    'y, real, gen',
    [
        ([0, 1, 0, 1, 1], [0, 1, 1, 1, 0], [0, 0, 0, 1, 1]),  # HER2-negative only: the binary positive class is absent
        ([0, 3], [0, 3], [0, 0]),  # two images: many resamples hold one class
        ([2], [2], [3]),  # one image: zero-width interval
        (['0', '1+', '3+', '2+'], ['0', '1+', '3+', '3+'], ['1+', '1+', '2+', '0']),  # BCI-style strings
    ],
)
def test_degenerate_test_sets_do_not_crash(y, real, gen):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', AbsentClassWarning)
        t = sfs_table(y, real, gen, n_resamples=N_BOOT)
    assert len(t) == 8 and np.isfinite(t[['value', 'ci_low', 'ci_high']].to_numpy()).all()


def test_absent_class_warns_once_per_view():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        sfs_table([0, 1, 0, 1], [0, 1, 1, 1], [0, 0, 0, 1], n_resamples=N_BOOT)
    assert [x.category for x in w] == [AbsentClassWarning] * 2


def test_demo_dab_score_labels_and_bci_labels_alike():
    from histodiff.sources import HER2_CLASSES, bci_label
    from histodiff.data import demo_staining_pairs

    bci = [bci_label(f'0000{i}_test_{s}.png') for i, s in enumerate(HER2_CLASSES)]
    np.testing.assert_array_equal(binarize_her2(bci), [0, 0, 1, 1])
    y = demo_staining_pairs('test', tile=64)['label']  # the demo's DAB-score classes 0..3 (scikit-image's IHC field)
    np.testing.assert_array_equal(binarize_her2(y), (y >= 2).astype(int))
    gen = np.where(y == 1, 0, np.where(y == 3, 2, y))  # errors inside the HER2 groups only
    v = values(sfs_table(y, y, gen, n_resamples=N_BOOT))
    assert v['binary', 'sfs'] == 1.0 and v['four-class', 'sfs'] < 1.0


def _brightness_classifier(x):
    return np.digitize(np.asarray(x).mean((1, 2, 3)), [60, 120, 185])


def test_studies_report_binary_first():
    rng = np.random.default_rng(0)
    ihc = np.stack([np.full((16, 16, 3), v, np.uint8) for v in (30, 90, 150, 220) * 3]) + rng.integers(
        0, 20, (12, 16, 16, 3)
    ).astype(np.uint8)
    lab = np.array([0, 1, 2, 3] * 3)
    one_as_zero = lambda x: np.where(_brightness_classifier(x) == 1, 0, _brightness_classifier(x))
    bias = classifier_bias_study({'1+ as 0': one_as_zero}, ihc, ihc, lab).iloc[0]
    assert list(bias.index[:5]) == ['classifier', 'accuracy_real', 'accuracy', 'sfs', 'avg_deg']
    assert (bias.accuracy_real, bias.accuracy, bias.sfs) == (1.0, 1.0, 1.0)
    assert (bias.accuracy_real_4class, bias.accuracy_4class) == (0.75, 0.75)
    rob = robustness_study(ihc, lab, one_as_zero, perturbations={'rotation': (15,)})
    assert rob.accuracy.tolist() == [1.0, 1.0] and rob.accuracy_4class.tolist() == [0.75, 0.75]
    assert {'accuracy_drop_pct', 'sfs_drop_pct', 'accuracy_4class_drop_pct', 'sfs_4class_drop_pct'} <= set(rob.columns)
