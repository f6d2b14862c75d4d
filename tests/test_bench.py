"""`sdo-adv bench --quick`: the result file's schema, and every figure measured."""
import json
import math
import os
import subprocess
import sys

# figures that may be absent by definition: no gradient (skip's embedding cosine), no
# success reached (iterations / seconds to 90%, fidelity and transfer of successful images)
MAY_BE_NONE = {"cosine", "iterations_to_90", "seconds_to_90", "mean_l2", "mean_ssim",
               "sdo-adv:digits-test_efficientnet", "sdo-adv:digits-resnet18-pgd"}


def figures(node, key=None):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from figures(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from figures(v, key)
    else:
        yield key, node


def test_quick_bench(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "sdo_adv.cli.main", "bench", "--quick", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"machine", "versions", "iteration_cost", "gradient_fidelity", "attack_quality", "plots"} <= set(results)
    cost = results["iteration_cost"]["rows"]
    assert {r["estimator"] for r in cost} == {"sdo", "full"}
    for r in cost:
        assert r["nograd_s"] > 0 and r["iteration_s"] > 0 and r["ratio_min"] <= r["ratio_median"] <= r["ratio_max"]
        assert r["calls"]["forward_graph"] == (1 if r["estimator"] == "sdo" else r["T"])
    sdo, full = (next(r for r in cost if r["estimator"] == e) for e in ("sdo", "full"))
    assert sdo["graph_bytes"] < full["graph_bytes"]
    fidelity = {r["estimator"]: r for r in results["gradient_fidelity"]["rows"]}
    assert fidelity["full"]["latent"]["cosine"] > 0.999999 and fidelity["full"]["latent"]["relative_error"] < 1e-9
    quality = results["attack_quality"]["rows"]
    assert [len(r["success_after_iteration"]) for r in quality] == [4, 4]
    for key, value in figures(results):
        if value is None:
            assert key in MAY_BE_NONE, f"{key} has no measured value"
        elif isinstance(value, float):
            assert math.isfinite(value), key
    for name in results["plots"]:
        assert (tmp_path / name).stat().st_size > 5000
    assert "iteration cost" in done.stdout


def test_universal_against_generate_at_equal_wall_clock(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from universal_vs_generate import rates

    universal = {"images_per_second": 2.5, "natural_fooling_rate": 0.5, "clean_accuracy": 0.8, "train_seconds": 300.0}
    generate = {"natural_success_rate": 0.9, "clean_accuracy": 1.0, "seconds_per_image": 3.0}
    r = rates(universal, generate)  # 1.0 against 0.3 natural digits per second
    assert math.isclose(r["break_even_s"], 300 * 1.0 / 0.7)
    assert r["counts"][600] == (300.0, 180.0) and r["counts"][3600][0] > r["counts"][3600][1]
    slow = rates({**universal, "images_per_second": 0.625}, generate)
    assert slow["break_even_s"] is None and slow["counts"][600] == (75.0, 180.0)
