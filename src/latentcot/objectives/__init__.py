"""Losses as pure functions (LM loss, distillation, RLOO), testable with hand-computed numbers."""
