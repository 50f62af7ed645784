"""Step strings as values (`jaxens.steps`): parsed, compared and printed back."""

from __future__ import annotations

import pytest

from jaxens import steps


@pytest.mark.parametrize(
    "text, expected", [("500it", 500), ("2ep", 40), ("2ep10it", 50), ("0it", 0), ("0ep", 0), (" 3ep ", 60), (7, 7)]
)
def test_parse(text, expected):
    assert steps.parse(text, 20) == expected  # 20 steps per epoch.


@pytest.mark.parametrize("text", ["", "10", "2it3ep", "ep", "1.5ep", "-2it", -1, True, 2.0, None])
def test_parse_rejects(text):
    with pytest.raises(ValueError, match="'500it', '2ep' or '2ep10it'"):
        steps.parse(text, 20)


def test_steps_keep_their_parts_until_the_epoch_length_is_known():
    assert steps.Steps.parse("2ep10it") == steps.Steps(epochs=2, iterations=10)
    assert str(steps.Steps.parse("2ep0it")) == "2ep" and str(steps.Steps.parse(0)) == "0it"
    assert steps.Steps.parse("2ep10it").at(50).count == 110


def test_a_step_prints_back_in_epochs_and_iterations_and_compares_by_count():
    s = steps.Step(110, steps_per_epoch=50)
    assert (int(s), s.epoch, s.iteration, str(s)) == (110, 2, 10, "2ep10it")
    assert [str(steps.Step(n, 50)) for n in (0, 7, 50, 100, 101)] == ["0it", "7it", "1ep", "2ep", "2ep1it"]
    assert steps.Steps.parse("500it").at(50) > s > steps.Steps.parse("2ep").at(50) == steps.Step(100, 50)
    assert sorted([steps.Step(n, 50) for n in (9, 3, 60)]) == [steps.Step(3, 50), steps.Step(9, 50), steps.Step(60, 50)]
    assert range(10)[steps.Step(3, 50)] == 3  # An index, like an int.
    with pytest.raises(ValueError, match="different steps per epoch"):
        _ = steps.Step(3, 50) < steps.Step(4, 40)
    with pytest.raises(ValueError, match="count ≥ 0"):
        steps.Step(-1, 50)


def test_every_period_up_to_the_last_step():
    assert steps.every(4, 10) == [4, 8, 10]
    assert steps.every(5, 10) == [5, 10]
    assert steps.every(20, 10) == [10]
    assert steps.every(0, 10) == []  # Never (no snapshots).
