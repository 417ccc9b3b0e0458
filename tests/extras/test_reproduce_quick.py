"""Smoke test of the JALA-EM reproduction's --quick mode: it runs, writes its files, numbers are sane."""

import json

from emreason.extras.reproduce import jala_em


def test_jala_em_quick_writes_results(tmp_path):
    payload = jala_em.main(["--quick", "--output", str(tmp_path)])
    assert (tmp_path / "model_order_mae.png").stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["n_cells"] == 2 and set(saved["ours"]) == {"3,100", "7,100"}
    for cell in saved["ours"].values():
        for method in ("JALA-EM", "exact evidence", "BIC"):
            assert 0.0 <= cell[method]["mae"] <= 10.0
    assert payload["jala_le_bic_cells"] <= payload["n_cells"]


def test_diffusion_molrg_quick_writes_results_and_separates_memorization(tmp_path):
    from emreason.extras.reproduce import diffusion_molrg

    result = diffusion_molrg.main(["--quick", "--output", str(tmp_path)])
    assert (tmp_path / "diffusion_molrg.png").stat().st_size > 0
    saved = json.loads((tmp_path / "diffusion_molrg.json").read_text())
    models = saved["trained"]["models"]
    assert set(models) == {"generalizing", "memorizing"}
    gen, memo = models["generalizing"], models["memorizing"]
    assert gen["test_over_train_mse_at_sigma1"] < 1.3 < 3.0 < memo["test_over_train_mse_at_sigma1"]
    assert memo["copy_fraction_at_sigma1"] > gen["copy_fraction_at_sigma1"]
    # the memorizer's features never get better with noise (seed 0); both curves end near chance 1/3
    assert memo["shape"]["monotone_decreasing_within_tol"]
    for m in (gen, memo):
        assert m["probe_accuracy"][-1] < 0.45 and max(m["probe_accuracy"]) > 0.45
    assert result["exact"]["summary"]["true (generalizing)"]["snr"]["unimodal_interior_peak"]


def test_pessimistic_integration_quick_writes_five_scenarios(tmp_path):
    from emreason.extras.reproduce import pessimistic_integration

    payload = pessimistic_integration.main(["--quick", "--output", str(tmp_path)])
    assert (tmp_path / "mse_by_scenario.png").stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved["summary"]) == list(pessimistic_integration.SCENARIOS)
    for cell in saved["summary"].values():
        assert cell["best_baseline"] != "Pessi" and cell["pessi_over_best_se"] >= 0
        # EDO's n_e x MSE is ~4.3 in every scenario (it ignores the historical data).
        assert 1.0 < cell["mse_times_n_e"]["EDO"] < 10.0
    assert 0 <= payload["n_within_10_percent"] <= 5


def test_data_attribution_quick_writes_results(tmp_path):
    import math

    from emreason.extras.reproduce import data_attribution

    result = data_attribution.main(["--quick", "--output", str(tmp_path), "--threads", "1"])
    assert (tmp_path / "data_attribution.png").stat().st_size > 0
    saved = json.loads((tmp_path / "data_attribution.json").read_text())
    assert set(saved["agreement"]) == set(data_attribution.ATTRIBUTION_METHODS)
    for rows in saved["agreement"].values():
        assert len(rows) == len(saved["config"]["checkpoints"]) == 3
        for row in rows:
            assert math.isfinite(row["cosine"]) and -1.0 <= row["cosine"] <= 1.0
    # the converged final model sits below the further-training stability limit 2 / lr
    assert result["final_model"]["sharpness"] < result["final_model"]["stability_limit_2_over_lr"]["further"]
    assert all(s > 0 for s in saved["gold_snr"])
    pairing = saved["pairing_check"]
    assert pairing["paired"]["mean_se"][1] < pairing["unpaired"]["mean_se"][1]


def test_runner_times_each_script_and_rejects_unknown_names(tmp_path):
    import pytest
    from emreason.extras.reproduce.__main__ import main as run_all

    summary = run_all(["--quick", "--only", "heterogeneous_corruption,jala_em", "--output", str(tmp_path)])
    assert [r["method"] for r in summary["rows"]] == ["heterogeneous_corruption", "jala_em"]
    for row in summary["rows"]:
        assert row["exit_status"] == 0, (tmp_path / row["method"] / "run.log").read_text()[-2000:]
        assert row["wall_s"] > 0 and row["cpu_s"] > 0
        assert any(p.suffix == ".json" for p in (tmp_path / row["method"]).iterdir())
    saved = json.loads((tmp_path / "timings.json").read_text())
    assert saved["total_cpu_s"] == pytest.approx(sum(r["cpu_s"] for r in saved["rows"]), abs=0.2)
    with pytest.raises(SystemExit) as error:
        run_all(["--only", "jala_em,no_such_method", "--output", str(tmp_path)])
    assert error.value.code == 2
