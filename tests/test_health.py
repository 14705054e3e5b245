"""HealthMonitor: non-finite readings, D winning for a sustained window, sample collapse, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from animegen.training.health import COLLAPSE, D_WINS, NONFINITE, HealthMonitor, sample_diversity

HEALTHY = {"loss_D": 1.1, "loss_G": 1.8, "D_x": 0.7, "D_G_z": 0.3}
D_WINNING = {"loss_D": 0.01, "loss_G": 7.5, "D_x": 0.999, "D_G_z": 0.001}


def feed(monitor: HealthMonitor, values: dict[str, float], start: int, stop: int, every: int = 10):
    """Readings at start, start + every, ... < stop; returns (iteration, event) pairs."""
    return [(it, e) for it in range(start, stop, every) for e in monitor.observe(it, values)]


def blobs(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """n smooth random colour images in [-1, 1], different enough to stand in for varied faces."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)


# ---- nonfinite ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_reading_names_iteration_and_value(bad):
    events = HealthMonitor().observe(1230, {**HEALTHY, "loss_G": bad, "D_x": bad})
    assert [e.kind for e in events] == [NONFINITE]
    msg = events[0].message
    assert "1230" in msg and "loss_G" in msg and "D_x" in msg
    assert "loss_D" not in msg and "\n" not in msg


def test_other_keys_are_not_judged():
    assert HealthMonitor().observe(10, {**HEALTHY, "images_per_s": math.inf}) == []


# ---- D wins -------------------------------------------------------------------------------------


def test_healthy_readings_raise_nothing():
    m = HealthMonitor(window_iters=100)
    assert feed(m, HEALTHY, 10, 5000) == []
    # Label smoothing keeps D(x) near 1 - s while D(G(z)) is low: not D winning outright.
    assert feed(m, {**HEALTHY, "D_x": 0.77, "D_G_z": 0.03}, 5000, 10000) == []


def test_d_wins_fires_once_after_the_window():
    m = HealthMonitor(window_iters=100)
    events = feed(m, D_WINNING, 10, 1000)
    # The first reading is at 10, so the window is first full at 110; then silence while it lasts.
    assert [it for it, _ in events] == [110]
    event = events[0][1]
    assert event.kind == D_WINS
    assert "0.999" in event.message and "0.001" in event.message
    assert "label_smoothing" in event.message and "modern" in event.message and "lr_d" in event.message
    assert "\n" not in event.message


def test_d_wins_ignores_a_blip_shorter_than_the_window():
    m = HealthMonitor(window_iters=2000)
    events = feed(m, HEALTHY, 10, 3000) + feed(m, D_WINNING, 3000, 4500) + feed(m, HEALTHY, 4500, 8000)
    assert events == []


def test_d_wins_judges_the_window_mean_not_every_reading():
    # Real runs where D wins still have readings that leave the region now and then.
    m = HealthMonitor(window_iters=100)
    events = []
    for it in range(10, 400, 10):
        values = {**D_WINNING, "D_x": 0.9, "D_G_z": 0.1} if it % 50 == 0 else D_WINNING
        events += m.observe(it, values)
    assert [e.kind for e in events] == [D_WINS]


def test_d_wins_rearms_after_the_condition_clears():
    m = HealthMonitor(window_iters=100)
    first = feed(m, D_WINNING, 10, 300)
    recovered = feed(m, HEALTHY, 300, 500)
    again = feed(m, D_WINNING, 500, 900)
    assert len(first) == 1 and recovered == []
    assert [e.kind for _, e in again] == [D_WINS]
    # It needs the window to be mostly bad again, not the first bad reading.
    assert again[0][0] >= 580


# ---- diversity ----------------------------------------------------------------------------------


def test_identical_images_have_no_diversity():
    one = blobs(1, size=64)
    assert sample_diversity(one.expand(8, -1, -1, -1)) == pytest.approx(0.0, abs=1e-6)


def test_varied_images_are_clearly_more_diverse():
    noise = torch.rand(8, 3, 16, 16) * 2 - 1
    # Uniform noise in [0, 1] units differs by 1/sqrt(6) ~ 0.41 RMS on average.
    assert sample_diversity(noise) == pytest.approx(0.41, abs=0.03)
    assert sample_diversity(blobs(8)) > 0.1


def test_uint8_and_float_images_score_alike():
    x = blobs(6, size=48)
    as_uint8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    assert sample_diversity(as_uint8) == pytest.approx(sample_diversity(x), abs=0.01)


def test_diversity_needs_a_batch_of_images():
    with pytest.raises(ValueError):
        sample_diversity(blobs(1))
    with pytest.raises(ValueError):
        sample_diversity(blobs(4)[0])


# ---- collapse -----------------------------------------------------------------------------------


