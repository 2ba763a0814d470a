"""budget.py: the step count a time budget allows, on a fake clock (numbers worked out by hand in each test)."""
import json

import pytest

from budget import TimeBudget


class Clock:
    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t


def _probe(b, clock, setup_s=30.0, sec_per_step=2.0, steps=23):
    for step in range(1, steps + 1):
        clock.t = setup_s + sec_per_step * step
        b.step_done(step)


def test_plan_fits_steps_and_validations_in_the_budget():
    clock = Clock()
    b = TimeBudget(10, epochs=4, batch=8, start=0.0, clock=clock)
    _probe(b, clock)
    assert not b.wants_plan(22) and b.wants_plan(23)         # 3 skipped + 20 timed steps
    assert b.measured_sec_per_step() == 2.0
    # 600 s x 0.97 = 582 s, 76 s spent, 4 validations of 10 s: 466 s of steps at 2 s = 233 more steps
    assert b.plan(23, val_s_guess=10.0) == 256
    assert b.epoch_ends == [64, 128, 192, 256]
    assert b.epoch_end(1) == 128
    assert b.describe(23).startswith("256 steps of 8 images (233 to go, 4 epoch(s) with validation), ~8.4 min at "
                                     "4.0 img/s, done at ")


def test_replan_after_an_epoch_absorbs_a_slower_machine():
    clock = Clock()
    b = TimeBudget(10, epochs=4, batch=8, start=0.0, clock=clock)
    _probe(b, clock)
    b.plan(23, val_s_guess=10.0)
    for step in range(24, 65):                                # to the end of epoch 1, 2.5 s a step
        clock.t = 76.0 + 2.5 * (step - 23)
        b.step_done(step)
    assert b.epoch_sec_per_step(0) == pytest.approx((178.5 - 36.0) / 61)    # from step 3, after the skipped ones
    assert b.epoch_sec_per_step(40) == 2.5
    clock.t = 200.0
    # 582 - 200 = 382 s left, 3 validations of 20 s: 322 s at 2.5 s a step = 128 more steps, shared by 3 epochs
    assert b.replan(64, epoch=0, sec_per_step=2.5, val_s=20.0) == 192
    assert b.epoch_ends == [64, 107, 149, 192]
    assert "(128 to go, 3 epoch(s) with validation), ~6.3 min at 3.2 img/s" in b.describe(64)   # 320 s + 60 s


def test_no_time_left_still_gives_each_epoch_a_step():
    clock = Clock()
    b = TimeBudget(1, epochs=4, batch=8, start=0.0, clock=clock)
    _probe(b, clock)                                          # 76 s spent of a 60 s budget
    assert b.plan(23, val_s_guess=10.0) == 26
    assert b.epoch_ends == [23, 24, 25, 26]


def test_saved_plan_is_taken_by_a_resumed_run(tmp_path):
    clock = Clock()
    b = TimeBudget(10, epochs=4, batch=8, start=0.0, clock=clock)
    _probe(b, clock)
    b.plan(23, val_s_guess=10.0)
    path = tmp_path / "budget.json"
    path.write_text(json.dumps(b.to_dict()))
    again = TimeBudget(10, epochs=4, batch=8, start=0.0, clock=clock)
    assert again.load(str(path)) and again.total == 256 and again.epoch_ends == [64, 128, 192, 256]
    assert not TimeBudget(10, 4, 8, 0.0).load(str(tmp_path / "none.json"))
    assert b.to_dict()["images_per_s"] == 4.0


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="--budget-minutes must be positive"):
        TimeBudget(0, epochs=4, batch=8, start=0.0)


def test_machine_names_the_isa(monkeypatch):
    from budget import describe_machine
    m = {"cpu": "AMD EPYC 7B13", "cores": 2, "isa": ["AVX2"], "onednn_max_cpu_isa": None}
    assert describe_machine(m) == "AMD EPYC 7B13, 2 cores, AVX2"
    m = {"cpu": "Intel(R) Xeon(R) Processor", "cores": 2, "isa": ["AVX2", "AVX-512", "AMX"],
         "onednn_max_cpu_isa": "AVX2"}
    assert describe_machine(m) == "Intel(R) Xeon(R) Processor, 2 cores, AVX2 AVX-512 AMX (oneDNN capped at AVX2)"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    import budget
    assert budget.machine()["onednn_max_cpu_isa"] == "AVX2"
