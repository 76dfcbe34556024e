"""Cold start and recovery of the local confidential cluster, this design beside the previous one, in one run.

    sudo .venv/bin/python -m benchmarks.lifecycle_bench --nodes 3 --previous-commit a9cd522 \\
        --out benchmarks/results/lifecycle.json

For each design (this checkout; with --previous-commit also the supervisor design of that commit):
1. Cold start with an EMPTY compile cache: `conclave up --local --nodes N --detach` until the first
   chat completion answers through the head's TLS front, then `conclave down`.
2. Cold start with the compile cache that start left (what a host that served before keeps): the
   same again. This is the figure the goal is about; the machine, model and command are the same.
3. Recovery: every process of worker host 1 is killed (the host "dies"); the host layer (this
   design: the orchestrator restarts that host's node, which attests, fetches its key, unseals,
   rejoins Ray, the head relaunches vLLM; previous design: the supervisor does all of it) brings it
   back; time from the kill until a completion answers again. Then `conclave down`.
Each design gets its own fresh VLLM_CACHE_ROOT (vLLM's torch.compile cache; it holds compiled code,
never weights) and state folder, so both start from the same cache state. Each start and the
recovery also get a timeline (seconds after `up` or after the kill) when the design records one:
the orchestrator's phases and every node's own steps (runtime/node/timeline.py).

The previous design runs from a temporary `git worktree` of --previous-commit (a commit where
runtime/serving/supervisor.py still exists), with this venv: a folder `conclave/` of symlinks to the
worktree's runtime/ and overlay/ goes first on PYTHONPATH. Two changes are made in that worktree
only, for the run: its process.py passes PYTHONPATH (so its supervisor, agents, Ray and vLLM
import the same old tree) and VLLM_USE_AOT_COMPILE (the compile-cache setting this design gives its
engine, see runtime/node/engine.py; --previous-as-is leaves it out) to its children, and it gains
this checkout's vLLM stage-order plugin module (the venv's entry point names it; it does nothing
without its variable). Nothing is asserted: the numbers are printed and written to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONCLAVE = str(Path(sys.executable).parent / "conclave")
GOAL = 1.10   # the goal: no worse than the previous design by more than 10%


def cli(args: list[str], env: dict, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([CONCLAVE, *args], env=env, capture_output=True, text=True, timeout=timeout, check=True)


def first_answer(status: dict, deadline: float) -> float:
    body = json.dumps({"model": status["model"]["name"], "max_tokens": 8, "temperature": 0,
                       "messages": [{"role": "user", "content": "What is the capital of France?"}]}).encode()
    ctx = ssl.create_default_context(cafile=status["ca_cert"]) if status.get("ca_cert") else None
    while time.monotonic() < deadline:
        req = urllib.request.Request(status["endpoint"] + "/chat/completions", data=body, headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {status['api_key']}"})
        try:
            with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:
                if resp.status == 200:
                    return time.monotonic()
        except Exception:  # noqa: BLE001 - not serving (yet / again)
            pass
        time.sleep(0.5)
    raise RuntimeError("the cluster did not answer in time")


def timeline(status: dict, origin: float) -> dict:
    """Seconds after `origin` (wall clock) of the orchestrator's phases and each node's steps."""
    out: dict = {}
    phases = [[name, round(t - origin, 1)] for name, t in status.get("phase_times") or [] if t >= origin - 1]
    if phases:
        out["orchestrator"] = phases
    for node in status.get("nodes") or []:
        tl = (node.get("lifecycle") or {}).get("timeline") or {}
        started = tl.get("started")
        if started is None:
            continue
        out[node["name"]] = [[step, round(started + t - origin, 1)] for step, t in tl.get("steps") or []
                             if started + t >= origin - 1]
    return out


def print_timeline(title: str, tl: dict) -> None:
    if not tl:
        return
    print(title)
    for who, steps in tl.items():
        print(f"  {who:>16}: " + ", ".join(f"{step} {t:.1f}" for step, t in steps))


def kill_host(netns: str) -> int:
    from conclave.runtime.node import process
    pids = process.pids_in_netns(netns)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def start_once(env: dict, nodes: int, port: int) -> tuple[dict, dict]:
    """`up` until the first answer; returns (figures, status)."""
    t0, w0 = time.monotonic(), time.time()
    cli(["up", "--local", "--nodes", str(nodes), "--port", str(port), "--detach"], env)
    out: dict = {"up_s": round(time.monotonic() - t0, 1)}
    status = json.loads(cli(["status", "--json"], env).stdout)
    out["start_s"] = round(first_answer(status, time.monotonic() + 900) - t0, 1)
    out["timeline"] = timeline(json.loads(cli(["status", "--json"], env).stdout), w0)
    return out, status


def down(env: dict) -> None:
    subprocess.run([CONCLAVE, "down"], env=env, capture_output=True, timeout=600)


def measure_design(label: str, env: dict, nodes: int, port: int) -> dict:
    result: dict = {}
    print(f"[{label}] start 1 (empty compile cache)", flush=True)
    try:
        result["start_empty_cache"], _ = start_once(env, nodes, port)
    finally:
        down(env)
    print(f"[{label}]   {result['start_empty_cache']['start_s']} s; start 2 (compile cache kept)", flush=True)
    try:
        result["start_warm_cache"], status = start_once(env, nodes, port)
        print(f"[{label}]   {result['start_warm_cache']['start_s']} s; killing worker host 1", flush=True)
        victim = status["nodes"][1]
        t1, w1 = time.monotonic(), time.time()
        killed = kill_host(victim["netns"])
        time.sleep(3)
        result["recovery"] = {"killed_processes": killed,
                              "recovery_s": round(first_answer(status, time.monotonic() + 900) - t1, 1)}
        result["recovery"]["timeline"] = timeline(json.loads(cli(["status", "--json"], env).stdout), w1)
        print(f"[{label}]   recovery {result['recovery']['recovery_s']} s", flush=True)
    finally:
        down(env)
    return result


def design_tree(commit: str, work: Path, label: str, *, pass_aot_setting: bool) -> tuple[Path, Path]:
    """A worktree of `commit` and a PYTHONPATH folder whose `conclave` package is that worktree."""
    tree = work / f"tree-{label}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit],
                   check=True, capture_output=True, text=True)
    procs = [p for p in (tree / "runtime" / "node" / "process.py", tree / "runtime" / "serving" / "process.py")
             if p.exists()]
    if not procs:
        raise SystemExit(f"{commit}: no runtime/*/process.py to pass PYTHONPATH on")
    text = procs[0].read_text()
    extra = '"PYTHONPATH", ' + ('"VLLM_USE_AOT_COMPILE", ' if pass_aot_setting else '')
    if '_INHERITED = ("PATH", ' not in text:
        raise SystemExit(f"{procs[0]}: cannot find the inherited-variable list to extend")
    procs[0].write_text(text.replace('_INHERITED = ("PATH", ', '_INHERITED = ("PATH", ' + extra, 1))
    node = tree / "runtime" / "node"
    if not (node / "vllm_stage_order.py").exists():
        node.mkdir(exist_ok=True)
        (node / "__init__.py").touch()
        shutil.copy(ROOT / "runtime" / "node" / "vllm_stage_order.py", node / "vllm_stage_order.py")
    shim = work / f"path-{label}" / "conclave"
    shim.mkdir(parents=True)
    (shim / "runtime").symlink_to(tree / "runtime")
    (shim / "overlay").symlink_to(tree / "overlay")
    return tree, shim.parent


def ratio(new: float | None, old: float | None) -> float | None:
    return round(new / old, 3) if new and old else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--port", type=int, default=18443)
    ap.add_argument("--this-commit", default=None,
                    help="measure this design at that commit (a worktree) instead of the checkout as it is")
    ap.add_argument("--previous-commit", default=None,
                    help="also measure the supervisor design of this commit (e.g. a9cd522), same run")
    ap.add_argument("--previous-as-is", action="store_true",
                    help="run the previous design without this design's compile-cache setting")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="conclave-lifecycle-"))
    result: dict = {"nodes": args.nodes, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                             capture_output=True, text=True).stdout.strip(),
                    "load_before": [round(x, 2) for x in os.getloadavg()], "designs": {}}
    designs: list[tuple[str, dict]] = []
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VLLM_CACHE_ROOT",
                                                             "TORCHINDUCTOR_CACHE_DIR", "VLLM_USE_AOT_COMPILE")}
    trees: list[Path] = []
    try:
        this_env = {**base, "CONCLAVE_STATE_DIR": str(work / "state-this"),
                    "VLLM_CACHE_ROOT": str(work / "vllm-cache-this")}
        if args.this_commit:
            tree, path = design_tree(args.this_commit, work, "this", pass_aot_setting=False)
            trees.append(tree)
            this_env["PYTHONPATH"] = str(path)
            result["this_commit"] = args.this_commit
        designs.append(("this", this_env))
        if args.previous_commit:
            tree, path = design_tree(args.previous_commit, work, "previous", pass_aot_setting=not args.previous_as_is)
            trees.append(tree)
            if not (tree / "runtime" / "serving" / "supervisor.py").exists():
                raise SystemExit(f"{args.previous_commit} has no runtime/serving/supervisor.py: not the previous design")
            result["previous_commit"] = args.previous_commit
            result["previous_compile_setting"] = "as is" if args.previous_as_is else "VLLM_USE_AOT_COMPILE=0"
            # its own model cache: its `model import` must not rewrite the one this checkout uses
            prev_env = {**base, "PYTHONPATH": str(path), "CONCLAVE_STATE_DIR": str(work / "state-previous"),
                        "CONCLAVE_CACHE_DIR": str(work / "cache-previous"),
                        "VLLM_CACHE_ROOT": str(work / "vllm-cache-previous")}
            if not args.previous_as_is:
                prev_env["VLLM_USE_AOT_COMPILE"] = "0"
            designs.append(("previous", prev_env))
        for label, env in designs:
            try:
                cli(["model", "import", "smollm2"], env)
                result["designs"][label] = measure_design(label, env, args.nodes, args.port)
            except Exception as exc:  # noqa: BLE001 - recorded; the other design still runs
                result["designs"].setdefault(label, {})["error"] = repr(exc)[:500]
                print(f"[{label}] failed: {exc!r}", flush=True)
    finally:
        for tree in trees:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]

    def fig(label: str, *keys: str):
        d = result["designs"].get(label) or {}
        for k in keys:
            d = (d or {}).get(k)
        return d

    this, prev = "this", "previous"
    summary = {}
    for name, keys in (("start_empty_cache_s", ("start_empty_cache", "start_s")),
                       ("start_warm_cache_s", ("start_warm_cache", "start_s")),
                       ("recovery_s", ("recovery", "recovery_s"))):
        summary[name] = {"this": fig(this, *keys), "previous": fig(prev, *keys),
                         "ratio": ratio(fig(this, *keys), fig(prev, *keys))}
    result["summary"] = summary
    result["goal_met"] = (None if summary["start_warm_cache_s"]["ratio"] is None or summary["recovery_s"]["ratio"] is None
                          else summary["start_warm_cache_s"]["ratio"] <= GOAL and summary["recovery_s"]["ratio"] <= GOAL)
    for label in result["designs"]:
        for key, title in (("start_empty_cache", "start 1 timeline (s after up)"),
                           ("start_warm_cache", "start 2 timeline (s after up)"),
                           ("recovery", "recovery timeline (s after the kill)")):
            print_timeline(f"[{label}] {title}:", fig(label, key, "timeline") or {})
    print(f"N={args.nodes}, load before {result['load_before']}, after {result['load_after']}")
    for name, row in summary.items():
        print(f"  {name:>20}: this design {row['this']} s, previous design {row['previous']} s, ratio {row['ratio']}")
    print(f"goal (warm start and recovery within {GOAL:.2f}x): {result['goal_met']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
