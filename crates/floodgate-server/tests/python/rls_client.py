"""A Python gRPC client of floodgate's Envoy rate limit service.

Usage: rls_client.py PROTO_DIR HOST:PORT

Generates stubs from the RLS protos with grpc_tools, then checks against a server loaded with
the `valid` Envoy fixtures: OK then OVER_LIMIT, one bucket per distinct value, and statuses
in request order. Exits 0 and prints "ok" when every check holds.
"""

import importlib
import os
import sys
import tempfile


def generate(proto_dir, out):
    import grpc_tools
    from grpc_tools import protoc

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = [
        "envoy/type/v3/ratelimit_unit.proto",
        "envoy/config/core/v3/base.proto",
        "envoy/extensions/common/ratelimit/v3/ratelimit.proto",
        "envoy/service/ratelimit/v3/rls.proto",
    ]
    for name in files:
        code = protoc.main(
            ["protoc", "-I" + proto_dir, "-I" + include, "--python_out=" + out,
             "--grpc_python_out=" + out, os.path.join(proto_dir, name)]
        )
        if code != 0:
            raise SystemExit("protoc failed on %s" % name)
    # Make the generated tree importable as packages.
    for root, _dirs, _files in os.walk(os.path.join(out, "envoy")):
        open(os.path.join(root, "__init__.py"), "a").close()
    sys.path.insert(0, out)


def main():
    proto_dir, target = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as out:
        generate(proto_dir, out)
        import grpc

        rls = importlib.import_module("envoy.service.ratelimit.v3.rls_pb2")
        rls_grpc = importlib.import_module("envoy.service.ratelimit.v3.rls_pb2_grpc")
        common = importlib.import_module("envoy.extensions.common.ratelimit.v3.ratelimit_pb2")
        ok, over = rls.RateLimitResponse.OK, rls.RateLimitResponse.OVER_LIMIT

        def descriptor(*entries):
            return common.RateLimitDescriptor(
                entries=[common.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
            )

        with grpc.insecure_channel(target) as channel:
            stub = rls_grpc.RateLimitServiceStub(channel)

            def ask(*descriptors):
                return stub.ShouldRateLimit(
                    rls.RateLimitRequest(domain="test-domain", descriptors=list(descriptors)),
                    timeout=10,
                )

            # key3: 1 request per hour, one bucket per distinct value.
            first = ask(descriptor(("key3", "py-a")))
            assert first.overall_code == ok, first
            assert first.statuses[0].current_limit.requests_per_unit == 1, first
            assert first.statuses[0].current_limit.unit == rls.RateLimitResponse.RateLimit.HOUR
            second = ask(descriptor(("key3", "py-a")))
            assert second.overall_code == over, second
            assert second.statuses[0].code == over, second
            other = ask(descriptor(("key3", "py-b")))
            assert other.overall_code == ok, "another value, another bucket: %s" % other

            mixed = ask(
                descriptor(("key2", "value2")),
                descriptor(("key3", "py-a")),
                descriptor(("nothing", "here")),
                descriptor(("key1", "value1"), ("subkey1", "subvalue1")),
            )
            assert mixed.overall_code == over, mixed
            codes = [s.code for s in mixed.statuses]
            assert codes == [ok, over, ok, ok], codes
            limits = [s.current_limit.requests_per_unit for s in mixed.statuses]
            assert limits == [30, 1, 0, 10], limits
            assert not mixed.statuses[2].HasField("current_limit")
            headers = {h.key: h.value for h in mixed.response_headers_to_add}
            assert "ratelimit" in headers and "retry-after" in headers, headers
    print("ok")


if __name__ == "__main__":
    main()
