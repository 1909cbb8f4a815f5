"""``qverify-agent``: the board daemon (not built yet; it arrives with the agent issue)."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("qverify-agent: not built yet: the board daemon is not part of this release; "
          "use 'qverify compile' and the simulator API for now", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
