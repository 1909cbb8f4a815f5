"""``python -m qverify``: the ``qverify`` command."""
import sys

from qverify.client.cli import main

sys.exit(main())
