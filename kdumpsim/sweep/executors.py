"""Where an experiment's runs execute: local processes or a Dask cluster.

Runs travel in chunks (a list of (point, replicate, seed) and the validated
models of the points in it); a worker simulates each run and returns its
`report.run_record` row. Chunks come back in completion order, so the caller
writes each as soon as it arrives; the result of a run never depends on which
worker ran it, nor in which order.

    with make_executor("local", workers=2) as ex:
        for results in ex.map_unordered(run_chunk, chunks): ...
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdumpsim.config.model import ModelConfig
from kdumpsim.errors import ConfigError
from kdumpsim.machine.layout import derive_seed
from kdumpsim.sweep.design import RunSpec


@dataclass(frozen=True)
class Chunk:
    """Runs sent to a worker together, with the models of their points."""
    runs: tuple[RunSpec, ...]
    models: dict[int, ModelConfig]
    vmcore_dir: str | None = None     # write the vmcore of replicate 0 of each point here
    analyse_dir: str | None = None    # run the crash tools on each run's vmcore, written here then deleted


@dataclass(frozen=True)
class RunResult:
    point: int
    replicate: int
    seed: int
    record: dict[str, Any] | None                 # report.run_record(run)
    error: tuple[str, str] | None = None          # (field, message) of a LayoutError
    vmcore: str | None = None                     # file name written, if any
    crash: str | None = None                      # the exception a run raised (a bug): its row says so
    stopped: str | None = None                    # why the chunk stopped here (a file it could not write)


ChunkFn = Callable[[Chunk], list[RunResult]]


class ExecutorLost(Exception):
    """The cluster cannot finish the work (a worker given up on, the scheduler
    gone): the sweep stops, keeping what was saved."""


def run_chunk(chunk: Chunk) -> list[RunResult]:
    """Simulate every run of a chunk (in a worker process). A run that raises
    becomes a row saying so; a file that cannot be written (a full disk) stops
    the chunk, and the runs before it still come back to be saved."""
    _freeze_startup_heap()
    out = []
    for r in chunk.runs:
        out.append(_one_run(chunk, r))
        if out[-1].stopped is not None:
            break
    return out


_frozen = False


def _freeze_startup_heap() -> None:
    """Once per process, before its first run: move what the imports built
    (~155k objects: modules, pydantic schemas) out of the collector's reach.
    A run's objects form cycles (the run, its engines, its SimPy processes),
    so the full collections that free them kept walking the imports too:
    measured (issue #19) 5.5 ms of a 65 ms big_sweep run, 1.2 ms frozen."""
    global _frozen
    if not _frozen:
        gc.collect()
        gc.freeze()
        _frozen = True


def _one_run(chunk: Chunk, r: RunSpec) -> RunResult:
    from kdumpsim.errors import LayoutError
    from kdumpsim.measure import simulate
    from kdumpsim.measure.record import run_record
    try:
        run = simulate(chunk.models[r.point], r.seed, trace=False)     # a sweep keeps no trace
        record = run_record(run)
    except LayoutError as e:
        return RunResult(r.point, r.replicate, r.seed, None, (e.field, str(e)))
    except Exception as e:  # noqa: BLE001 - a run that raises becomes a row, not the end of the sweep
        return RunResult(r.point, r.replicate, r.seed, None, crash=exception_text(e))
    try:
        vmcore = _keep_vmcore(chunk, r, run)
        if chunk.analyse_dir is not None:
            from kdumpsim.measure.analysis import analysis_record
            record.update(analysis_record(run, chunk.analyse_dir))
    except OSError as e:
        return RunResult(r.point, r.replicate, r.seed, None, stopped=f"{e.filename or 'vmcore'}: {e.strerror or e}")
    except Exception as e:  # noqa: BLE001 - as above
        return RunResult(r.point, r.replicate, r.seed, None, crash=exception_text(e))
    return RunResult(r.point, r.replicate, r.seed, record, None, vmcore)


def exception_text(e: BaseException) -> str:
    """'ZeroDivisionError: division by zero (at kdumpsim/crash/dma.py:120 in map)': what and where."""
    import traceback
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if "kdumpsim" in f.filename] or frames
    where = ""
    if ours:
        f = ours[-1]
        name = f.filename[f.filename.rfind("kdumpsim"):] if "kdumpsim" in f.filename else f.filename
        where = f" (at {name}:{f.lineno} in {f.name})"
    return f"{type(e).__name__}: {e}{where}"


def _keep_vmcore(chunk: Chunk, r: RunSpec, run: Any) -> str | None:
    if chunk.vmcore_dir is None or r.replicate != 0:
        return None
    from kdumpsim.errors import NoVmcore
    from kdumpsim.formats.vmcore import write_vmcore
    name = f"point-{r.point:05d}.vmcore"
    try:
        write_vmcore(run, Path(chunk.vmcore_dir) / name)
    except NoVmcore:
        return None            # the outcome column says why there is none
    return name


