"""qverify.agent: the board daemon ``qverify-agent`` (gRPC), its model store and backends.

Imports only grpcio, protobuf, numpy and qverify's own runtime parts: boards install
nothing else (a test checks ``sys.modules`` of a running agent).
"""
from qverify._version import __version__

PROTOCOL_VERSION = "1.1"
DEFAULT_PORT = 7060
