"""Emulated links: a worker in its own network namespace behind a shaped veth pair.

`NetnsLink` creates a namespace, a veth pair between it and this namespace
(a private /30 in 10.213.0.0/16), and shapes both directions with `tc tbf`
at the link rate. One-way delay uses `tc netem` where the kernel has it;
where it does not (CONFIG_NET_SCH_NETEM unset, as on some CI kernels), a
small userspace proxy on 127.0.0.1 forwards the connection into the
namespace and holds every chunk for the delay in each direction.

Traffic goes only to 127.0.0.1 and to namespaces created here. Everything is
removed on exit, also when setup fails half-way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

from shoal.errors import ConfigError, RuntimeServiceError
from shoal.runtime import shoal_pb2 as pb
from shoal.runtime.cluster import Placement
from shoal.runtime.delayproxy import DelayProxy
from shoal.runtime.links import features_request

SUBNET = "10.213"
WORKER_PORT = 50051  # a fresh namespace has all its ports free


def netns_unavailable_reason() -> str | None:
    """None when namespaces, veth pairs and tc can be used here, else one line saying why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the `{tool}` command (iproute2) is missing"
    name = f"shoal-probe-{uuid.uuid4().hex[:6]}"
    try:
        _run("ip", "netns", "add", name)
    except RuntimeServiceError as exc:
        return f"cannot create a network namespace: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    return None


