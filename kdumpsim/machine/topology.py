"""The machine's topology as a networkx graph: where IPI and DMA latencies come from.

Nodes: `cpuN` on the APIC bus of `socketS`, sockets chained by inter-socket
links, memory nodes `memN` behind their socket's memory controller, the
`root_complex` on socket 0, PCI/PCIe buses (optionally behind the `iommu`),
and devices on their bus. Every edge carries `latency` (ns) and `bandwidth`
(bytes/s). An IPI's latency and a DMA write's latency and bottleneck bandwidth
are read off the path between the two ends, never from a constant elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from kdumpsim.config.model import ModelConfig

_INF = float("inf")


@dataclass(frozen=True)
class Route:
    latency: int        # ns, sum over the path
    bandwidth: float    # bytes/s, the narrowest edge
    iommu: bool         # the path crosses the IOMMU
    path: tuple[str, ...]


def cpu_socket(cpu: int, cpus: int, sockets: int) -> int:
    """CPUs are numbered socket by socket, as the BIOS enumerates them."""
    per = -(-cpus // sockets)
    return cpu // per


def build_topology(m: ModelConfig) -> nx.Graph:
    g = nx.Graph()
    topo = m.topology
    assert topo.apic_bus_latency is not None      # filled by the era's default
    half_bus = topo.apic_bus_latency // 2   # sender -> APIC bus -> receiver: half each way
    for s in range(m.cpus.sockets):
        g.add_node(f"socket{s}", kind="apic_bus")
        if s:
            g.add_edge(f"socket{s-1}", f"socket{s}", latency=topo.socket_link_latency, bandwidth=_INF)
    for c in range(m.cpus.count):
        g.add_node(f"cpu{c}", kind="cpu")
        g.add_edge(f"cpu{c}", f"socket{cpu_socket(c, m.cpus.count, m.cpus.sockets)}",
                   latency=half_bus, bandwidth=_INF)
    for n in range(m.memory.numa_nodes):
        g.add_node(f"mem{n}", kind="memory")
        g.add_edge(f"mem{n}", f"socket{n % m.cpus.sockets}", latency=0, bandwidth=topo.memory_bandwidth)
    g.add_node("ioapic", kind="ioapic")
    g.add_edge("ioapic", "socket0", latency=half_bus, bandwidth=_INF)
    g.add_node("root_complex", kind="root_complex")
    g.add_edge("root_complex", "socket0", latency=0, bandwidth=_INF)
    if topo.iommu is not None:
        g.add_node("iommu", kind="iommu")
        g.add_edge("iommu", "root_complex", latency=0, bandwidth=_INF)
    for b in topo.buses:
        g.add_node(b.name, kind=b.kind)
        upstream = "iommu" if b.iommu else "root_complex"
        g.add_edge(b.name, upstream, latency=b.latency, bandwidth=b.bandwidth)
    for d in m.devices:
        g.add_node(d.name, kind="device", device_kind=d.kind)
        g.add_edge(d.name, d.bus, latency=0, bandwidth=_INF)
    return g


class Topology:
    """Path queries over the graph, computed once per (source, target)."""

    def __init__(self, m: ModelConfig):
        self.graph = build_topology(m)
        self._bus_node = {b.name: b.numa_node for b in m.topology.buses}
        self._routes: dict[tuple[str, str], Route] = {}
        self._ipi_from: dict[str, dict[str, int]] = {}

    def bus_node(self, bus: str) -> int:
        """The memory node a bus hangs off (a driver allocates there first)."""
        return self._bus_node[bus]

    def ipi_latency(self, src_cpu: int, dst_cpu: int) -> int:
        """Delivery time of an IPI from one CPU's local APIC to another's."""
        src = f"cpu{src_cpu}"
        lengths = self._ipi_from.get(src)
        if lengths is None:
            lengths = nx.single_source_dijkstra_path_length(self.graph, src, weight="latency")
            self._ipi_from[src] = lengths
        return int(lengths[f"cpu{dst_cpu}"])

    def route(self, src: str, dst: str) -> Route:
        """Latency, bottleneck bandwidth and IOMMU crossing of the path src -> dst."""
        key = (src, dst)
        if key not in self._routes:
            path = nx.shortest_path(self.graph, src, dst, weight="latency")
            edges = [self.graph.edges[a, b] for a, b in zip(path, path[1:])]
            self._routes[key] = Route(
                latency=int(sum(e["latency"] for e in edges)),
                bandwidth=min((e["bandwidth"] for e in edges), default=_INF),
                iommu="iommu" in path,
                path=tuple(path),
            )
        return self._routes[key]