def collapsed(n: int, seed: int = 1) -> torch.Tensor:
    """The same face n times with a little noise, as a collapsed G draws it."""
    g = torch.Generator().manual_seed(seed)
    return (blobs(1, seed=seed).expand(n, -1, -1, -1) + 0.02 * torch.randn(n, 3, 32, 32, generator=g)).clamp(
        -1, 1
    )


def test_collapse_fires_once_for_one_face_against_varied_reals():
    m = HealthMonitor(sample_warmup_iters=0)
    real = blobs(16, seed=2)
    events = m.observe_samples(1000, collapsed(16), real)
    assert [e.kind for e in events] == [COLLAPSE]
    assert "1000" in events[0].message and "\n" not in events[0].message
    assert m.observe_samples(2000, collapsed(16, seed=3), real) == []
    fake, real_div = m.last_sample_diversity
    assert fake < 0.25 * real_div


def test_varied_fakes_are_not_collapse_and_rearm_it():
    m = HealthMonitor(sample_warmup_iters=0)
    real = blobs(16, seed=2)
    assert m.observe_samples(1000, blobs(16, seed=5), real) == []
    assert len(m.observe_samples(2000, collapsed(16), real)) == 1
    assert m.observe_samples(3000, blobs(16, seed=6), real) == []
    assert [e.kind for e in m.observe_samples(4000, collapsed(16), real)] == [COLLAPSE]


def few_faces(faces: int, n: int = 16) -> torch.Tensor:
    """A G collapsed to a handful of faces: each drawn n / faces times with a little noise."""
    g = torch.Generator().manual_seed(9)
    base = blobs(faces, seed=4).repeat(n // faces, 1, 1, 1)
    return (base + 0.02 * torch.randn(base.shape, generator=g)).clamp(-1, 1)


def test_collapse_to_a_handful_of_faces_is_caught_by_twins():
    m = HealthMonitor(sample_warmup_iters=0)
    real = blobs(16, seed=2)
    events = m.observe_samples(500, few_faces(4), real)
    fake, real_div = m.last_sample_diversity
    assert fake > 0.5 * real_div  # the mean pairwise distance alone would not notice
    assert m.last_twin_share == 1.0
    assert [e.kind for e in events] == [COLLAPSE] and "near twin" in events[0].message
    # Varied faces have no twins, and clear the warning.
    assert m.observe_samples(600, blobs(16, seed=5), real) == [] and m.last_twin_share == 0.0


def test_collapse_is_not_judged_during_warmup():
    m = HealthMonitor(sample_warmup_iters=2000)
    real = blobs(16, seed=2)
    assert m.observe_samples(1990, collapsed(16), real) == []
    assert len(m.observe_samples(2000, collapsed(16), real)) == 1


def test_collapse_takes_uint8_reals_against_float_fakes():
    m = HealthMonitor(sample_warmup_iters=0)
    real = ((blobs(16, seed=2) + 1) * 127.5).round().to(torch.uint8)
    assert m.observe_samples(100, blobs(16, seed=5), real) == []
    assert len(m.observe_samples(200, collapsed(16), real)) == 1


# ---- resume -------------------------------------------------------------------------------------


def json_round_trip(m: HealthMonitor, **kwargs) -> HealthMonitor:
    resumed = HealthMonitor(**kwargs)
    resumed.load_state_dict(json.loads(json.dumps(m.state_dict())))
    return resumed


def test_state_round_trip_keeps_the_window():
    m = HealthMonitor(window_iters=100)
    assert feed(m, D_WINNING, 10, 100) == []  # one reading short of a full window
    resumed = json_round_trip(m, window_iters=100)
    assert [it for it, _ in feed(resumed, D_WINNING, 100, 300)] == [110]
    # Without the state the window would start again at 100.
    assert [it for it, _ in feed(HealthMonitor(window_iters=100), D_WINNING, 100, 300)] == [200]


def test_state_round_trip_keeps_warnings_given():
    m = HealthMonitor(window_iters=100, sample_warmup_iters=0)
    real = blobs(8, seed=2)
    assert len(feed(m, D_WINNING, 10, 300)) == 1
    assert len(m.observe_samples(300, collapsed(8), real)) == 1
    resumed = json_round_trip(m, window_iters=100, sample_warmup_iters=0)
    assert feed(resumed, D_WINNING, 300, 600) == []
    assert resumed.observe_samples(600, collapsed(8), real) == []
    fresh = HealthMonitor(window_iters=100, sample_warmup_iters=0)
    assert len(feed(fresh, D_WINNING, 300, 600)) == 1
    assert len(fresh.observe_samples(600, collapsed(8), real)) == 1


def test_fresh_state_loads_from_an_empty_dict():
    m = HealthMonitor(window_iters=100)
    m.load_state_dict({})
    assert m.state_dict() == HealthMonitor().state_dict()
    assert [it for it, _ in feed(m, D_WINNING, 10, 300)] == [110]
