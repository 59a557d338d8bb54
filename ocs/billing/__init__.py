"""Billing: invoices from closed CDR files (``ocs bill run``) and reconciliation."""
