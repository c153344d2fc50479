"""LR schedule values at known steps, warmup resolution, and the scheduler's state round trip."""
import math

import pytest
import torch

from model.config import ConfigError
from training.config import build_config
from training.optimization.schedule import SCHEDULES, LRScheduler, decay_start, extension_note, lr_at, resolve_warmup

# warmup 10 steps, decay over the 100 steps 10..110
KW = dict(base_lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_warmup_is_linear_from_base_over_warmup_steps(kind):
    assert lr_at(0, kind=kind, **KW) == pytest.approx(0.1)  # base_lr / warmup_steps * 1
    assert lr_at(4, kind=kind, **KW) == pytest.approx(0.5)
    assert lr_at(9, kind=kind, **KW) == 1.0                  # last warmup step reaches base_lr
    assert lr_at(10, kind=kind, **KW) == 1.0                 # decay starts from base_lr


@pytest.mark.parametrize("kind, quarter, mid, three_quarters", [
    ("cosine", 0.1 + 0.45 * (1 + math.cos(math.pi / 4)), 0.55, 0.1 + 0.45 * (1 + math.cos(3 * math.pi / 4))),
    ("linear", 0.775, 0.55, 0.325),
    ("polynomial", 0.775, 0.55, 0.325),  # power 1 is linear
])
def test_decay_values_and_end_at_min_lr(kind, quarter, mid, three_quarters):
    assert lr_at(35, kind=kind, **KW) == pytest.approx(quarter)
    assert lr_at(60, kind=kind, **KW) == pytest.approx(mid)
    assert lr_at(85, kind=kind, **KW) == pytest.approx(three_quarters)
    assert lr_at(110, kind=kind, **KW) == pytest.approx(0.1)
    assert lr_at(10_000, kind=kind, **KW) == pytest.approx(0.1)  # clamped past the end


def test_cosine_midpoint_is_mean_of_base_and_min():
    kw = dict(base_lr=3e-4, min_lr=3e-5, warmup_steps=100, total_steps=1100)
    assert lr_at(600, kind="cosine", **kw) == pytest.approx((3e-4 + 3e-5) / 2, rel=1e-12)


def test_polynomial_power_two():
    # (1 - progress) ** 2 at progress 0.5 and 0.25
    assert lr_at(60, kind="polynomial", power=2.0, **KW) == pytest.approx(0.1 + 0.9 * 0.25)
    assert lr_at(35, kind="polynomial", power=2.0, **KW) == pytest.approx(0.1 + 0.9 * 0.5625)
    assert lr_at(110, kind="polynomial", power=2.0, **KW) == pytest.approx(0.1)


def test_constant_stays_at_base_lr_after_warmup():
    assert [lr_at(s, kind="constant", **KW) for s in (10, 60, 109, 110, 500)] == [1.0] * 5


def test_no_warmup_starts_at_base_lr():
    kw = dict(KW, warmup_steps=0)
    assert lr_at(0, kind="cosine", **kw) == 1.0
    assert lr_at(55, kind="linear", **kw) == pytest.approx(0.55)


def test_bad_schedule_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown lr schedule 'step'; choose one of cosine, linear, polynomial, constant"):
        lr_at(0, kind="step", **KW)
    with pytest.raises(ValueError, match="power must be > 0"):
        lr_at(0, kind="polynomial", power=0.0, **KW)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        LRScheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), kind="exp", **KW)


@pytest.mark.parametrize("warmup, total, steps", [
    (0, 100, 0), (0.0, 100, 0), (0.1, 200, 20), (0.05, 10, 1),  # half rounds up
    (0.004, 100, 0), (30, 200, 30), (30.0, 200, 30), (1, 2, 1), (1.0, 2, 1), (500, 0, 500),
])
def test_resolve_warmup(warmup, total, steps):
    assert resolve_warmup(warmup, total) == steps
    assert isinstance(resolve_warmup(warmup, total), int)


@pytest.mark.parametrize("warmup, total, message", [
    (200, 200, r"warmup \(200 steps\) must be shorter than the run \(200 steps\)"),
    (0.999, 100, r"warmup \(100 steps\) must be shorter"),
    (-1, 100, "warmup must be >= 0, got -1"),
    (2.5, 100, "neither a whole number of steps nor a fraction below 1"),
    (float("nan"), 100, "warmup must be a step count or a fraction"),
    ("10", 100, "warmup must be a step count or a fraction"),
])
def test_resolve_warmup_rejects(warmup, total, message):
    with pytest.raises(ValueError, match=message) as e:
        resolve_warmup(warmup, total)
    assert "\n" not in str(e.value)


def _optimizer():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))]
    return torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], lr=123.0)


def test_scheduler_sets_every_group_for_the_step_about_to_be_taken():
    opt = _optimizer()
    sched = LRScheduler(opt, kind="cosine", **KW)
    assert sched.last_lr == 0.0 and opt.param_groups[0]["lr"] == 123.0  # untouched until step()
    seen = [sched.step() for _ in range(111)]
    assert seen == [lr_at(s, kind="cosine", **KW) for s in range(111)]
    assert seen[0] == pytest.approx(0.1) and seen[9] == 1.0 and seen[60] == pytest.approx(0.55)
    assert [g["lr"] for g in opt.param_groups] == [seen[-1], seen[-1]] == [pytest.approx(0.1)] * 2
    assert sched.last_lr == seen[-1] and sched.step_count == 111


