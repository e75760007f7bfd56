from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from shoal.data.digits import load_digits_split
from shoal.errors import DataError
from shoal.models import compute_importance, load_teacher
from shoal.planner.journal import Journal
from shoal.planner.objective import Evaluation, Evaluator
from shoal.planner.search import run_search
from shoal.planner.settings import SearchSettings
from shoal.planner.space import PER_DEVICE, SearchSpace


@pytest.fixture(scope="module")
def problem(tiny_digits_teacher, three_devices, three_predictors):
    teacher = load_teacher(tiny_digits_teacher)
    train, val = load_digits_split("train"), load_digits_split("val")
    scores = compute_importance(teacher.model, teacher.config, train.images[:64], train.labels[:64])
    space = SearchSpace(teacher.config, three_devices, scores)
    evaluator = Evaluator(teacher.model, teacher.config, three_devices, three_predictors,
                          train.images[:128], val.images[:96], val.labels[:96], delta=0.05)
    return space, evaluator


def test_evaluation_parts_add_up(problem):
    space, evaluator = problem
    ev = evaluator.evaluate(space.decode([0.5] * space.dim))
    assert ev.psi == pytest.approx(ev.loss + 0.05 * ev.latency.total_ms)
    lat = ev.latency
    assert lat.total_ms == pytest.approx(max(c + t for c, t in zip(lat.compute_ms, lat.transfer_ms)) + lat.aggregate_ms)
    assert lat.transfer_ms[0] == 0.0 and lat.transfer_ms[2] > lat.transfer_ms[1] > 0  # 2 Mbit/s link is slowest
    assert 0 < lat.aggregate_ms < min(lat.compute_ms)


@pytest.mark.parametrize("strategy", ["bo", "random", "uniform"])
def test_search_journal_resume_loses_and_repeats_nothing(problem, tmp_path, strategy):
    space, evaluator = problem
    settings = SearchSettings(strategy=strategy, init=3, iterations=3, seed=1, num_restarts=2, raw_samples=32)
    path = tmp_path / "journal.jsonl"
    full = run_search(space, evaluator, settings, Journal(path, {"s": strategy}))
    assert len(full.records) == 6 and [r.index for r in full.records] == list(range(6))
    assert len(path.read_text().splitlines()) == 7
    # interrupt after 4 evaluations, with a half-written 5th line
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:5]) + lines[5][:40])
    evaluated = []
    original = evaluator.evaluate
    evaluator.evaluate = lambda policy: evaluated.append(policy) or original(policy)
    try:
        resumed = run_search(space, evaluator, settings, Journal(path, {"s": strategy}), resume=True)
    finally:
        evaluator.evaluate = original
    assert len(evaluated) == 2
    for a, b in zip(resumed.records, full.records):
        assert a.x == pytest.approx(b.x)
    assert [r.psi for r in resumed.records] == pytest.approx([r.psi for r in full.records])


def test_bo_uses_the_gp_after_init(problem):
    space, evaluator = problem
    result = run_search(space, evaluator, SearchSettings("bo", init=3, iterations=2, num_restarts=2, raw_samples=32))
    assert [r.phase for r in result.records][:3] == ["anchor", "anchor", "init"]
    alone = result.records[0]
    assert alone.shapes[1] is None and alone.shapes[2] is None   # the central node alone, the whole teacher
    assert alone.shapes[0]["width"] == 48 and len(alone.shapes[0]["layers"]) == 3
    assert set(r.phase for r in result.records[3:]) <= {"bo", "fallback"}
    assert result.best_so_far() == sorted(result.best_so_far(), reverse=True)


def test_journal_of_another_problem_is_refused(problem, tmp_path):
    space, evaluator = problem
    path = tmp_path / "j.jsonl"
    settings = SearchSettings("random", init=1, iterations=0)
    run_search(space, evaluator, settings, Journal(path, {"delta": 1.0}))
    with pytest.raises(DataError, match="differs in delta"):
        run_search(space, evaluator, settings, Journal(path, {"delta": 2.0}), resume=True)


