"""Merchants: onboarding, members, API keys, payments, refunds, fees and hosted checkout."""
