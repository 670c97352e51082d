"""Calls easeld the way a stock grpcio client does: a default channel on the Unix socket, no
options (grpcio then sends the socket path, percent-encoded, as :authority).

Usage: grpcio_default_channel.py SOCKET GENERATE_REQUEST_HEX

Messages travel as raw bytes (the Rust test encodes and decodes them with the project's own
types), so nothing but grpcio is needed. Prints one JSON object:
{"grpcio": version, "health": hex, "status": hex, "events": [hex, ...]} or, when a call fails,
{"error": {"call": name, "code": "...", "details": "..."}}.
"""

import json
import sys

import grpc


def raw(channel, method, streaming=False):
    make = channel.unary_stream if streaming else channel.unary_unary
    return make(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def main():
    socket, request_hex = sys.argv[1], sys.argv[2]
    result = {"grpcio": grpc.__version__}
    with grpc.insecure_channel("unix://" + socket) as channel:
        calls = [
            ("health", lambda: raw(channel, "/grpc.health.v1.Health/Check")(b"", timeout=30).hex()),
            ("status", lambda: raw(channel, "/easel.v1.Easel/GetStatus")(b"", timeout=30).hex()),
            (
                "events",
                lambda: [
                    e.hex()
                    for e in raw(channel, "/easel.v1.Easel/Generate", streaming=True)(
                        bytes.fromhex(request_hex), timeout=300
                    )
                ],
            ),
        ]
        for name, call in calls:
            try:
                result[name] = call()
            except grpc.RpcError as error:
                result = {"error": {"call": name, "code": error.code().name, "details": error.details()}}
                break
    print(json.dumps(result))


if __name__ == "__main__":
    main()