def sweep_stale_namespaces() -> list[str]:
    """Delete `shoal-<hint>-<pid>-<tag>` namespaces whose creating process is gone (a killed run)."""
    removed = []
    for line in _run("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        parts = name.split("-")
        if len(parts) >= 4 and parts[0] == "shoal" and parts[-2].isdigit() and not Path(f"/proc/{parts[-2]}").exists():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            removed.append(name)
    return removed


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeServiceError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _free_subnet() -> int:
    """A third octet whose 10.213.X.0/30 no interface of this namespace uses."""
    used = _run("ip", "-4", "-o", "addr", "show")
    for _ in range(64):
        octet = int.from_bytes(os.urandom(1), "little")
        if f"{SUBNET}.{octet}." not in used:
            return octet
    raise RuntimeServiceError(f"no free /30 in {SUBNET}.0.0/16")


class NetnsLink:
    """A namespace for one worker, linked to this namespace at `rate_mbit` with `delay_ms` one way.

    Args:
        rate_mbit: Link rate in Mbit/s, each direction.
        delay_ms: One-way delay in ms, each direction (0: none).
        hint: Short name part (the device), for `ip netns list`.
        force_proxy: Use the userspace delay proxy even where netem exists, and even with no
            delay yet (so that `change` can add one later).
    """

    def __init__(self, rate_mbit: float, delay_ms: float = 0.0, hint: str = "dev", force_proxy: bool = False) -> None:
        if rate_mbit <= 0 or delay_ms < 0:
            raise ConfigError(f"need rate_mbit > 0 and delay_ms >= 0, got {rate_mbit!r} and {delay_ms!r}")
        self.rate_mbit = rate_mbit
        self.delay_ms = delay_ms
        tag = uuid.uuid4().hex[:6]
        self.namespace = f"shoal-{''.join(c for c in hint if c.isalnum())[:12]}-{os.getpid()}-{tag}"
        self.host_if, self.peer_if = f"shv{tag}h", f"shv{tag}p"
        self.force_proxy = force_proxy
        self.delay_mode: str = "none"
        self.proxy: DelayProxy | None = None
        self.inner_ip = self.outer_ip = ""

    @property
    def prefix(self) -> tuple[str, ...]:
        """Command prefix that runs a program inside the namespace."""
        return ("ip", "netns", "exec", self.namespace)

    def placement(self) -> Placement:
        """Where `LocalCluster` runs the worker and how the central node reaches it."""
        connect = f"127.0.0.1:{self.proxy.port}" if self.proxy is not None else f"{self.inner_ip}:{WORKER_PORT}"
        return Placement(bind_host=self.inner_ip, bind_port=WORKER_PORT, connect=connect, prefix=self.prefix)

    def __enter__(self) -> NetnsLink:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create(self) -> None:
        sweep_stale_namespaces()
        octet = _free_subnet()
        self.outer_ip, self.inner_ip = f"{SUBNET}.{octet}.1", f"{SUBNET}.{octet}.2"
        ns = self.namespace
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
        _run("ip", "link", "set", self.peer_if, "netns", ns)
        _run("ip", "addr", "add", f"{self.outer_ip}/30", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        _run("ip", "-n", ns, "addr", "add", f"{self.inner_ip}/30", "dev", self.peer_if)
        _run("ip", "-n", ns, "link", "set", self.peer_if, "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        netem = self.delay_ms > 0 and not self.force_proxy and self._shape_with_netem()
        if not netem:
            for where in ((), self.prefix):
                _run(*where, "tc", "qdisc", "add", "dev", self._dev(where), "root", *self._tbf())
        if (self.delay_ms > 0 or self.force_proxy) and not netem:
            self.proxy = DelayProxy((self.inner_ip, WORKER_PORT), self.delay_ms)
            self.proxy.start()
            self.delay_mode = "proxy"

    def _dev(self, where: tuple[str, ...]) -> str:
        return self.peer_if if where else self.host_if

    def _tbf(self) -> list[str]:
        """tbf at the link rate; the peak rate (5% above) keeps a full bucket from bursting at line speed."""
        rate_bps = self.rate_mbit * 1e6
        burst = max(3200, int(rate_bps / 8 / 500))  # two frames, or 2 ms at the rate
        return ["tbf", "rate", f"{int(rate_bps)}bit", "burst", str(burst), "latency", "2000ms",
                "peakrate", f"{int(rate_bps * 1.05)}bit", "mtu", "1600"]

    def _shape_with_netem(self) -> bool:
        """netem delay with tbf under it on both ends; False (nothing added) where netem is missing."""
        try:
            for where in ((), self.prefix):
                dev = self._dev(where)
                _run(*where, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "delay",
                     f"{self.delay_ms}ms", "limit", "10000")
                _run(*where, "tc", "qdisc", "add", "dev", dev, "parent", "1:", "handle", "2:", *self._tbf())
        except RuntimeServiceError:
            for where in ((), self.prefix):
                subprocess.run([*where, "tc", "qdisc", "del", "dev", self._dev(where), "root"],
                               capture_output=True, check=False)
            return False
        self.delay_mode = "netem"
        return True

    def change(self, rate_mbit: float | None = None, delay_ms: float | None = None) -> None:
        """Reshape the live link (a link that degrades or recovers during a run): new rate and/or
        one-way delay, both directions, connections kept.

        Raises:
            ConfigError: a delay asked of a link made without one and without netem or the proxy
                (make it with `force_proxy=True`), or a non-positive rate.
        """
        rate = self.rate_mbit if rate_mbit is None else rate_mbit
        delay = self.delay_ms if delay_ms is None else delay_ms
        if rate <= 0 or delay < 0:
            raise ConfigError(f"need rate_mbit > 0 and delay_ms >= 0, got {rate!r} and {delay!r}")
        if delay > 0 and self.delay_mode == "none" and self.proxy is None:
            raise ConfigError(f"{self.namespace} was made without a delay: make it with force_proxy=True "
                              "to add one later")
        self.rate_mbit = rate
        for where in ((), self.prefix):
            dev = self._dev(where)
            if self.delay_mode == "netem":
                _run(*where, "tc", "qdisc", "change", "dev", dev, "root", "handle", "1:", "netem", "delay",
                     f"{delay}ms", "limit", "10000")
                _run(*where, "tc", "qdisc", "change", "dev", dev, "parent", "1:", "handle", "2:", *self._tbf())
            else:
                _run(*where, "tc", "qdisc", "change", "dev", dev, "root", *self._tbf())
        if self.proxy is not None:
            self.proxy.delay_s = delay / 1e3
            self.delay_mode = "proxy"
        self.delay_ms = delay

    def close(self) -> None:
        """Stop the proxy and delete the namespace (which deletes both veth ends); best effort."""
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, check=False)
        if Path(f"/sys/class/net/{self.host_if}").exists():
            subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)

    def describe(self) -> str:
        delay = f", {self.delay_ms:g} ms one way ({self.delay_mode})" if self.delay_ms else ""
        return f"{self.namespace}: {self.rate_mbit:g} Mbit/s (tbf){delay}"


def wire_bytes(input_shape: Sequence[int], feature_width: int, batch: int = 1,
               source: pb.PredictRequest | None = None) -> tuple[int, int]:
    """gRPC payload bytes of one Features call: (request with the input, reply with the features).

    The input is `source`'s as a client sent it (float32, uint8 or PNG/JPEG), else a float32
    batch of `input_shape`. Protobuf size plus gRPC's 5-byte length prefix; HTTP/2 and TCP/IP
    framing (~100-200 bytes per message) are not counted.
    """
    c, h, w = input_shape
    if source is None:
        source = pb.PredictRequest(input=pb.Tensor(data=bytes(4 * batch * c * h * w), dtype="float32",
                                                   shape=[batch, c, h, w]))
    request = features_request(source, 1 << 40, "f" * 16, "device-name")
    reply = pb.FeaturesReply(request_id=1 << 40, compute_ms=1.0, queue_ms=1.0, decode_ms=1.0, device="device-name",
                             features=pb.Tensor(data=bytes(4 * batch * feature_width), dtype="float32",
                                                shape=[batch, feature_width]))
    return request.ByteSize() + 5, reply.ByteSize() + 5