def test_scheduler_state_round_trip_continues_the_same_curve(tmp_path):
    sched = LRScheduler(_optimizer(), kind="polynomial", power=2.0, **KW)
    for _ in range(37):
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    assert state == {"step_count": 37, "last_lr": lr_at(36, kind="polynomial", power=2.0, **KW),
                     "schedule": dict(KW, kind="polynomial", power=2.0)}
    opt = _optimizer()
    resumed = LRScheduler(opt, kind="polynomial", power=2.0, **KW)
    assert resumed.load_state_dict(state) == []
    assert resumed.last_lr == sched.last_lr
    assert resumed.step() == sched.step() == lr_at(37, kind="polynomial", power=2.0, **KW)
    assert opt.param_groups[1]["lr"] == sched.last_lr


def test_load_reports_changed_settings_and_follows_a_new_run_length():
    sched = LRScheduler(_optimizer(), kind="linear", **KW)
    for _ in range(60):
        sched.step()
    # resumed with a different batch size: the run is now 210 steps long
    resumed = LRScheduler(_optimizer(), kind="linear", **dict(KW, total_steps=210))
    assert resumed.load_state_dict(sched.state_dict()) == ["total_steps"]
    assert resumed.step() == pytest.approx(0.1 + 0.9 * (1 - 50 / 200))
    resumed.total_steps = 110
    assert resumed.step() == pytest.approx(lr_at(61, kind="linear", **KW))


# ---- warmup-stable-decay -------------------------------------------------------------------------
@pytest.mark.parametrize("shape, mid", [("1-sqrt", 0.1 + 0.9 * (1 - math.sqrt(0.5))), ("linear", 0.55)])
def test_wsd_holds_the_peak_then_decays_over_the_last_fraction(shape, mid):
    kw = dict(KW, kind="wsd", decay_fraction=0.2, decay_shape=shape)  # 22 decay steps: 88..110
    assert decay_start(10, 110, 0.2) == 88
    assert [lr_at(s, **kw) for s in (10, 50, 87, 88)] == [1.0] * 4
    assert lr_at(99, **kw) == pytest.approx(mid)
    assert lr_at(110, **kw) == pytest.approx(0.1) and lr_at(500, **kw) == pytest.approx(0.1)


def test_wsd_decay_never_starts_inside_the_warmup():
    assert decay_start(10, 110, 1.0) == 10  # the whole run after warmup decays
    assert lr_at(60, kind="wsd", decay_fraction=1.0, decay_shape="linear", **KW) == pytest.approx(0.55)
    assert decay_start(0, 3, 0.01) == 2  # at least one decay step


def test_wsd_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match=r"decay_fraction must be in \(0, 1\], got 0"):
        lr_at(0, kind="wsd", decay_fraction=0, **KW)
    with pytest.raises(ValueError, match="unknown wsd decay shape 'cosine'; choose one of linear, 1-sqrt"):
        LRScheduler(_optimizer(), kind="wsd", decay_shape="cosine", **KW)
    for flags, message in ((["--decay_fraction", "0"], r"train.decay_fraction must be in \(0, 1\]"),
                           (["--decay_fraction", "1.5"], r"train.decay_fraction must be in \(0, 1\]"),
                           (["--decay_shape", "sqrt"], "train.decay_shape must be one of linear, 1-sqrt")):
        with pytest.raises(ConfigError, match=message) as e:
            build_config(flags)
        assert "\n" not in str(e.value)
    assert build_config(["--lr_scheduler", "wsd", "--decay_fraction", "1"]).train.decay_fraction == 1.0


def _wsd(total):
    return LRScheduler(_optimizer(), kind="wsd", decay_fraction=0.2, decay_shape="1-sqrt",
                       **dict(KW, total_steps=total))


def test_wsd_extended_in_its_stable_phase_continues_as_if_planned_that_long():
    short = _wsd(110)
    for _ in range(50):
        short.step()
    longer = _wsd(210)
    assert longer.load_state_dict(short.state_dict()) == ["total_steps"]
    note = extension_note(short.state_dict()["schedule"], longer.schedule, 50)
    assert note == ("note: wsd run extended from 110 to 210 steps in its stable phase (step 50): it continues at "
                    "the peak rate as if planned that long, decaying from step 168")
    planned = _wsd(210)
    assert [longer.step() for _ in range(160)] == [planned.lr(s) for s in range(50, 210)]
    assert extension_note(short.state_dict()["schedule"], short.schedule, 50) == ""  # same length: nothing to say
    cosine = LRScheduler(_optimizer(), kind="cosine", **KW).schedule
    assert extension_note(cosine, dict(cosine, total_steps=500), 50) == ""


def test_wsd_extended_inside_its_decay_restarts_the_decay_later():
    saved = _wsd(110).schedule
    note = extension_note(saved, _wsd(210).schedule, 95)
    assert "inside its decay (from step 88): the decay restarts on the new run's curve, back to the peak rate now " \
           "and decaying from step 168" in note and "before step 88" in note
    assert lr_at(95, **_wsd(210).schedule) == 1.0  # what the note promises
    assert "on the new, longer decay" in extension_note(saved, _wsd(120).schedule, 100)  # new start 96


def test_scheduler_scales_groups_with_their_own_rate():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.SGD([{"params": params[:1], "lr_scale": 20.0}, {"params": params[1:]}], lr=1.0)
    sched = LRScheduler(opt, kind="wsd", **KW)
    for _ in range(100):
        lr = sched.step()
    assert [g["lr"] for g in opt.param_groups] == [lr * 20.0, lr] and lr < 1.0
