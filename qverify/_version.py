"""qverify's version: a leaf module every part may import (the agent and the simulator read it
here, never through the ``qverify`` package). It matches ``version`` in pyproject.toml; a test
checks that."""
__version__ = "0.1.0"
