"""A permissioned BFT ledger for industrial data: the pure library.

Nothing in this package opens a socket, runs an event loop or reads the wall clock; the
node (package ``node``) wires it to the world. See ``../shared/SPEC.md`` for the bytes.
"""

__version__ = "0.1.0"
