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
