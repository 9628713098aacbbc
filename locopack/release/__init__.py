"""A release folder's contract: its layout, records, card, history, signature and audit."""
