"""The benchmark at CI size: it runs, and every method agrees numerically (no timing is asserted)."""

import math

import pytest
import torch

from segcal_lib import bench


@pytest.fixture(scope="module")
def tiny_run():
    return bench.main(["--size", "tiny", "--repeats", "1", "--exact-pixels", "3e5", "--device", "cpu"])


def test_every_method_runs_and_agrees_on_the_same_batches(tiny_run):
    recs = tiny_run["throughput"]
    assert {r["num_classes"] for r in recs} == {19, 150}
    for c in (19, 150):
        by = {r["method"]: r for r in recs if r["num_classes"] == c}
        ref = by["ours exact, pooled"]["ece"]
        assert math.isfinite(ref) and 0 < ref < 1
        for name in ("ours exact, full", "ours, defaults (validated)", "ours, defaults, fused backend"):
            assert by[name]["ece"] == pytest.approx(ref, abs=1e-12), name
        for name in ("ours fast, pooled", "ours fast, full", "naive streaming histogram"):
            assert by[name]["ece"] == pytest.approx(ref, abs=1e-6), name
        if "torchmetrics" in by:  # float32 sums over a few thousand pixels
            assert by["torchmetrics"]["ece"] == pytest.approx(ref, abs=1e-5)
            assert by["torchmetrics"]["x_torchmetrics"] == pytest.approx(1.0)
        for r in by.values():
            assert r["mpx_per_s"] > 0 and r["pixels"] == 2 * math.prod(int(v) for v in r["batch"].split("x"))
            assert math.isfinite(r["peak_extra_mb"]) and r["peak_extra_mb"] >= 0


def test_exactness_on_the_closed_form_stream(tiny_run):
    recs = tiny_run["exactness"]
    ours = {r["method"]: r for r in recs if r["method"].startswith("ours")}
    assert set(ours) == {"ours exact", "ours fast"}
    for r in ours.values():
        assert r["pixels"] >= 3e5 - 2**16 and r["abs_error"] <= 1e-12, r
    assert recs[0]["exact"] == bench.exact_stream(2**16, torch.device("cpu"))[2]  # the batches of --size tiny


def test_exact_stream_closed_form_against_direct_computation():
    p, y, exact = bench.exact_stream(500, torch.device("cpu"))
    conf = p[0, 0, 0].double()
    hit = (y.flatten() == 0).double()
    ece = 0.0
    for k in range(10):  # every confidence is mid-bin, so the bins are the distinct confidences
        inside = (conf >= k / 10) & (conf < (k + 1) / 10)
        if inside.any():
            ece += abs(conf[inside].sum() - hit[inside].sum()).item()
    assert ece / conf.numel() == pytest.approx(exact, abs=1e-12)


def test_calibrator_fit_hook_runs_or_says_why(capsys):
    recs = bench.bench_calibrator_fits(names=("ts", "no_such_calibrator"), pixel_counts=(4096,))
    assert "skipped" in capsys.readouterr().out  # the unknown name, or the whole package if it is absent
    try:
        import segcal_lib.calibrators  # noqa: F401
    except ImportError:
        assert recs == []
    else:
        assert [r["calibrator"] for r in recs] == ["ts"] and recs[0]["fit_s"] > 0


def test_peak_memory_sees_a_torch_allocation():
    with bench.PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(2**23)  # 32 MiB
        del x
    if mem.how.startswith("tracemalloc"):
        pytest.skip("no peak resident-set measurement on this system")
    assert mem.extra >= 24 * 2**20


def test_chapter_exercises_accept_their_solution_and_reject_a_wrong_answer():
    for ex in bench.chapter_exercises(fast_pooled_x19=4.2):
        assert ex.checker(ex.right) is None and ex.checker(ex.wrong) is not None, ex.key


def test_memory_records_of_the_default_meter(tiny_run):
    recs = tiny_run["memory"]
    assert {r["num_classes"] for r in recs} == {19, 150}
    for r in recs:
        assert math.isfinite(r["peak_extra_mb"]) and r["peak_extra_mb"] >= 0 and r["batch_mb"] > 0


def test_drift_mode_full_meter_stays_on_its_one_batch_value():
    out = bench.main(["--size", "tiny", "--drift", "1e4", "2e5", "--device", "cpu"])
    assert {r["method"] for r in out["exactness"]} >= {"ours exact", "ours fast"}
    by = {}
    for r in out["drift"]:
        by.setdefault(r["method"], []).append(r)
    assert set(by) == {"ours exact", "ours fast"}
    for name, recs in by.items():
        assert [r["pixels"] for r in recs] == sorted(r["pixels"] for r in recs) and recs[-1]["pixels"] >= 2e5
        tol = 1e-12 if name == "ours exact" else 1e-6  # fast: float32 per-pixel terms, float64 sums
        for r in recs:
            assert r["max_error"] <= tol * 10, r  # nll and brier are sums of terms up to ~10
        for key in bench.DRIFT_KEYS:  # no drift: the error after many batches is the error after one
            assert abs(recs[-1][key + "_error"] - recs[0][key + "_error"]) <= 1e-12, (name, key)
