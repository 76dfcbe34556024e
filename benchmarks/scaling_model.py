"""A first-order scaling model for pipeline-parallel serving across nodes (issue 7).

Pure functions plus a CLI. Given a model's shape, per-stage compute time, the link between
nodes (bandwidth, latency) and the overlay's encryption cost per byte, predict decode
throughput, TPOT and TTFT against the number of nodes N (= pipeline stages).

Assumptions (each is a parameter; README.md documents them with the anchors):
- Layers split evenly; a stage's step time is (full-model step time)/N plus a fixed
  per-stage overhead (scheduling, serialisation, the collective call).
- Activation bytes per token at each stage boundary = hidden_size x bytes_per_elem x
  boundary_tensors. vLLM's Llama-family models send TWO tensors between stages
  (IntermediateTensors {"hidden_states", "residual"}, vllm/model_executor/models/llama.py),
  so with bf16: 4096 x 2 B x 2 = 16 KiB for 8B-class, 8192 x 2 x 2 = 32 KiB for 70B-class,
  16384 x 2 x 2 = 64 KiB for 405B-class. (One bf16 tensor would be 8/16/32 KiB: the issue's
  16/32 KiB anchors are the two-tensor figure, equivalently one fp32 tensor.)
- A hop costs latency + bytes x (8 / bandwidth + encryption_s_per_byte). WireGuard's cost is
  modelled as seconds per byte on top of the raw link, so a measured overlay-vs-veth
  throughput pair gives it directly: enc = 1/overlay_Bps - 1/veth_Bps (see encryption_cost).
  Measured, not assumed (issue 18): the CLI reads benchmarks/results/hop.json (written by
  benchmarks/hop_bench.py: wireguard-go vs veth ping-pong of pipeline-sized messages) and takes
  its encryption cost per byte (largest message's throughput pair) and the overlay's added
  one-way latency (1-token messages, added to --latency-ms). Only without that file, or with an
  explicit --overlay-gbit, does it fall back to the assumed 10 Gbit/s encrypted stream and no
  added latency (ASSUMED_OVERLAY_GBIT).
- Decode step time of the full model for a batch b is affine: t(b) = t_fixed + b x t_seq
  (t_fixed: reading the weights, memory-bound; t_seq: per-sequence compute).
- Decode: the c concurrent sequences are split into m = min(N, c) micro-batches, all in
  flight (vLLM's pipeline keeps one batch per stage in flight). A micro-batch's next token
  needs its whole trip through the pipeline, and no stage or link can serve two micro-batches
  at once, so the cycle time is max(trip, m x bottleneck) and throughput = c / cycle.
- Dedicated hardware (one accelerator per node) divides compute by N. `colocated=True` models
  this development machine: every stage shares the same cores, so splitting the model saves
  no compute (stage compute stays t(b)/N but stages cannot run in parallel: the cycle is at
  least N x m x stage time, i.e. the CPU does all the work serially).
- TTFT for one request with a P-token prompt: the prefill passes every stage once (compute
  t_prefill(P) split over N stages + overheads) and crosses N-1 boundaries with P tokens of
  activations, plus one return hop for the sampled token.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

KIB = 1024
GBIT = 1e9
HOP_RESULTS = Path(__file__).resolve().parent / "results" / "hop.json"
ASSUMED_OVERLAY_GBIT = 10.0      # fallback only: userspace WireGuard on a server-class core, no measurement


@dataclass(frozen=True)
class ModelSpec:
    name: str
    params: float
    layers: int
    hidden_size: int
    bytes_per_elem: int = 2  # activations (bf16)
    boundary_tensors: int = 2  # hidden_states + residual (vLLM Llama pipeline stages)
    weight_bytes_per_param: float = 2.0  # bf16 weights

    @property
    def boundary_bytes_per_token(self) -> int:
        """Activation bytes one token sends across one stage boundary."""
        return self.hidden_size * self.bytes_per_elem * self.boundary_tensors

    @property
    def weight_bytes(self) -> float:
        return self.params * self.weight_bytes_per_param


# Published shapes of the Llama 3.1 family (config.json of each model card) and the local model.
MODELS = {
    "8b": ModelSpec("Llama-3.1-8B class", 8.03e9, 32, 4096),
    "70b": ModelSpec("Llama-3.1-70B class", 70.6e9, 80, 8192),
    "405b": ModelSpec("Llama-3.1-405B class", 405.9e9, 126, 16384),
    "smollm2": ModelSpec("SmolLM2-135M (float32, this repo's default)", 134.5e6, 30, 576, bytes_per_elem=4,
                         weight_bytes_per_param=4.0),
}


@dataclass(frozen=True)
class Link:
    bandwidth_bps: float  # bits/s of one stream
    latency_s: float  # one-way
    encryption_s_per_byte: float = 0.0

    def transfer_s(self, nbytes: float) -> float:
        return self.latency_s + nbytes * (8.0 / self.bandwidth_bps + self.encryption_s_per_byte)

    @property
    def effective_bps(self) -> float:
        """Throughput of one bulk stream once encryption is paid."""
        return 8.0 / (8.0 / self.bandwidth_bps + self.encryption_s_per_byte)


@dataclass(frozen=True)
class Compute:
    """Full-model (N=1) step costs in seconds; per-stage overhead added once per stage visit."""
    decode_fixed_s: float  # t_fixed: a decode step's batch-independent cost (weights read)
    decode_per_seq_s: float  # t_seq: added per sequence in the batch
    prefill_per_token_s: float  # prefill cost per prompt token
    per_stage_overhead_s: float = 0.0
    colocated: bool = False  # all stages share the same compute (one machine)

    def decode_step_s(self, batch: float) -> float:
        return self.decode_fixed_s + batch * self.decode_per_seq_s


def encryption_cost(overlay_bps: float, plain_bps: float) -> float:
    """Seconds per byte that encryption adds, from measured overlay and plain throughput (bits/s)."""
    if overlay_bps <= 0 or plain_bps <= 0:
        raise ValueError("throughputs must be positive")
    return max(0.0, 8.0 / overlay_bps - 8.0 / plain_bps)


def measured_hop_costs(path: Path | str = HOP_RESULTS) -> dict | None:
    """The hop_costs block of a hop_bench result file (encryption_s_per_byte,
    overlay_added_latency_s, ...), or None when there is no usable file."""
    try:
        costs = json.loads(Path(path).read_text())["hop_costs"]
        enc, added = float(costs["encryption_s_per_byte"]), float(costs["overlay_added_latency_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if enc < 0 or added < 0 or not (math.isfinite(enc) and math.isfinite(added)):
        return None
    return dict(costs, source=str(path))


def overlay_link(bandwidth_bps: float, latency_s: float, costs: dict | None = None, *,
                 overlay_bps: float | None = None, plain_bps: float | None = None) -> tuple[Link, str]:
    """The link between stages with the overlay's cost: measured `costs` (measured_hop_costs) when
    given and no explicit overlay_bps, else the assumed encrypted throughput. Returns (link, source)."""
    if costs is not None and overlay_bps is None:
        return (Link(bandwidth_bps, latency_s + costs["overlay_added_latency_s"], costs["encryption_s_per_byte"]),
                f"measured ({costs.get('source', 'hop_bench')})")
    enc = encryption_cost(overlay_bps or ASSUMED_OVERLAY_GBIT * GBIT, plain_bps or bandwidth_bps)
    return Link(bandwidth_bps, latency_s, enc), "assumed" if overlay_bps is None else "given"


def gpu_compute(model: ModelSpec, *, hbm_bytes_per_s: float = 3.35e12, flops: float = 989e12,
                mbu: float = 0.6, mfu: float = 0.4, per_stage_overhead_s: float = 0.0) -> Compute:
    """Roofline step costs of one accelerator holding the whole model (defaults: H100 SXM datasheet,
    bf16 dense; mbu/mfu are the achieved fractions of memory bandwidth and FLOPs, assumptions)."""
    flops_per_token = 2.0 * model.params
    return Compute(decode_fixed_s=model.weight_bytes / (hbm_bytes_per_s * mbu),
                   decode_per_seq_s=flops_per_token / (flops * mfu),
                   prefill_per_token_s=flops_per_token / (flops * mfu),
                   per_stage_overhead_s=per_stage_overhead_s)


def min_nodes(model: ModelSpec, device_bytes: float, usable_fraction: float = 0.8) -> int:
    """Fewest stages whose devices hold the weights (the rest of memory is KV cache and activations)."""
    return max(1, math.ceil(model.weight_bytes / (device_bytes * usable_fraction)))


def _stage_s(compute: Compute, nodes: int, batch: float) -> float:
    return compute.decode_step_s(batch) / nodes + compute.per_stage_overhead_s


def _cycle(nodes: int, m: int, stage: float, hop: float, back: float, colocated: bool) -> float:
    trip = nodes * stage + (nodes - 1) * hop + back  # one micro-batch's way round the pipeline
    cycle = max(trip, m * max(stage, hop))  # the busiest stage or link serves all m micro-batches
    if colocated:
        cycle = max(cycle, m * nodes * stage)  # one shared machine runs every stage's work in turn
    return cycle


def decode(model: ModelSpec, compute: Compute, link: Link, nodes: int, concurrency: int) -> dict:
    """Steady-state decode with `concurrency` sequences over `nodes` stages."""
    if nodes < 1 or concurrency < 1:
        raise ValueError("nodes and concurrency must be >= 1")
    m = min(nodes, concurrency)
    micro = concurrency / m
    stage = _stage_s(compute, nodes, micro)
    hop = link.transfer_s(micro * model.boundary_bytes_per_token) if nodes > 1 else 0.0
    back = link.latency_s if nodes > 1 else 0.0  # sampled token ids back to the head: latency only
    cycle = _cycle(nodes, m, stage, hop, back, compute.colocated)
    compute_only = _cycle(nodes, m, stage, 0.0, 0.0, compute.colocated)
    # which resource bounds the pipeline: a link slower than a stage caps it whatever the compute
    if hop <= stage:
        regime = "compute"
    else:
        regime = "link-latency" if link.latency_s >= hop - link.latency_s else "link-bandwidth"
    return {"nodes": nodes, "concurrency": concurrency, "microbatches": m, "stage_s": stage, "hop_s": hop,
            "cycle_s": cycle, "tpot_s": cycle, "tokens_per_s": concurrency / cycle, "regime": regime,
            "link_share": (cycle - compute_only) / cycle,  # the part of TPOT an ideal link would remove
            "boundary_bytes_per_step": micro * model.boundary_bytes_per_token}


def ttft(model: ModelSpec, compute: Compute, link: Link, nodes: int, prompt_tokens: int) -> float:
    """Time to first token of one request alone in the system."""
    prefill = compute.decode_fixed_s + prompt_tokens * compute.prefill_per_token_s
    hops = (nodes - 1) * link.transfer_s(prompt_tokens * model.boundary_bytes_per_token)
    back = link.latency_s if nodes > 1 else 0.0
    return prefill + nodes * compute.per_stage_overhead_s + hops + back


def sweep(model: ModelSpec, compute: Compute, link: Link, nodes: list[int], concurrency: int,
          prompt_tokens: int) -> list[dict]:
    rows = []
    for n in nodes:
        row = decode(model, compute, link, n, concurrency)
        row["ttft_s"] = ttft(model, compute, link, n, prompt_tokens)
        rows.append(row)
    return rows


def fit_local(measured_tpot_s_n1: float, concurrency: int, *, tpot_s_at_1: float | None = None,
              fixed_fraction: float = 0.5) -> Compute:
    """Colocated compute calibrated on measured N=1 TPOTs (this machine).

    With a second measurement at concurrency 1 the affine step cost is fitted exactly
    (t_seq = slope between the two points); without it `fixed_fraction` of the step is assumed
    batch-independent.
    """
    if tpot_s_at_1 is not None and concurrency > 1:
        per_seq = max(0.0, (measured_tpot_s_n1 - tpot_s_at_1) / (concurrency - 1))
        fixed = measured_tpot_s_n1 - concurrency * per_seq
    else:
        fixed = measured_tpot_s_n1 * fixed_fraction
        per_seq = (measured_tpot_s_n1 - fixed) / concurrency
    return Compute(decode_fixed_s=fixed, decode_per_seq_s=per_seq, prefill_per_token_s=per_seq, colocated=True)


def fit_overhead(model: ModelSpec, compute: Compute, link: Link, nodes: int, concurrency: int,
                 measured_tpot_s: float) -> float:
    """Per-stage overhead that makes the model reproduce one measured TPOT (bisection; >= 0)."""
    lo, hi = 0.0, max(measured_tpot_s, 1e-6)
    if decode(model, replace(compute, per_stage_overhead_s=0.0), link, nodes, concurrency)["tpot_s"] >= measured_tpot_s:
        return 0.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if decode(model, replace(compute, per_stage_overhead_s=mid), link, nodes, concurrency)["tpot_s"] < measured_tpot_s:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def check_against_measurement(model: ModelSpec, link: Link, measured: dict[int, dict], concurrency: int,
                              *, tpot_ms_n1_at_1: float | None = None) -> dict:
    """Predict N>1 from the N=1 measurement (+ the link), then again with the per-stage overhead
    fitted on the smallest N>1 (leave-the-rest-out); report predicted vs measured for every N.

    `measured` maps N to {"tpot_ms": ..., "output_tok_s": ...} measured in one run.
    """
    if 1 not in measured:
        raise ValueError("the N=1 measurement is the calibration point")
    base = fit_local(measured[1]["tpot_ms"] / 1000.0, concurrency,
                     tpot_s_at_1=tpot_ms_n1_at_1 / 1000.0 if tpot_ms_n1_at_1 else None)
    others = sorted(n for n in measured if n > 1)
    overhead = fit_overhead(model, base, link, others[0], concurrency, measured[others[0]]["tpot_ms"] / 1000.0) \
        if others else 0.0
    rows = []
    for n in sorted(measured):
        pure = decode(model, base, link, n, concurrency)
        fitted = decode(model, replace(base, per_stage_overhead_s=overhead), link, n, concurrency)
        rows.append({"nodes": n, "measured_tpot_ms": measured[n]["tpot_ms"],
                     "measured_tok_s": measured[n].get("output_tok_s"),
                     "predicted_tpot_ms_link_only": pure["tpot_s"] * 1000,
                     "predicted_tok_s_link_only": pure["tokens_per_s"],
                     "predicted_tpot_ms_with_overhead": fitted["tpot_s"] * 1000,
                     "predicted_tok_s_with_overhead": fitted["tokens_per_s"],
                     "link_hop_ms": pure["hop_s"] * 1000})
    return {"model": asdict(model), "link": asdict(link), "concurrency": concurrency,
            "calibration": {"n1_tpot_ms": measured[1]["tpot_ms"], "n1_tpot_ms_at_concurrency_1": tpot_ms_n1_at_1,
                            "decode_fixed_ms": base.decode_fixed_s * 1000,
                            "decode_per_seq_ms": base.decode_per_seq_s * 1000, "fitted_on_nodes": others[0] if others else None,
                            "per_stage_overhead_ms": overhead * 1000}, "rows": rows}


def markdown(rows: list[dict], model: ModelSpec) -> str:
    lines = [f"**{model.name}**: {model.boundary_bytes_per_token / KIB:g} KiB per token per boundary",
             "", "| nodes | fits | tokens/s | TPOT (ms) | TTFT (ms) | hop per step (ms) | link share of TPOT | bound by |",
             "|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        fits = {True: "yes", False: "no"}.get(r.get("fits_in_memory"), "?")
        lines.append(f"| {r['nodes']} | {fits} | {r['tokens_per_s']:.1f} | {r['tpot_s'] * 1000:.2f} "
                     f"| {r['ttft_s'] * 1000:.1f} | {r['hop_s'] * 1000:.3f} | {r['link_share']:.0%} | {r['regime']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", choices=sorted(MODELS), help="model classes (default 8b, 70b, 405b)")
    p.add_argument("--nodes", default="1,2,4,8,16", help="node counts")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=1024)
    p.add_argument("--link-gbit", type=float, default=100.0, help="raw link bandwidth per stream, Gbit/s")
    p.add_argument("--latency-ms", type=float, default=0.5, help="one-way latency between nodes")
    p.add_argument("--overlay-gbit", type=float,
                   help="encrypted-overlay throughput per stream, Gbit/s, instead of the measured hop costs")
    p.add_argument("--hop-results", default=str(HOP_RESULTS),
                   help="hop_bench result file with the measured hop costs (absent: assumed "
                        f"{ASSUMED_OVERLAY_GBIT:g} Gbit/s, no added latency)")
    p.add_argument("--plain-gbit", type=float, help="measured plain throughput on the same path (default --link-gbit)")
    p.add_argument("--no-encryption", action="store_true")
    p.add_argument("--stage-overhead-ms", type=float, default=0.0)
    p.add_argument("--device-gib", type=float, default=80.0, help="memory per accelerator (H100: 80)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    nodes = [int(x) for x in args.nodes.split(",") if x]
    if args.no_encryption:
        link, source = Link(args.link_gbit * GBIT, args.latency_ms / 1000.0, 0.0), "none"
    else:
        link, source = overlay_link(args.link_gbit * GBIT, args.latency_ms / 1000.0,
                                    measured_hop_costs(args.hop_results),
                                    overlay_bps=args.overlay_gbit * GBIT if args.overlay_gbit else None,
                                    plain_bps=args.plain_gbit * GBIT if args.plain_gbit else None)
    if not args.json:
        print(f"overlay hop costs: {source}: +{(link.latency_s - args.latency_ms / 1000.0) * 1e6:.0f} µs one way, "
              f"{link.encryption_s_per_byte * 1e9:.3f} ns/byte\n")
    out = []
    for key in args.model or ["8b", "70b", "405b"]:
        model = MODELS[key]
        compute = gpu_compute(model, per_stage_overhead_s=args.stage_overhead_ms / 1000.0)
        need = min_nodes(model, args.device_gib * 2**30)
        rows = [r for r in sweep(model, compute, link, nodes, args.concurrency, args.prompt_tokens)]
        for r in rows:
            r["fits_in_memory"] = r["nodes"] >= need
        out.append({"model": asdict(model), "min_nodes": need, "rows": rows})
        if not args.json:
            print(markdown(rows, model))
            print(f"(needs >= {need} node(s) of {args.device_gib:g} GiB to hold the weights; "
                  f"effective overlay {link.effective_bps / GBIT:.2f} Gbit/s)\n")
    if args.json:
        print(json.dumps({"link": asdict(link), "hop_costs_source": source, "concurrency": args.concurrency,
                          "prompt_tokens": args.prompt_tokens, "models": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
