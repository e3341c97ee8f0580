"""A Python gRPC client of floodgate's Envoy rate limit service.

Usage: rls_client.py PROTO_DIR HOST:PORT [quota]

Generates stubs from the RLS protos with grpc_tools, then checks against a server loaded with
the `valid` Envoy fixtures: OK then OVER_LIMIT, one bucket per distinct value, and statuses
in request order. With `quota`, against the `quota` fixtures and response_dynamic_metadata:
quota descriptors refuse only all together, and the metadata of the passing ones is returned.
Exits 0 and prints "ok" when every check holds.
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
    quota = sys.argv[3:] == ["quota"]
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
            if quota:
                check_quota(stub, rls, common)
                print("ok")
                return

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


def check_quota(stub, rls, common):
    ok, over = rls.RateLimitResponse.OK, rls.RateLimitResponse.OVER_LIMIT

    def ask(*entries):
        descriptors = [
            common.RateLimitDescriptor(entries=[common.RateLimitDescriptor.Entry(key=k, value=v)])
            for k, v in entries
        ]
        return stub.ShouldRateLimit(
            rls.RateLimitRequest(domain="rl", descriptors=descriptors), timeout=10
        )

    # quota: 1 per minute, quota mode. One over and one under: OK, with the over status.
    assert ask(("quota", "py-a")).overall_code == ok
    some = ask(("quota", "py-a"), ("quota", "py-b"))
    assert some.overall_code == ok, some
    assert [s.code for s in some.statuses] == [over, ok], some
    assert not any(h.key == "retry-after" for h in some.response_headers_to_add), some
    # Both over: OVER_LIMIT, with Retry-After.
    both = ask(("quota", "py-a"), ("quota", "py-b"))
    assert both.overall_code == over, both
    assert any(h.key == "retry-after" for h in both.response_headers_to_add), both
    # An ordinary descriptor over refuses on its own.
    assert ask(("regular", "py-c")).overall_code == ok
    assert ask(("regular", "py-c"), ("quota", "py-d")).overall_code == over
    # The metadata of the passing descriptors, merged.
    routed = ask(("service", "service_1"), ("service", "service_2"))
    meta = routed.dynamic_metadata
    assert meta["domain"] == "rl", meta
    assert meta["metadata"]["service_with_quota"]["name"] == "service_1", meta
    assert list(meta["descriptors"][0]["entries"]) == ["service=service_1"], meta


if __name__ == "__main__":
    main()
