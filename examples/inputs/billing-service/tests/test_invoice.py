from src.invoice import invoice_total, line_amount


def test_half_even():
    assert line_amount(1, 250, 50) == 125
    assert line_amount(1, 5, 50) == 2   # 2.5 rounds to even


def test_vat():
    assert invoice_total([(10, 1000, 0)]) == 11900
