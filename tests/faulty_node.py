"""A real node process with test faults installed: what the integration tests start instead
of ``ledger node run DIR`` when they ask for a fault (``LEDGER_TEST_*`` in the environment,
see ``tests/faults.py``). The shipped command has no such switch.

    python -m tests.faulty_node DIR
"""

from __future__ import annotations

import logging
import sys

from node.config import NodeConfig
from node.runtime import Node, serve_forever
from tests.faults import TestFaults


def install(node: Node) -> None:
    node.faults = TestFaults.from_env(node.key, node.config.index)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_forever(NodeConfig.load(argv[0]), install)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
