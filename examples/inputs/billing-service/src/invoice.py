"""Invoice computation: usage lines in, an invoice total out (integer cents)."""
from decimal import Decimal, ROUND_HALF_EVEN

VAT_RATE = Decimal("0.19")


def line_amount(quantity: int, unit_price_cents: int, discount_pct: int = 0) -> int:
    """One invoice line in cents, rounded half-even after the discount."""
    gross = Decimal(quantity) * Decimal(unit_price_cents)
    net = gross * (Decimal(100 - discount_pct) / Decimal(100))
    return int(net.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def invoice_total(lines, vat_exempt: bool = False) -> int:
    subtotal = sum(line_amount(*line) for line in lines)
    if vat_exempt:
        return subtotal
    vat = (Decimal(subtotal) * VAT_RATE).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    return subtotal + int(vat)
