"""Attacks of issue 11 against real node processes (``python -m tests.attack.run``)."""