def test_corrupt_journal_line_is_named(problem, tmp_path):
    space, evaluator = problem
    path = tmp_path / "j.jsonl"
    run_search(space, evaluator, SearchSettings("random", init=2, iterations=0), Journal(path, {}))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{not json", lines[2]]) + "\n")
    with pytest.raises(DataError, match="line 2 is corrupt"):
        run_search(space, evaluator, SearchSettings("random", init=2, iterations=0), Journal(path, {}), resume=True)


def test_journal_resumes_after_a_line_cut_short_and_appends_on_a_clean_line(problem, tmp_path):
    space, evaluator = problem
    path = tmp_path / "j.jsonl"
    settings = SearchSettings("random", init=2, iterations=0, prune=False)
    first = run_search(space, evaluator, settings, Journal(path, {}))
    with open(path, "a") as fh:
        fh.write('{"kind": "eval", "index": 2, "pha')      # a crash mid-write
    more = dataclasses.replace(settings, init=3)
    resumed = run_search(space, evaluator, more, Journal(path, {}), resume=True)
    assert [r.key for r in resumed.records[:2]] == [r.key for r in first.records]
    assert len(resumed.records) == 3
    assert [json.loads(line)["index"] for line in path.read_text().splitlines()[1:]] == [0, 1, 2]


def test_settings_validation():
    with pytest.raises(Exception, match="strategy must be"):
        SearchSettings(strategy="grid")  # type: ignore[arg-type]
    with pytest.raises(Exception, match="init"):
        SearchSettings(init=1)


class _PsiByDevices:
    """Ψ = 1 + `per_missing` × (workers left out): a plateau (0) or a cost for every worker dropped."""

    def __init__(self, real: Evaluator, per_missing: float) -> None:
        self.real, self.per_missing, self.calls = real, per_missing, 0

    def evaluate(self, policy):
        self.calls += 1
        ev = self.real.evaluate(policy)
        missing = len(self.real.devices.names) - len(policy.devices)
        return dataclasses.replace(ev, psi=1.0 + self.per_missing * missing)

    def latencies(self, policies):
        return self.real.latencies(policies)


def _used(record):
    return sum(shape is not None for shape in record.shapes)


def test_prune_drops_workers_that_tie_and_keeps_those_that_pay(problem, tmp_path):
    space, evaluator = problem
    settings = SearchSettings("random", init=3, iterations=0, anchors=False, seed=3)
    flat = run_search(space, _PsiByDevices(evaluator, 0.0), settings)
    assert max(_used(r) for r in flat.records[:3]) > 1       # the random design used workers
    assert any(r.phase == "prune" for r in flat.records)
    assert _used(flat.chosen) == 1 and flat.chosen.shapes[0] is not None   # only the central node is left
    costly = run_search(space, _PsiByDevices(evaluator, 0.1), settings)
    assert costly.chosen.psi == costly.best.psi == 1.0 and _used(costly.chosen) == 3
    assert all(r.psi > costly.best.psi for r in costly.records if r.phase == "prune")
    off = run_search(space, _PsiByDevices(evaluator, 0.0), dataclasses.replace(settings, prune=False))
    assert len(off.records) == 3 and not any(r.phase == "prune" for r in off.records)


def test_prune_steps_are_journaled_and_not_repeated_on_resume(problem, tmp_path):
    space, evaluator = problem
    settings = SearchSettings("random", init=3, iterations=0, anchors=False, seed=3)
    path = tmp_path / "journal.jsonl"
    first = run_search(space, _PsiByDevices(evaluator, 0.0), settings, Journal(path, {}))
    again = _PsiByDevices(evaluator, 0.0)
    resumed = run_search(space, again, settings, Journal(path, {}), resume=True)
    assert again.calls == 0 and resumed.chosen.key == first.chosen.key
    assert [r.phase for r in resumed.records] == [r.phase for r in first.records]


class _LatencyPsi:
    """Ψ from the latency model and a smooth stand-in for the proxy: cheap (no sub-model is built), and
    as full of plateaus as the real Ψ, since both are functions of the decoded policy."""

    def __init__(self, real: Evaluator) -> None:
        self.real, self.calls = real, 0

    def evaluate(self, policy):
        self.calls += 1
        latency = self.real.latency(policy)
        units = sum(len(s.layers) * (1 + s.width / 48) for s in policy.specs)
        loss = 2.0 * math.exp(-units / 8)
        return Evaluation(loss + 0.05 * latency.total_ms, loss, latency, 0.05, (), (0,) * len(policy.specs),
                          (0,) * len(policy.specs), 0.0)

    def latencies(self, policies):
        return self.real.latencies(policies)


def test_bo_proposes_only_policies_not_yet_evaluated(problem):
    space, evaluator = problem
    settings = SearchSettings("bo", init=4, iterations=12, seed=2, raw_samples=128, num_restarts=3, prune=False)
    result = run_search(space, _LatencyPsi(evaluator), settings)
    assert [r.phase for r in result.records[4:]] == ["bo"] * 12   # the acquisition found a new policy every time
    assert result.wasted == 0
    keys = [r.key for r in result.records]
    assert len(set(keys[4:])) == 12 and not set(keys[4:]) & set(keys[:4])
    assert len(result.propose_seconds) == 16
    assert all(s == 0.0 for s in result.propose_seconds[:4]) and all(s > 0 for s in result.propose_seconds[4:])
    assert result.optimiser_seconds == pytest.approx(sum(result.propose_seconds))


@pytest.mark.parametrize("surrogate", ["policy", "encoding"])
def test_bo_is_deterministic_per_seed(problem, surrogate):
    space, evaluator = problem
    fake = _LatencyPsi(evaluator)
    settings = SearchSettings("bo", init=3, iterations=4, seed=5, raw_samples=64, num_restarts=2, prune=False,
                              surrogate=surrogate)
    first, again = run_search(space, fake, settings), run_search(space, fake, settings)
    assert [r.x for r in first.records] == [r.x for r in again.records]
    other = run_search(space, fake, dataclasses.replace(settings, seed=6))
    assert [r.x for r in other.records] != [r.x for r in first.records]


def test_bo_falls_back_to_an_unevaluated_random_policy_when_every_candidate_was_evaluated(problem, monkeypatch):
    from shoal.planner import search

    space, evaluator = problem
    monkeypatch.setattr(search._PolicyBO, "_around", lambda self, starts, gen: [])
    settings = SearchSettings("bo", init=3, iterations=3, seed=0, raw_samples=1, num_restarts=1, prune=False,
                              anchors=False)
    # one Sobol candidate per search: once its policy is evaluated, only the fallback is left
    result = run_search(space, _LatencyPsi(evaluator), settings)
    assert [r.phase for r in result.records] == ["init"] * 3 + ["bo", "fallback", "fallback"]
    assert result.wasted == 2 and len({r.key for r in result.records}) == 6


def test_policy_features_see_the_policy_not_the_point(problem):
    from shoal.planner.search import policy_features

    space, _ = problem
    a = [0.5, 0.3, 0.5, 0.5, 0.05, 0.4, 0.4, 0.4, 0.6, 0.3, 0.5, 0.5, 0.5, 0.5]
    b = list(a)
    b[PER_DEVICE * 1 + 1] = 0.9   # the width share of a worker that is left out: the same policy
    fa, fb = policy_features(space, space.decode_shapes(a)), policy_features(space, space.decode_shapes(b))
    assert fa == fb and len(fa) == 5 * len(space.devices) and all(0.0 <= v <= 1.0 for v in fa)
    assert fa[5:10] == [0.0, 0.0, 0.0, 0.0, 0.5]   # the left-out worker
    c = list(a)
    c[PER_DEVICE * 2] = 1.0   # the last worker keeps every block
    assert policy_features(space, space.decode_shapes(c)) != fa


def test_batched_latency_of_decoded_shapes_matches_the_policy_latency(problem):
    space, evaluator = problem
    points = torch.rand(12, space.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64).tolist()
    points[0][PER_DEVICE] = 0.0                       # a worker left out
    batch = evaluator.latencies([space.decode_shapes(x) for x in points])
    for x, breakdown in zip(points, batch):
        single = evaluator.latency(space.decode(x))
        assert breakdown.total_ms == pytest.approx(single.total_ms)
        assert breakdown.compute_ms == pytest.approx(single.compute_ms)
    assert len(batch[0].compute_ms) == len(space.devices) - 1


def test_known_latency_changes_what_bo_proposes_but_not_what_it_may_propose(problem):
    space, evaluator = problem
    settings = SearchSettings("bo", init=4, iterations=4, seed=1, raw_samples=64, num_restarts=2, prune=False)
    known = run_search(space, _LatencyPsi(evaluator), settings)
    whole = run_search(space, _LatencyPsi(evaluator), dataclasses.replace(settings, known_latency=False))
    assert [r.x for r in known.records[:4]] == [r.x for r in whole.records[:4]]   # same initial design
    assert [r.x for r in known.records[4:]] != [r.x for r in whole.records[4:]]
    assert known.wasted == 0 and len({r.key for r in known.records}) == 8


def test_the_latency_model_charges_the_input_bytes_clients_send(problem):
    """--input: a worker's t2 carries the image as sent (float32, uint8, or PNG/JPEG's mean size)."""
    space, evaluator = problem
    policy = space.decode([0.5] * space.dim)
    saved = evaluator.input_bytes
    try:
        as_float = evaluator.latency(policy)
        evaluator.input_bytes = saved // 4   # uint8 pixels
        as_uint8 = evaluator.latency(policy)
    finally:
        evaluator.input_bytes = saved
    slow = evaluator.devices.devices[2]
    assert as_float.compute_ms == as_uint8.compute_ms and as_float.transfer_ms[0] == as_uint8.transfer_ms[0] == 0
    saved_ms = as_float.transfer_ms[2] - as_uint8.transfer_ms[2]
    assert saved_ms == pytest.approx((saved - saved // 4) * 8 / (slow.link_mbps * 1e6) * 1e3)
