"""Loss values on hand-computed inputs and the ALB total (utils.py; info/DESIGN.md#losses)."""
import math

import numpy as np
import pytest
import tensorflow as tf

import utils


def _level(pred, target):
    return (tf.constant(np.asarray(pred, np.float32)[None, None]),
            tf.constant(np.asarray(target, np.float32)[None, None]))


def _tiny_level():
    # A 1x2 "grid" (nA = 1, S x S = 1 x 2, K = 2 classes) written as [1, 1, 1, 2, C]:
    # cell 0 positive (tconf 1) with class index 1 at its centroid and box deltas (0.5, -2, 0, 0) to predict 0;
    # cell 1 ignored (tconf -1). Predictions: deltas 0; objectness logits (0, ln 3) at cell 0, (0, 0) at cell 1;
    # class logits (0, 0) at cell 0.
    pred = [[[0, 0, 0, 0, 0, math.log(3), 0, 0], [0, 0, 0, 0, 0, 0, 5, 5]]]
    target = [[[0.5, -2, 0, 0, 1, 1, 0.9], [0, 0, 0, 0, -1, -1, 0.35]]]
    return _level(pred, target)


def test_level_losses_positives_normalisation_by_hand():
    p, t = _tiny_level()
    box, obj, cls = utils.level_losses(p, t, "positives").numpy()
    # box: SmoothL1(0.5) = 0.125, SmoothL1(-2) = 1.5, over 1 positive x 4 coordinates -> 1.625 / 4
    assert box == pytest.approx(1.625 / 4, rel=1e-6)
    # obj: one valid anchor, target fg, logits (0, ln 3): -ln(3/4)
    assert obj == pytest.approx(-math.log(0.75), rel=1e-6)
    # cls: one centroid, logits (0, 0): ln 2
    assert cls == pytest.approx(math.log(2), rel=1e-6)


def test_level_losses_all_normalisation_matches_the_original_means():
    p, t = _tiny_level()
    box, obj, cls = utils.level_losses(p, t, "all", global_batch=1).numpy()
    # box over all 2 anchors x 4 entries; obj over both anchors, the ignored one as target 0: -ln(1/2)
    assert box == pytest.approx(1.625 / 8, rel=1e-6)
    assert obj == pytest.approx((-math.log(0.75) + math.log(2)) / 2, rel=1e-6)
    assert cls == pytest.approx(math.log(2), rel=1e-6)


def test_ignored_anchor_gets_no_objectness_gradient_and_empty_level_is_zero():
    p, t = _tiny_level()
    with tf.GradientTape() as tape:
        tape.watch(p)
        obj = utils.level_losses(p, t, "all", global_batch=1)[1]
    g = tape.gradient(obj, p).numpy()
    assert np.all(g[0, 0, 0, 1, 4:6] == 0) and np.any(g[0, 0, 0, 0, 4:6] != 0)
    empty_t = tf.concat([tf.zeros_like(t[..., :4]), tf.zeros_like(t[..., 4:5]), -tf.ones_like(t[..., 5:6]),
                         tf.zeros_like(t[..., 6:])], -1)
    box, obj, cls = utils.level_losses(p, empty_t).numpy()
    assert box == 0 and cls == 0
    # Both anchors negative: -ln(1/4) at cell 0 and -ln(1/2) at cell 1, averaged.
    assert obj == pytest.approx((math.log(4) + math.log(2)) / 2, rel=1e-6)


def test_global_count_makes_replica_shares_add_up():
    # Splitting a batch of two examples into two "replicas" whose counts are summed globally gives shares that
    # add up to the one-device loss.
    p, t = _tiny_level()
    p2 = tf.concat([p, p * 0.5], 0)
    t2 = tf.concat([t, tf.tensor_scatter_nd_update(t, [[0, 0, 0, 1, 4]], [1.0])], 0)
    whole = utils.level_losses(p2, t2).numpy()
    counts = [utils.level_losses(p2[i:i + 1], t2[i:i + 1], global_sum=lambda x: x) for i in range(2)]
    # global_sum returning the sum of both replicas' counts: do it by hand with the known totals.
    pos = float(tf.reduce_sum(tf.cast(t2[..., 4] > 0, tf.float32)))
    val = float(tf.reduce_sum(tf.cast(t2[..., 4] >= 0, tf.float32)))
    ids = float(tf.reduce_sum(tf.cast(t2[..., 5] >= 0, tf.float32)))
    shares = []
    for i in range(2):
        totals = iter([ids, pos, val])      # the order level_losses asks for its counts
        shares.append(utils.level_losses(p2[i:i + 1], t2[i:i + 1], global_sum=lambda x: next(totals)).numpy())
    np.testing.assert_allclose(shares[0] + shares[1], whole, rtol=1e-6)
    assert not np.allclose(counts[0] + counts[1], whole)     # per-replica normalisation would not add up


