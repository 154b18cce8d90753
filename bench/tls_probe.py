#!/usr/bin/env python3
"""Sequential TLS handshakes against a gateway, timed from the client.

One handshake at a time (TCP connect + TLS 1.3 handshake, then close),
2 ms apart, so the figures hold no client-side queueing: what the gateway
and the kernel take. Used to check the gateway's share of honest logins
under a hostile-client attack (BENCHMARKS.md, "Hostile clients").

    bench/tls_probe.py CA_PEM PORT [N] [--json]
"""
import json
import socket
import ssl
import sys
import time


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    ca, port = sys.argv[1], int(sys.argv[2])
    args = [a for a in sys.argv[3:] if a != "--json"]
    n = int(args[0]) if args else 1000
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as s:
            with ctx.wrap_socket(s, server_hostname="localhost"):
                ms.append((time.perf_counter() - t) * 1000)
        time.sleep(0.002)
    ms.sort()

    def q(p: float) -> float:
        return ms[min(len(ms) - 1, int(p * len(ms)))]

    slow = sum(1 for x in ms if x > 3)
    if "--json" in sys.argv:
        print(json.dumps({"handshakes": n, "p50_ms": q(.5), "p90_ms": q(.9), "p99_ms": q(.99),
                          "p999_ms": q(.999), "max_ms": ms[-1], "over_3ms": slow}))
        return
    print(f"{n} TLS handshakes: p50 {q(.5):.3f} p90 {q(.9):.3f} p99 {q(.99):.3f} "
          f"p99.9 {q(.999):.3f} max {ms[-1]:.3f} ms; over 3 ms: {slow}")


if __name__ == "__main__":
    main()
