"""Token authentication as a gRPC server interceptor: nothing runs without the token."""
from __future__ import annotations

import hmac

import grpc

# Health checks must work for load balancers and farm health probes without the token.
OPEN_METHODS_PREFIX = ("/grpc.health.v1.Health/",)


class TokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith(OPEN_METHODS_PREFIX):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = metadata.get("authorization", "")
        if isinstance(given, str):
            given = given.encode()
        if hmac.compare_digest(given, self._expected):
            return continuation(handler_call_details)
        return _deny(handler_call_details, "missing" if not given else "wrong")


# Methods whose request (PushModel) or response (Run) is a stream.
_CLIENT_STREAMING = ("/PushModel",)
_SERVER_STREAMING = ("/Run",)


def _deny(details, what: str):
    """A handler of the method's own shape that aborts before the servicer is reached."""
    message = (f"{what} token: this agent requires 'authorization: Bearer <token>' metadata; "
               "pass the board's token (qverify --token, or the agent's --token-file)")

    def abort(request_or_iterator, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    method = details.method or ""
    if method.endswith(_CLIENT_STREAMING):
        return grpc.stream_unary_rpc_method_handler(abort)
    if method.endswith(_SERVER_STREAMING):
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)
