"""The accelerator benchmark suite (`benchmarks/device_suite.py`) starts, runs every case and reports.

The suite is run as the device machine runs it, in a subprocess, at its reduced (CPU smoke) sizes;
its case runner is also driven directly with commands that fail, hang or print noise around their
JSON, since a device session cannot afford a suite that loses results to one bad case.
"""
import ast
import importlib.metadata
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

from benchmarks import device_suite

ROOT = device_suite.ROOT


def _suite(*args: str, timeout: float) -> subprocess.CompletedProcess:
    # The cases only need to run here, not to be fast: XLA's optimisation passes would cost more compile time
    # than they save in the smoke sizes' execution.
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="True")
    return subprocess.run([sys.executable, "-m", "benchmarks.device_suite", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


# Every case but the ResNet-50 step, whose benchmark (`train_step`) the ViT cases run and whose training
# tests/test_resnet.py runs (one more train-step compile here would buy no coverage), and the cuDNN step,
# which needs a CUDA GPU and is recorded as skipped.
REDUCED = [c.name for c in device_suite.CASES if c.name not in ("train_step_r50", "train_step_s16_cudnn")]


def test_reduced_suite_runs_every_case(tmp_path):
    out = tmp_path / "suite.json"
    start = time.monotonic()
    proc = _suite("--mode=reduced", f"--cases={','.join(REDUCED + ['train_step_s16_cudnn'])}", f"--out={out}",
                  timeout=300)
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report
    assert report["complete"] and report["mode"] == "reduced"
    by_name = {c["name"]: c for c in report["cases"]}
    assert by_name["train_step_s16_cudnn"]["status"] == "skipped" and "CUDA GPU" in by_name[
        "train_step_s16_cudnn"]["why"]
    statuses = {c["name"]: c["status"] for c in report["cases"] if c["name"] != "train_step_s16_cudnn"}
    assert statuses == {name: "ok" for name in REDUCED}, {
        c["name"]: c.get("stderr_tail", "")[-800:] for c in report["cases"] if c["status"] != "ok"}
    assert report["device"]["device_kind"] and report["device"]["platform"] == "cpu"
    assert report["device"]["device_count"] >= 1
    for dist in ("jax", "jaxlib", "flax", "python"):
        assert report["versions"][dist], dist
    assert report["host"]["cpu_count"] >= 1 and all(report["dependencies"].values())
    for name in ("train_step_s16", "train_step_s8", "train_step_b8"):
        assert by_name[name]["result"]["timing"]["samples_per_s"] > 0, name
        assert by_name[name]["wall_s"] > 0
    s16 = report["goals"]["train_step_s16"]
    assert s16["samples_per_s"] > 0 and s16["attention"] == "xla" and list(s16["samples_per_s_by_attention"]) == [
        "xla"]
    assert all(g["met"] is None for k, g in report["goals"].items() if k != "note")  # smoke sizes judge nothing
    assert report["total_wall_s"] <= wall + 1


def test_list_names_every_full_mode_case():
    proc = _suite("--list", timeout=60)
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    assert listing["mode"] == "full"
    assert [c["name"] for c in listing["cases"]] == [c.name for c in device_suite.CASES]
    for listed, case in zip(listing["cases"], device_suite.CASES):
        assert listed["command"].startswith(f"python -m benchmarks.{case.module} "), listed
        assert listed["timeout_s"] == case.timeout_s[0]
    assert "--dtype=bfloat16" in listing["cases"][0]["command"]
    assert listing["wheels"]["download"].endswith(" ".join(device_suite.WHEELS))
    assert "--no-index" in listing["wheels"]["device"] and "benchmarks.device_suite" in listing["wheels"]["device"]
    assert _suite("--cases=nope", timeout=60).returncode == 2


def test_a_failing_case_is_recorded_and_the_others_still_run():
    py = sys.executable
    cases = [
        device_suite.Planned("bogus", [py, "-c", ("import sys; print('{\"partial\": 1}'); "
                                                  "sys.stderr.write('boom: no such benchmark\\n'); sys.exit(3)")], 30),
        device_suite.Planned("no_binary", ["/nonexistent/python", "-m", "benchmarks.nothing"], 30),
        device_suite.Planned("hangs", [py, "-c", "import time; time.sleep(60)"], 1),
        device_suite.Planned("good", [py, "-c", ("print('log line'); print('{\"a\": 1}'); "
                                                 "print('{\"b\": {\"c\": 2}}'); print('done')")], 30),
        device_suite.Planned("needs", [py, "-c", "print('{}')"], 30, missing=("not_a_module_xyz",)),
        device_suite.Planned("too_long", [py, "-c", "print('{}')"], 10_000),
    ]
    seen = []
    records = device_suite.run_cases(cases, budget_s=600, on_record=lambda so_far: seen.append(len(so_far)))
    by_name = {r["name"]: r for r in records}
    assert [r["name"] for r in records] == [c.name for c in cases] and seen == list(range(1, len(cases) + 1))
    assert by_name["bogus"]["status"] == "failed" and by_name["bogus"]["returncode"] == 3
    assert "boom: no such benchmark" in by_name["bogus"]["stderr_tail"]
    assert by_name["bogus"]["result"] == {"partial": 1}  # what a failing case printed is kept
    assert by_name["no_binary"]["status"] == "failed" and "could not start" in by_name["no_binary"]["stderr_tail"]
    assert by_name["hangs"]["status"] == "timeout" and 1 <= by_name["hangs"]["wall_s"] < 20
    assert by_name["good"]["status"] == "ok" and by_name["good"]["result"] == {"b": {"c": 2}}
    assert by_name["needs"]["status"] == "missing_dependency" and by_name["needs"]["missing"] == ["not_a_module_xyz"]
    assert by_name["too_long"]["status"] == "skipped_budget"


def test_last_json_object_skips_noise_and_truncated_reports():
    text = '{"case": 1}\nwarning: {not json}\n{\n "cases": [\n  {"x": 1}\n ]\n}\n{\n "trunc": {"y": 2'
    assert device_suite.last_json_object(text) == {"cases": [{"x": 1}]}
    assert device_suite.last_json_object("no json here") is None
    assert device_suite.last_json_object('[1, 2]\n"s"') is None


def _imports_at_load(path: pathlib.Path) -> set[str]:
    """Names `path` imports when loaded: module-level imports, also under `if` and `try`, not in functions."""
    def walk(body):
        for node in body:
            if isinstance(node, ast.Import):
                yield from (a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import"
                yield node.module
                yield from (f"{node.module}.{a.name}" for a in node.names)  # a submodule, or just a name
            elif isinstance(node, ast.If):
                yield from walk(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                yield from walk(node.body + node.orelse + node.finalbody + [n for h in node.handlers for n in h.body])
    return set(walk(ast.parse(path.read_text()).body))


def _project_file(name: str) -> pathlib.Path | None:
    # tests/ is on the path of benchmarks that import a test's reference (benchmarks/dedup.py).
    for base in (ROOT, ROOT / "tests"):
        stem = base.joinpath(*name.split("."))
        for path in (stem.with_suffix(".py"), stem / "__init__.py"):
            if path.is_file():
                return path
    return None


def third_party_imports(*entries: pathlib.Path) -> set[str]:
    """Top-level third-party modules loaded by running `entries`: their imports at load time, and those of
    every project module they load (importing `a.b.c` loads `a`, `a.b` and `a.b.c`)."""
    found, seen, todo = set(), set(), list(entries)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports_at_load(path):
            parts = name.split(".")
            files = [f for i in range(1, len(parts) + 1) if (f := _project_file(".".join(parts[:i])))]
            todo += files
            if not files and not (ROOT / parts[0]).is_dir() and parts[0] not in sys.stdlib_module_names | {
                    "__future__"}:  # a directory of the checkout is a namespace package: configs/
                found.add(parts[0])
    return found


def test_each_case_needs_what_its_benchmark_imports_and_the_device_gets_it():
    # A module missing on the device machine fails the case there, where a rerun costs minutes of a short lease.
    provided = importlib.metadata.packages_distributions()
    carried = {d.lower().replace("_", "-") for d in device_suite.WHEELS}
    for case in device_suite.CASES:
        entries = [ROOT / "benchmarks" / f"{case.module}.py"]
        entries += [ROOT / arg.split("=", 1)[1].split(":")[0] for arg in case.full if arg.startswith("--config=")]
        needs = {n.split(".")[0] for n in case.needs}
        imported = third_party_imports(*entries)
        assert imported <= needs, (case.name, sorted(imported - needs))
        for name in needs - {n.split(".")[0] for n in device_suite.DEVICE_HAS}:
            dists = {d.lower().replace("_", "-") for d in provided.get(name, ())}
            assert dists & carried, (case.name, name, sorted(dists))
    assert {"tokenizers", "grain", "tifffile"} <= third_party_imports(ROOT / "benchmarks" / "train_step.py")
    assert third_party_imports(ROOT / "benchmarks" / "hierarchical.py") == {"jax", "numpy"}


def test_missing_modules_are_found_without_importing_them():
    assert device_suite.find_missing(["json", "not_a_module_xyz", "not_a_pkg_xyz.sub"]) == (
        "not_a_module_xyz", "not_a_pkg_xyz.sub")
    reduced = device_suite.plan("reduced", ["kmeans_1m"], python="python")
    assert [p.command[:3] for p in reduced] == [["python", "-m", "benchmarks.kmeans"]]


def test_a_signal_stops_the_running_case_and_skips_the_rest():
    py = sys.executable
    cases = [device_suite.Planned("sleeps", [py, "-c", "import time; time.sleep(60)"], 120),
             device_suite.Planned("after", [py, "-c", "print('{}')"], 30)]
    timer = threading.Timer(0.5, device_suite._STOP.set)  # what the suite's SIGTERM handler does
    timer.start()
    try:
        start = time.monotonic()
        records = device_suite.run_cases(cases, budget_s=600)
    finally:
        timer.cancel()
        device_suite._STOP.clear()
    assert [r["status"] for r in records] == ["interrupted", "skipped_interrupt"]
    assert time.monotonic() - start < 20


def test_sigterm_to_the_suite_still_prints_its_json(tmp_path):
    out = tmp_path / "suite.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.device_suite", "--mode=reduced", "--cases=kmeans_1m",
                             f"--out={out}"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr[-2000:]
    report = json.loads(stdout)
    assert report["complete"] is False and report["interrupted_by_signal"] == signal.SIGTERM
    assert [c["status"] for c in report["cases"]] in (["interrupted"], ["skipped_interrupt"])
    assert json.loads(out.read_text()) == report


_OUT_OF_MEMORY = """
import json
from benchmarks import train_step
from configs import default

def fake_run(config, notes):
    if config.ibot.weight or config.batch_size > 16:
        raise MemoryError(f"RESOURCE_EXHAUSTED: out of memory allocating {config.batch_size} GB")
    if config.batch_size < 16:
        raise ValueError("a broken step")
    return {"config": {"batch_size": config.batch_size},
            "timing": {"step_ms_best": 10.0, "samples_per_s": 100.0, "compile_s": 1.0, "final_loss": 1.0},
            "flops": {"analytic_per_sample": {"total": 5}}, "throughput": {"achieved_tflops": 0.1, "mfu": None}}

train_step.run = fake_run
config = default.get_config("smoke")
config.batch_size = 64
out = {"compared": train_step.compare_objectives(config, {}, ["dino", "dinov2"], [32, 16, 8])}
config.batch_size = 8
try:
    train_step.run_fitting(config, {}, [4])
except ValueError as e:
    out["not_retried"] = str(e)
print(json.dumps(out))
"""


def test_train_step_falls_back_to_a_batch_that_fits_and_keeps_the_first_objective():
    # In a subprocess: the benchmark defines absl flags (--config) that launch.py, imported by other tests,
    # defines too.
    proc = subprocess.run([sys.executable, "-c", _OUT_OF_MEMORY], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"), check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    out = result["compared"]
    assert out["objective"] == "dino" and out["timing"]["samples_per_s"] == 100.0
    assert out["config"]["batch_size"] == 16 and out["batch_fallback"]["batch_size"] == 16
    assert [t["batch_size"] for t in out["batch_fallback"]["out_of_memory"]] == [64, 32]
    assert out["objectives"]["dino"] == out["objectives"]["dino"] | {"batch_size": 16, "samples_per_s": 100.0}
    # DINOv2 starts at the batch DINO fitted and runs out of memory down to the last fallback: recorded, not raised.
    assert "allocating 8 GB" in out["objectives"]["dinov2"]["error"] and out["ratios"] == {}
    assert result["not_retried"] == "a broken step"  # only out-of-memory is retried


def test_goals_judge_the_faster_s16_step_and_combine_the_measured_parts():
    def step(sps, mfu):
        return {"timing": {"samples_per_s": sps}, "throughput": {"mfu": mfu, "achieved_tflops": 100.0,
                                                                  "peak_tflops_per_device": 989.0},
                "flops": {"analytic_per_sample": {"forward_global_crop": 1e9}}}

    results = {
        "train_step_s16": step(2000.0, 0.25), "train_step_s16_cudnn": step(3000.0, 0.375),
        "kmeans_1m": {"cases": [{"methods": {"oceansar_f32": {"best_seconds": 1.5},
                                             "oceansar_bf16": {"best_seconds": 0.8}, "sklearn": {"best_seconds": 0.1}}}]},
        "recluster_1m": {"seconds_total_clustering": 8.0, "balanced_sample": {"seconds": 1.0}},
        "pruning_1m": {"goals": {"table": {"value_differential_paired_median": 0.01}, "resample": {"x": 1}}},
        "loader_256": {"workers=15": {"steady_samples_per_s": 6000.0}, "workers=0": {"samples_per_s": 500.0}},
    }
    records = [{"name": name, "result": result} for name, result in results.items()]
    g = device_suite.goals(records)
    s16 = g["train_step_s16"]
    assert s16["attention"] == "cudnn" and s16["samples_per_s"] == 3000.0 and s16["met"] is True
    assert s16["samples_per_s_by_attention"] == {"xla": 2000.0, "cudnn": 3000.0}
    assert g["kmeans_1m"]["method"] == "oceansar_bf16" and g["kmeans_1m"]["met"] is True  # peers are not ours
    rc = g["recluster_1m_fraction"]
    embed_s = 1e9 * 500_000 / 100e12                   # M forward views at the achieved FLOP/s: 5 s
    between_s = 4 * 250_000 / 3000.0                   # T_s pruned epochs of rho N at the faster step's rate
    assert rc["value"] == round((9.0 + embed_s) / between_s, 4) == 0.042 and rc["met"] is True
    loop = g["loop_over_step"]
    expected = 1 / (1 + (9.0 + embed_s) / between_s) * (1 - 0.01) * 1.0  # the loader outruns the step
    assert loop["value"] == round(expected, 4) and loop["met"] is True
    assert loop["loader_samples_per_s"] == 6000.0
    records[0]["result"] = records[1]["result"] = None  # no S/16 step: nothing that needs its rate is judged
    g = device_suite.goals(records)
    assert g["train_step_s16"]["met"] is None and g["recluster_1m_fraction"]["value"] is None
    assert g["loop_over_step"]["met"] is None and g["kmeans_1m"]["met"] is True
