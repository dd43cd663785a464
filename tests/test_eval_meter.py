"""Per-video aggregation of view scores and the three metrics, on hand-computed tables."""
import numpy as np
import pytest

from eval.kit.meter import MultiViewMeter, classification_metrics, mean_class_accuracy, softmax, topk_accuracy

# Three views of one video over 3 classes, given as log-probabilities so softmax recovers them exactly.
CONFIDENT = np.log([0.98, 0.01, 0.01])
UNSURE = np.log([0.2, 0.7, 0.1])


def test_softmax_averaging_is_the_mean_of_view_probabilities():
    meter = MultiViewMeter(1, 3, 3, aggregation='softmax')
    meter.add([0, 0, 0], np.stack([CONFIDENT, UNSURE, UNSURE]))
    # (0.98 + 0.2 + 0.2) / 3 = 0.46; (0.01 + 0.7 + 0.7) / 3 = 0.47; (0.01 + 0.1 + 0.1) / 3 = 0.07
    np.testing.assert_allclose(meter.video_scores()[0], [0.46, 0.47, 0.07], atol=1e-12)
    assert meter.video_scores()[0].argmax() == 1


def test_logit_averaging_can_pick_a_different_class_than_softmax_averaging():
    meter = MultiViewMeter(1, 3, 3, aggregation='logits')
    meter.add([0, 0, 0], np.stack([CONFIDENT, UNSURE, UNSURE]))
    # class 0: (ln .98 + 2 ln .2) / 3 = -1.0797; class 1: (ln .01 + 2 ln .7) / 3 = -1.7728
    np.testing.assert_allclose(meter.video_scores()[0, :2], [-1.0797, -1.7728], atol=1e-4)
    assert meter.video_scores()[0].argmax() == 0
    assert meter.video_scores('softmax')[0].argmax() == 1   # both sums are kept


def test_views_of_different_videos_in_one_batch_go_to_their_own_video():
    meter = MultiViewMeter(2, 2, 3)
    meter.add([0, 1, 0], np.stack([CONFIDENT, UNSURE, UNSURE]))
    assert list(meter.complete) == [True, False]
    meter.add([1], UNSURE[None])
    np.testing.assert_allclose(meter.video_scores()[1], [0.2, 0.7, 0.1], atol=1e-12)


def test_a_video_is_not_scored_until_all_its_views_are_in():
    meter = MultiViewMeter(1, 30, 3)
    meter.add([0] * 29, np.zeros((29, 3)))
    assert not meter.complete[0]


def test_too_many_views_for_a_video_is_an_error():
    meter = MultiViewMeter(1, 1, 3)
    meter.add([0], np.zeros((1, 3)))
    with pytest.raises(RuntimeError):
        meter.add([0], np.zeros((1, 3)))


# Six classes; the true class of each video ranks 0, 3, 0, 5, 1 (0 = best); the last video is unlabelled.
SCORES = np.array([
    [.50, .10, .10, .10, .10, .10],   # label 0: rank 0
    [.10, .30, .20, .05, .05, .30],   # label 0: rank 3 (.30, .20, .30 beat .10)
    [.05, .60, .10, .10, .10, .05],   # label 1: rank 0
    [.30, .20, .01, .19, .15, .15],   # label 2: rank 5 (last)
    [.40, .10, .05, .30, .10, .05],   # label 3: rank 1
    [.90, .02, .02, .02, .02, .02],   # unlabelled
])
LABELS = np.array([0, 0, 1, 2, 3, -1])


def test_top1_counts_labelled_videos_whose_label_scores_highest():
    assert topk_accuracy(SCORES, LABELS, 1) == pytest.approx(2 / 5)


def test_top5_counts_labels_among_the_five_best():
    # ranks 0, 3, 0, 5, 1: all but the rank-5 video
    assert topk_accuracy(SCORES, LABELS, 5) == pytest.approx(4 / 5)


def test_mean_class_accuracy_averages_per_class_top1_over_classes_present():
    # class 0: 1 of 2; class 1: 1 of 1; class 2: 0 of 1; class 3: 0 of 1 -> (0.5 + 1 + 0 + 0) / 4
    assert mean_class_accuracy(SCORES, LABELS) == pytest.approx(0.375)


def test_metrics_ignore_unlabelled_videos_and_report_how_many_were_used():
    m = classification_metrics(SCORES, LABELS)
    assert m == {'top1': pytest.approx(0.4), 'top5': pytest.approx(0.8),
                 'mean_class_accuracy': pytest.approx(0.375), 'videos': 5}


def test_meter_metrics_use_only_completed_videos():
    meter = MultiViewMeter(3, 1, 6)
    for v, label in enumerate([0, 1, 2]):
        meter.set_label(v, label)
    meter.add([0, 1], np.log(SCORES[[0, 2]]))       # both right; video 2 never arrives
    assert meter.metrics()['videos'] == 2 and meter.metrics()['top1'] == 1.0
    assert meter.running_top1() == 1.0


def test_softmax_is_shift_invariant_and_sums_to_one():
    p = softmax(np.array([[1000.0, 1001.0, 1002.0]]))
    np.testing.assert_allclose(p.sum(), 1.0)
    np.testing.assert_allclose(p, softmax(np.array([[0.0, 1.0, 2.0]])))