def test_mask_loss_by_hand():
    # 2 proposals of 1x2 pixels; only the first is positive. Logits (0, 0) -> ln 2 per pixel; (0, ln 3) with
    # target 1 -> -ln(3/4). Mean over the positive proposal's 2 pixels.
    logits = np.zeros((1, 2, 1, 2, 2), np.float32)
    logits[0, 0, 0, 1, 1] = math.log(3)
    logits[0, 1] = 7.0
    targets = np.array([[[[0, 1]], [[1, 1]]]], np.float32)
    value = utils.mask_loss(tf.constant(logits), tf.constant(targets), tf.constant([[1.0, 0.0]])).numpy()
    assert value == pytest.approx((math.log(2) - math.log(0.75)) / 2, rel=1e-6)
    assert utils.mask_loss(tf.constant(logits), tf.constant(targets), tf.constant([[0.0, 0.0]])).numpy() == 0


def test_smooth_l1_values():
    np.testing.assert_allclose(utils.smooth_l1(tf.constant([0.0, 0.5, -1.0, 3.0])).numpy(), [0, 0.125, 0.5, 2.5])


def test_alb_total_equals_formula_and_splits_over_replicas():
    alb = utils.AutoLossBalance(13)
    losses = tf.constant(np.linspace(0.1, 1.3, 13), tf.float32)
    alb(losses)
    s = np.linspace(-1.0, 2.0, 13).astype(np.float32)
    alb.alb_log_vars.assign(s)
    expected = float(np.sum(0.5 * (np.exp(-s) * losses.numpy() + s)))
    assert float(utils.alb_total(alb, losses)) == pytest.approx(expected, rel=1e-6)
    # Two replicas, each holding half of every loss: their totals add up to the same formula.
    halves = [float(utils.alb_total(alb, losses * 0.5, num_replicas=2)) for _ in range(2)]
    assert sum(halves) == pytest.approx(expected, rel=1e-6)


def test_loss_terms_layout():
    levels = [tf.constant([1.0, 2.0, 3.0]) * (k + 1) for k in range(4)]
    per_level = utils.loss_terms(levels, tf.constant(9.0), "per_level").numpy()
    assert per_level.tolist() == [1, 2, 3, 2, 4, 6, 3, 6, 9, 4, 8, 12, 9]
    glob = utils.loss_terms(levels, tf.constant(9.0), "global").numpy()
    np.testing.assert_allclose(glob, [2.5, 5.0, 7.5, 9.0])
    assert utils.alb_num_terms("per_level") == 13 and utils.alb_num_terms("global") == 4


def test_level_losses_balanced_averages_fg_and_bg_separately():
    # Three anchors: fg with obj logits (0, ln 3), bg with (0, 0), ignored with (0, 0); K = 2.
    pred = [[[0, 0, 0, 0, 0, math.log(3), 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]]]
    target = [[[0.5, -2, 0, 0, 1, 1, 0.9], [0, 0, 0, 0, 0, -1, 0.1], [0, 0, 0, 0, -1, -1, 0.35]]]
    p, t = _level(pred, target)
    box, obj, cls = utils.level_losses(p, t, "balanced").numpy()
    # obj: fg mean -ln(3/4) plus bg mean -ln(1/2) (the "positives" mode would average them: half of this)
    assert obj == pytest.approx(-math.log(0.75) + math.log(2), rel=1e-6)
    assert box == pytest.approx(1.625 / 4, rel=1e-6) and cls == pytest.approx(math.log(2), rel=1e-6)
    assert utils.level_losses(p, t, "positives").numpy()[1] == pytest.approx(obj / 2, rel=1e-6)


def test_level_losses_focal_sums_over_anchors_and_divides_by_positives():
    # The same three anchors. fg: p = 3/4, focal 0.25 * (1/4)^2 * -ln(3/4); bg: p = 1/2, 0.75 * (1/2)^2 * ln 2;
    # the ignored anchor adds nothing; one positive, so the sum is the loss. Box and class as "positives".
    pred = [[[0, 0, 0, 0, 0, math.log(3), 0, 0], [0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]]]
    target = [[[0.5, -2, 0, 0, 1, 1, 0.9], [0, 0, 0, 0, 0, -1, 0.1], [0, 0, 0, 0, -1, -1, 0.35]]]
    p, t = _level(pred, target)
    box, obj, cls = utils.level_losses(p, t, "focal").numpy()
    expected = 0.25 * (1 / 16) * -math.log(0.75) + 0.75 * 0.25 * math.log(2)
    assert obj == pytest.approx(expected, rel=1e-6)
    assert box == pytest.approx(1.625 / 4, rel=1e-6) and cls == pytest.approx(math.log(2), rel=1e-6)
    # No positive in the batch: the background sum is divided by 1, not 0. Anchor 0 is now background with
    # p(bg) = 1/4: 0.75 * (3/4)^2 * ln 4.
    no_fg = [[[0, 0, 0, 0, 0, -1, 0.1], [0, 0, 0, 0, 0, -1, 0.1], [0, 0, 0, 0, -1, -1, 0.35]]]
    _, t0 = _level(pred, no_fg)
    assert utils.level_losses(p, t0, "focal").numpy()[1] == pytest.approx(
        0.75 * 0.75 ** 2 * math.log(4) + 0.75 * 0.25 * math.log(2), rel=1e-6)


