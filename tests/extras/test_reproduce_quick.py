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
