"""Late fees: 1.5% per started month after the due date, never compounding."""
import math

MONTHLY_RATE = 0.015


def late_fee(amount_cents: int, days_overdue: int) -> int:
    if days_overdue <= 0:
        return 0
    months = math.ceil(days_overdue / 30)
    return round(amount_cents * MONTHLY_RATE * months)
