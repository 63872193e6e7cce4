"""Cardholders' money: cards, top-ups, transfers, withdrawals and their payouts, and what a
cardholder sees."""
