"""An independent implementation of the SPEC's write side, for cross-implementation tests.

Nothing in this package imports ``ledger`` or ``node``: it is written from SPEC.md alone with
the standard library, ``msgpack`` and PyNaCl, so a chain it writes proves that our auditor
accepts (and rejects) bytes it did not produce itself.
"""