def make_chunks(runs: list[RunSpec], models: Callable[[int], ModelConfig], size: int, shuffle_seed: int,
                vmcore_dir: str | None = None, analyse_dir: str | None = None) -> Iterator[Chunk]:
    """Consecutive runs in chunks of `size` (so a chunk carries one or two
    models), in a shuffled order so that the rate, and the time left the
    progress bar shows, are not skewed by slow points bunched together. A
    chunk's models are validated when it is sent, so they are never all in
    memory at once."""
    starts = list(range(0, len(runs), size))
    random.Random(derive_seed(shuffle_seed, "chunk-order")).shuffle(starts)
    for i in starts:
        part = tuple(runs[i:i + size])
        yield Chunk(part, {p: models(p) for p in sorted({r.point for r in part})}, vmcore_dir, analyse_dir)


def chunk_size(n_runs: int, workers: int) -> int:
    """About forty chunks per worker, at most 25 runs each (results are saved
    per chunk). Measured (issue #19): saving a chunk's Parquet part costs the
    parent ~5 ms whatever its size, sending one ~1 ms, against ~1 s of
    simulation in 25 dma_sweep runs; what costs is the last chunks' tail
    when one worker finishes before the other. dma_sweep with 648 runs on 2
    workers simulated at 1.82x one worker in chunks of 25, 1.88x in 8 and
    1.93x in 4."""
    return max(1, min(25, n_runs // max(1, workers * 40)))


# ---------------------------------------------------------------- executors
class Executor:
    """Runs `fn` over items, yielding results as they complete."""
    workers = 1
    name = "executor"
    workers = 1
    scheduler: str | None = None     # a Dask scheduler address

    def map_unordered(self, fn: ChunkFn, items: Iterable[Chunk]) -> Iterator[list[RunResult]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InlineExecutor(Executor):
    """One worker: run in this process (no pickling, plain tracebacks)."""
    name = "local"

    def map_unordered(self, fn: ChunkFn, items: Iterable[Chunk]) -> Iterator[list[RunResult]]:
        for item in items:
            yield fn(item)


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group: let the parent decide, so that a
    # worker does not die mid-chunk with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The pool ends its other workers with SIGTERM when one dies; a forked worker
    # would run the parent's handler (unwind like Ctrl-C) and print a traceback.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A parent killed outright (SIGKILL) cannot shut the pool down: its
    # workers would wait for work forever. Leave when the parent is gone.
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class LocalExecutor(Executor):
    """N local worker processes (ProcessPoolExecutor), at most 2 chunks queued per worker."""
    name = "local"

    def __init__(self, workers: int):
        self.workers = workers
        self.broken = False
        self.pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init)

    def map_unordered(self, fn: ChunkFn, items: Iterable[Chunk]) -> Iterator[list[RunResult]]:
        pending: set[Future] = set()
        queue = iter(items)
        try:
            for item in queue:
                pending.add(self.pool.submit(fn, item))
                if len(pending) >= 2 * self.workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (f.result() for f in done)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
        except BrokenProcessPool:
            self.broken = True
            raise
        finally:
            for f in pending:
                f.cancel()

    def close(self) -> None:
        if self.broken:
            # A worker killed while it held the result queue's lock leaves the others
            # blocked on it forever, and shutdown(wait=True) with them: end them.
            for proc in list(getattr(self.pool, "_processes", {}).values()):
                proc.kill()
            self.pool.shutdown(wait=False, cancel_futures=True)
            return
        self.pool.shutdown(wait=True, cancel_futures=True)


RESULT_TIMEOUT = 60       # s to fetch a finished chunk's rows from its worker


# A worker runs one CPU-bound chunk at a time: its statistical profiler (a
# stack sample every 10 ms) and its event loop's 20 ms ticks only take the
# GIL from the simulation. Measured (issue #19, 648 dma_sweep runs, 2 workers
# on 2 cores): 40.0 -> 44.4 runs/s. The nanny's MALLOC_TRIM_THRESHOLD_=65536
# (set before it spawns a worker, and into its own process) turns off glibc's
# sliding mmap threshold: every numpy array of a run over 128 KiB is then a
# fresh mmap, faulted in page by page. Measured: 120 dma_sweep runs took
# 1.65 s of CPU in a worker with it, 1.25 s without (as in a plain process);
# a run's memory is flat, so there is nothing for the trimming to return.
WORKER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "5s",
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
}
# The same settings for workers started by hand (`dask worker`; the README's command).
WORKER_ENV = {
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
    "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s",
    "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "5s",
    "DASK_DISTRIBUTED__WORKER__MEMORY__MONITOR_INTERVAL": "5s",
    "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": '{"MALLOC_TRIM_THRESHOLD_": None}',
}


class DaskExecutor(Executor):
    """A dask.distributed cluster: the one at `scheduler` (an address such as
    tcp://127.0.0.1:8786, or a scheduler file), else a LocalCluster of
    `workers` single-threaded processes started here."""
    name = "dask"

    # The client logs a traceback when its scheduler goes away; the sweep says it in one line (_result).
    QUIET = ("distributed.client", "distributed.comm")

    def __init__(self, scheduler: str | None, workers: int):
        import logging

        from distributed import Client, LocalCluster
        self.cluster = None
        self.levels = {name: logging.getLogger(name).level for name in self.QUIET}
        for name in self.QUIET:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        try:
            if scheduler is None:
                import dask
                with dask.config.set(WORKER_CONFIG):
                    self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                dashboard_address=None)
                self.client = Client(self.cluster)
            elif Path(scheduler).is_file():
                self.client = Client(scheduler_address(scheduler), timeout="20s")
            else:
                self.client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as e:
            self._loud()
            raise ConfigError("--scheduler", "", f"cannot connect to the Dask scheduler {scheduler}: "
                              f"{_text(e)}") from None
        self.scheduler = self.client.scheduler.address
        self._check_workers()

    def _check_workers(self) -> None:
        """Every worker must import this kdumpsim (same venv), or results would differ or fail."""
        from kdumpsim import __version__
        self.client.wait_for_workers(1, timeout=60)
        try:
            versions = self.client.run(_worker_version)
        except ModuleNotFoundError as e:
            raise ConfigError("--scheduler", "", f"a Dask worker cannot import kdumpsim ({e}): start the "
                              "workers from this project's venv (.venv/bin/dask worker ...)") from None
        bad = {w: v for w, v in versions.items() if v != __version__}
        if bad:
            raise ConfigError("--scheduler", "", f"Dask workers run another kdumpsim: {bad} (here {__version__})")
        self.workers = len(versions)

    def map_unordered(self, fn: ChunkFn, items: Iterable[Chunk]) -> Iterator[list[RunResult]]:
        from distributed import as_completed
        try:
            futures = [self.client.submit(fn, item, pure=False) for item in items]
        except (OSError, TimeoutError) as e:
            raise ExecutorLost(f"the Dask scheduler {self.scheduler} cannot be reached ({_text(e)})") from None
        try:
            for fut in as_completed(futures):
                yield self._result(fut)
        finally:
            with contextlib.suppress(Exception):
                self.client.cancel([f for f in futures if not f.done()])

    def _result(self, fut: Any) -> list[RunResult]:
        """A chunk's rows, or ExecutorLost when the cluster lost it."""
        from distributed import KilledWorker
        if fut.status == "cancelled" or self.client.status in ("closing", "closed"):
            raise ExecutorLost(f"the Dask scheduler {self.scheduler} went away (its tasks were cancelled)")
        try:
            return fut.result(timeout=RESULT_TIMEOUT)
        except KilledWorker as e:
            raise ExecutorLost(f"the Dask scheduler gave up on a chunk: the workers running it died "
                               f"(KilledWorker: {_text(e)})") from None
        except (OSError, TimeoutError) as e:
            raise ExecutorLost(f"the Dask scheduler {self.scheduler} went away ({_text(e)})") from None
        except Exception as e:
            if type(e).__name__ in ("CancelledError", "FutureCancelledError", "CommClosedError"):
                raise ExecutorLost(f"the Dask scheduler {self.scheduler} went away ({type(e).__name__})") from None
            raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()
        self._loud()

    def _loud(self) -> None:
        import logging
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)


def _text(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def _worker_version() -> str:
    import kdumpsim
    return kdumpsim.__version__


def make_executor(kind: str, workers: int, scheduler: str | None = None) -> Executor:
    if kind == "dask":
        return DaskExecutor(scheduler, workers)
    if workers <= 1:
        return InlineExecutor()
    return LocalExecutor(workers)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def scheduler_address(path_or_address: str) -> str:
    """The address in a scheduler file, or the argument itself. A file that is
    not one is a ConfigError (distributed would retry it until its timeout,
    then fail with an AssertionError)."""
    p = Path(path_or_address)
    if not p.is_file():
        return path_or_address
    try:
        with p.open("rb") as f:
            data = json.loads(f.read(1 << 20).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(str(p), "", f"not a Dask scheduler file (it holds no valid JSON: {_text(e)}); "
                          "give the file `dask scheduler --scheduler-file` writes, or tcp://HOST:PORT") from None
    address = data.get("address") if isinstance(data, dict) else None
    if not isinstance(address, str) or "://" not in address:
        raise ConfigError(str(p), "address", "not a Dask scheduler file (no scheduler address such as "
                          "tcp://127.0.0.1:8786 in it)")
    return address

