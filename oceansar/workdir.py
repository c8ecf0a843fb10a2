"""A workdir is one run: it owns its config, admits one writer, and keeps what it finished.

The first launch in a workdir writes `config.json`; a later launch without a config uses it, and one
whose config differs in anything that changes what the run trains (model, budget, batch, data,
pruning, objective, seed) is refused with the differing fields listed, unless the user asks for a new
run beside it or to override. Fields that only change how a run is watched (logging, checkpoint
cadence, evaluators, progress bars, the device count) may change between launches. `Lock` admits
one writing process per workdir: a lock file naming the owner's host and pid, created atomically
(`os.link`, safe on NFS), released on exit, taken over with a warning when its owner is a dead
process on this host. `summary.json` marks a finished run; it is written once, atomically.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
import socket
import sys
from typing import Any

import ml_collections

from oceansar.errors import WorkdirError

CONFIG_FILE = "config.json"
LOCK_FILE = "lock.json"
SUMMARY_FILE = "summary.json"
ON_CHANGE = ("refuse", "new", "override")

# Fields (and blocks) that change how a run is observed, not what it trains.
OBSERVATION_FIELDS = ("name", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "num_devices",
                      "progress", "eval_at_init", "evals", "compare", "data.cache")


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples recipes use (the spec accepts either; comparisons need one)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def _plain(config) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else config


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: _tuples(tree)}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= _flatten(value, f"{prefix}.{key}" if prefix else key)
    return out


def _observational(field: str) -> bool:
    return any(field == f or field.startswith(f + ".") for f in OBSERVATION_FIELDS)


def stored_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict | None:
    """The config a workdir's run was started with, or None for a new workdir."""
    path = pathlib.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))
    except json.JSONDecodeError as e:
        raise WorkdirError(f"{path}: not a readable config ({e}); restore it or start a new workdir") from None


def run_differences(stored, given) -> list[str]:
    """`field: stored -> given` for every field that defines the run and differs (missing counts)."""
    old, new = _flatten(_plain(stored)), _flatten(_plain(given))
    missing = object()
    return [f"{field}: {old.get(field, '(absent)')!r} -> {new.get(field, '(absent)')!r}"
            for field in sorted(set(old) | set(new))
            if not _observational(field) and old.get(field, missing) != new.get(field, missing)]


def _refusal(workdir: pathlib.Path, differences: list[str]) -> WorkdirError:
    listed = "\n  ".join(differences[:20]) + ("\n  ..." if len(differences) > 20 else "")
    return WorkdirError(
        f"{workdir} holds a run with another config ({len(differences)} field(s) differ, stored -> given):\n  "
        f"{listed}\nRerun without --config to continue that run, choose another --workdir, or pass "
        f"--on_config_change=new (a new run beside it) or --on_config_change=override (continue it with "
        f"the new config).")


def place(workdir: str | pathlib.Path, config, on_change: str = "refuse") -> pathlib.Path:
    """Where a training launch with `config` runs: `workdir`, or with `on_change="new"` and another
    config stored there, the first `<workdir>-<n>` that is new or holds the same config.

    Raises:
      WorkdirError: `on_change="refuse"` and the stored config differs.
    """
    if on_change not in ON_CHANGE:
        raise WorkdirError(f"--on_config_change={on_change!r}; known: {ON_CHANGE}")
    workdir = pathlib.Path(workdir)
    stored = stored_config(workdir)
    if stored is None or on_change == "override" or not (differences := run_differences(stored, config)):
        return workdir
    if on_change == "refuse":
        raise _refusal(workdir, differences)
    n = 2
    while (candidate := workdir.with_name(f"{workdir.name}-{n}")).exists():
        other = stored_config(candidate)
        if other is not None and not run_differences(other, config):
            break
        n += 1
    logging.warning("%s holds another run; this config runs in %s", workdir, candidate)
    return candidate


def claim(workdir: str | pathlib.Path, config, on_change: str = "refuse", *, write: bool = True) -> None:
    """Records `config` as the workdir's run config, or checks it against the recorded one.

    A new workdir gets `config.json`. An existing one must agree in every field that defines the run;
    observation fields (`OBSERVATION_FIELDS`) may differ and the file keeps the newest of them. With
    `on_change="override"` a differing config replaces it, the old one kept as `config.<n>.json`.

    Raises:
      WorkdirError: the stored config differs and `on_change` is not "override".
    """
    workdir = pathlib.Path(workdir)
    path = workdir / CONFIG_FILE
    stored = stored_config(workdir)
    if stored is not None and (differences := run_differences(stored, config)):
        if on_change != "override":
            raise _refusal(workdir, differences)
        n = 1
        while (kept := workdir / f"config.{n}.json").exists():
            n += 1
        if write:
            path.replace(kept)
        logging.warning("%s: continuing with a changed config (previous one kept as %s):\n  %s",
                        workdir, kept.name, "\n  ".join(differences))
    if write:
        workdir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, config.to_json_best_effort(indent=2))


def write_atomic(path: pathlib.Path, text: str) -> None:
    """Writes `text` to `path` so that a reader sees the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def finished(workdir: str | pathlib.Path) -> dict[str, Any] | None:
    """The summary of a finished run (trained, evaluated and released), or None."""
    path = pathlib.Path(workdir) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class Lock:
    """One writing process per workdir (see the module docstring); a context manager.

    Args:
      workdir: the run directory (created if needed, and removed again on release if it is still
        empty then).

    Raises:
      WorkdirError: on entry, when a live process (or one on another host) holds the lock; the
        message names its host, pid, start time and command.
    """

    def __init__(self, workdir: str | pathlib.Path):
        self.path = pathlib.Path(workdir) / LOCK_FILE
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(),
                      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "command": " ".join(sys.argv)}

    def _link(self) -> bool:
        tmp = self.path.with_name(f".{LOCK_FILE}.{self.owner['host']}.{os.getpid()}")
        tmp.write_text(json.dumps(self.owner))
        try:
            os.link(tmp, self.path)  # atomic, and fails when the lock exists
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            raise WorkdirError(f"{self.path} is not a lock this project wrote; remove it if no run uses "
                               f"the workdir") from None

    def acquire(self) -> None:
        self._created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._link():
                return
            holder = self._holder()
            if holder is None:  # released between our attempt and the read
                continue
            same_host = holder.get("host") == self.owner["host"]
            if same_host and not _alive(int(holder.get("pid", -1))):
                logging.warning("%s: taking over the lock of process %s, which no longer runs (started %s)",
                                self.path.parent, holder.get("pid"), holder.get("started"))
                self.path.unlink(missing_ok=True)
                continue
            where = "" if same_host else f" on host {holder.get('host')} (remove {self.path} if it is gone)"
            raise WorkdirError(f"{self.path.parent} is in use by process {holder.get('pid')}{where}, started "
                               f"{holder.get('started')}: {holder.get('command')}")
        raise WorkdirError(f"could not take the lock {self.path}: it keeps changing hands")

    def release(self) -> None:
        holder = self._holder() if self.path.exists() else None
        if holder is not None and holder.get("pid") == self.owner["pid"] \
                and holder.get("host") == self.owner["host"]:
            self.path.unlink(missing_ok=True)
        if getattr(self, "_created", False) and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()  # a launch that failed before writing leaves no trace

    def __enter__(self) -> "Lock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