def test_loss_term_names_follow_the_order_of_loss_terms():
    """Each level's (box, obj, cls) losses set to 10 * level + j and the mask to 99: the name of every entry of
    loss_terms is the loss it holds (the ALB log-variances are logged under these names)."""
    import utils
    levels = [[10.0 * lv + j for j in range(3)] for lv in (2, 3, 4, 5)]
    terms = utils.loss_terms(tf.constant(levels), tf.constant(99.0), "per_level").numpy()
    value = {f"{n}_{lv}": 10.0 * lv + j for lv in (2, 3, 4, 5) for j, n in enumerate(("box", "obj", "cls"))}
    value["mask"] = 99.0
    assert [value[n] for n in utils.loss_term_names("per_level", 4)] == terms.tolist()
    terms = utils.loss_terms(tf.constant(levels), tf.constant(99.0), "global").numpy()
    means = {"box": 35.0, "obj": 36.0, "cls": 37.0, "mask": 99.0}     # mean over the levels 2..5
    assert [means[n] for n in utils.loss_term_names("global", 4)] == terms.tolist()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_alb_log_variance_of_a_zero_term_stays_finite(optimizer):
    """A term that is exactly zero (a level without positives, the mask loss of a batch without positives) has the
    gradient 0.5 on its log-variance at every step and nothing pulls it back: unbounded, s passes -88.7 and
    exp(-s) * 0 is inf * 0 = NaN. The log-variances are projected into utils.ALB_LOG_VAR_RANGE after each step.
    Steps of 1.0 compress the tiny preset's ALB step (Adam, lr 2e-3 x alb_lr_mult 10) 50-fold; Keras's Adam and
    SGD with momentum 0.9 are the two bases of train.make_optimizer, which leaves the ALB variables undecayed."""
    lo, hi = utils.ALB_LOG_VAR_RANGE
    alb = utils.AutoLossBalance(4)
    terms = tf.constant([0.0, 0.3, 1.0, 2.0])
    alb(terms)
    opt = (tf.keras.optimizers.Adam(learning_rate=1.0) if optimizer == "adam"
           else tf.keras.optimizers.SGD(learning_rate=1.0, momentum=0.9))
    totals = []
    for _ in range(300):
        with tf.GradientTape() as tape:
            total = alb(terms)
        opt.apply(tape.gradient(total, [alb.alb_log_vars]), [alb.alb_log_vars])
        totals.append(float(total))
    s = alb.alb_log_vars.numpy()
    bad = [i for i, t in enumerate(totals) if not np.isfinite(t)]
    assert not bad, f"the total is {totals[bad[0]]} from step {bad[0]} on (log-variances at the end: {s})"
    assert np.all((s >= lo) & (s <= hi))
    assert s[0] == lo                                   # the zero term's log-variance rests on the lower bound
    # When the term comes back, the gradient 0.5 * (1 - exp(-s) * L) < 0 lifts its log-variance off the bound.
    terms = tf.constant([1.0, 0.3, 1.0, 2.0])
    for _ in range(20):
        with tf.GradientTape() as tape:
            total = alb(terms)
        opt.apply(tape.gradient(total, [alb.alb_log_vars]), [alb.alb_log_vars])
        assert np.isfinite(float(total))
    assert alb.alb_log_vars.numpy()[0] > lo


def test_alb_range_round_trips_and_leaves_the_formula_alone_inside_it():
    alb = utils.AutoLossBalance(3, log_var_range=(-2.0, 3.0))
    again = utils.AutoLossBalance.from_config(alb.get_config())
    assert again.log_var_range == (-2.0, 3.0) and again.num_terms == 3
    again(tf.zeros([3]))
    again.alb_log_vars.assign([-2.0, 0.5, 3.0])
    losses = np.array([0.2, 0.7, 4.0], np.float32)
    s = np.array([-2.0, 0.5, 3.0])
    assert float(again(tf.constant(losses))) == pytest.approx(float(np.sum(0.5 * (np.exp(-s) * losses + s))), rel=1e-6)
