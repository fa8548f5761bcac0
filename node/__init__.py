"""The ledger node process: CLI, and later the runtime, transport and HTTP API."""
