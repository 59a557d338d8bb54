"""An invoice as the billing run builds it and the renderers write it."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SERVICE_TEXT", "Invoice", "Line"]

SERVICE_TEXT = {"data": ("Data", "bytes"), "voice": ("Voice calls", "seconds"),
                "sms": ("SMS", "messages"), "mms": ("MMS", "messages"),
                "time": ("Connected time", "seconds")}


@dataclass(slots=True)
class Line:
    kind: str  # fee | allowance | usage | adjustment | credit | discount | tax
    description: str
    quantity: int
    amount: int


@dataclass(slots=True)
class Invoice:
    invoice_id: str
    msisdn: str
    period: str
    plan: str
    plan_name: str
    currency: str
    lines: list[Line]
    subtotal: int
    tax: int
    total: int
    due_date: str
    issue_date: str
    tax_name: str
    tax_rate: int
    prepaid_usage: list[tuple[str, int, int]] = field(default_factory=list)
    """(service, units, charged) already paid from the prepaid balance."""
    customer_name: str = ""
    billing_address: str = ""
    issuer_name: str = ""
    issuer_address: str = ""
    issuer_tax_id: str = ""
