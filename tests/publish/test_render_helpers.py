"""The README helpers that pick and rank the adaptive-attack numbers (fsl.publish.render)."""
import math

import pytest

from fsl.publish.render import adaptive_attacks, adaptive_rows, fit_attack, interval, plain_attacks


def _metrics():
    m = {}
    aurocs = {  # attack -> detector -> AUROC
        "pgd_03": {"a": 0.99, "b": 0.80}, "cw": {"a": 0.70, "b": 0.95},
        "adaptive_a": {"a": 0.10, "b": 0.60}, "adaptive_b": {"a": 0.90, "b": 0.40},
    }
    for att, per in aurocs.items():
        m[f"adv/{att}/success_rate"] = 1.0
        m[f"adv/{att}/seconds"] = 2.0 if att.startswith("adaptive") else 1.0
        for d, v in per.items():
            m[f"adv/{att}/auroc/{d}"] = v
            m[f"adv/{att}/auroc_lo/{d}"], m[f"adv/{att}/auroc_hi/{d}"] = v - 0.05, min(v + 0.05, 1.0)
            m[f"adv/{att}/robust_acc_at_5fpr/{d}"] = v / 2
            m[f"adv/{att}/clean_acc_lost_at_5fpr/{d}"] = 0.04
    return m


def test_adaptive_rows_rank_by_the_auroc_under_the_own_adaptive_attack():
    m = _metrics()
    assert adaptive_attacks(m) == ["adaptive_a", "adaptive_b"] and plain_attacks(m) == ["cw", "pgd_03"]
    rows = adaptive_rows(m, "pgd_03")
    assert [r["detector"] for r in rows] == ["b", "a"]  # own adaptive AUROC 0.40 > 0.10
    b, a = rows
    assert (b["auroc"], b["plain"], b["worst_attack"], b["worst"]) == (0.40, 0.80, "pgd_03", 0.80)
    assert (a["auroc"], a["plain"], a["worst_attack"], a["worst"]) == (0.10, 0.99, "cw", 0.70)
    assert (a["robust"], a["robust_plain"], a["lost"], a["seconds"]) == (0.05, 0.495, 0.04, 2.0)
    assert math.isclose(a["lo"], 0.05) and math.isclose(a["hi"], 0.15)


def test_interval_formats_the_bootstrap_interval_and_says_when_a_number_is_missing():
    m = _metrics()
    assert interval(m, "cw", "b") == "0.950 [0.900, 1.000]"
    assert interval(m, "cw", "zzz") == "n/a"
    del m["adv/cw/auroc_lo/b"]
    assert interval(m, "cw", "b") == "0.950"


@pytest.mark.parametrize("adv,expected", [
    ({"attacks": {}}, "pgd_03"),                                      # the data set's suite: largest L-inf PGD
    ({"attacks": {}, "adaptive": {"like": "pgd_01"}}, "pgd_01"),      # the adaptive budget's entry
    ({"attacks": {}, "supervised": {"attack": "cw"}}, "cw"),           # named explicitly
])
def test_fit_attack_reads_the_composed_config(adv, expected):
    manifest = {"configs": {"analyze": {"analysis": {"adversarial": adv}, "attacks": {}, "data": {}},
                            "classifier": {"data": {"name": "fashion_mnist"}}}}
    assert fit_attack(manifest) == expected


def test_caught_by_others_takes_the_best_detector_other_than_the_target():
    from fsl.publish.render import caught_by_others

    rows = caught_by_others(_metrics())
    assert [(r["attack"], r["detector"], r["auroc"]) for r in rows] == [("adaptive_a", "b", 0.60),
                                                                         ("adaptive_b", "a", 0.90)]
