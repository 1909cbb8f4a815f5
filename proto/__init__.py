"""qverify.v1: the wire contract and compiled-model format (generated protobuf code)."""
