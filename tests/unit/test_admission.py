from __future__ import annotations

from comfybento.scheduling.admission import Admission


def test_admission_is_bounded_per_key():
    admission = Admission(limit=2, retry_after_s=3)
    assert admission.try_enter("a") and admission.try_enter("a")
    assert admission.try_enter("a") is None
    assert admission.try_enter("b")
    admission.leave("a")
    assert admission.try_enter("a") and admission.in_flight("a") == 2
