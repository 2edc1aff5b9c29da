"""How many threads cnnlab runs at once: the cores that are free now, not all there are.

On a shared machine (students' laptops running a browser, servers running other jobs) a
thread per core makes every thread wait for a core: a run with two threads and one busy
process on a 2-core machine took 2.1x as long as the same run on one thread, and 14x
under heavier load (issue 13). So the policy counts the cores this process may use
(``sched_getaffinity``) and subtracts what other processes used lately:

    others = (CPU time the whole machine was busy - CPU time of this process) / wall time

read from ``/proc/stat`` and ``time.process_time`` (no sampling thread: the interval is
the time between two checks, at most :data:`RECHECK_SECONDS` apart while training runs;
the first check, with no interval behind it, counts the runnable threads of
``/proc/loadavg`` that are not this process's own (``/proc/self/task``), or waits
:data:`FIRST_SAMPLE_SECONDS`; that instant's count is measured again after
:data:`FIRST_RECHECK_SECONDS`). ``free = cores - others``, rounded to
whole cores, at least 1. Without
``/proc/stat`` (macOS, Windows) the 1-minute load average stands in for ``others``.

The count decides how many *workers* run the shards of a data-parallel step and how many
threads a large product and BLAS get. It never changes the *shards* (how a batch is
split), so results do not depend on the load: a step of 2 shards on 1 free core runs
them one after the other, with the same bits.
"""

from __future__ import annotations

import os
import threading
import time

#: Without /proc/loadavg, wait this long for the first measurement (no history yet).
FIRST_SAMPLE_SECONDS = 0.05
#: Re-measure when the last measurement is older than this.
RECHECK_SECONDS = 2.0
#: ... and this soon after the first estimate, an instant's runnable threads: a process that
#: was starting just then (a compiler, another job's import) held a short run at one worker
#: for its first RECHECK_SECONDS.
FIRST_RECHECK_SECONDS = 0.25


def affinity_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _env_cap() -> int | None:
    """``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` as a cap on cnnlab's threads too."""
    caps = []
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            caps.append(int(value))
    return min(caps) if caps else None


def _machine_busy_seconds(path: str = "/proc/stat") -> float | None:
    """CPU seconds all cores of the machine spent busy since boot (None: not Linux)."""
    try:
        with open(path, encoding="ascii") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(value) for value in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    # guest time is already counted in user/nice
    busy = sum(ticks[:8]) - idle
    return busy / os.sysconf("SC_CLK_TCK")


def others_busy_cores(previous: Sample, current: Sample) -> float:
    """Cores other processes kept busy, on average, between two samples."""
    elapsed = current.wall - previous.wall
    if current.busy is None or previous.busy is None or elapsed <= 0:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return max(0.0, load - 1.0)  # ourselves: about one runnable thread
    used = (current.busy - previous.busy) - (current.own - previous.own)
    return max(0.0, used / elapsed)


def _runnable_now(path: str = "/proc/loadavg") -> int | None:
    """Threads runnable on the machine at this instant (the 4th field "R/T"), or None."""
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


def _own_running_threads(path: str = "/proc/self/task") -> int | None:
    """This process's threads that are running or runnable now (state R), or None."""
    try:
        tasks = os.listdir(path)
    except OSError:
        return None
    running = 0
    for task in tasks:
        try:
            with open(f"{path}/{task}/stat", encoding="ascii", errors="replace") as handle:
                # the state follows the command name, which is in parentheses and may hold spaces
                running += handle.read().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return running


def free_cores(others: float, cores: int) -> int:
    """Whole cores left for this process when other processes use ``others`` cores."""
    # Rounded to the nearest core: two threads against a process using half a core still
    # get 1.5 cores (more than one thread gets); against 0.7 cores, one thread gets as much.
    return max(1, min(cores, int(cores - others + 0.5)))


class Sample:
    """Wall time, this process's CPU time and the machine's busy CPU time, now."""

    __slots__ = ("wall", "own", "busy")

    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.own = time.process_time()
        self.busy = _machine_busy_seconds()


class Policy:
    """The measured free cores, refreshed at most every :data:`RECHECK_SECONDS`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: Sample | None = None
        self._free: int | None = None
        self._recheck = RECHECK_SECONDS  # the age at which the last measurement is redone
        self.others = 0.0  # cores other processes used in the last interval

    def _measure(self, previous: Sample, current: Sample) -> int:
        self.others = others_busy_cores(previous, current)
        return free_cores(self.others, affinity_cores())

    def free(self, refresh: bool = False) -> int:
        """Cores this process can use now (cached for :data:`RECHECK_SECONDS`)."""
        now = time.monotonic()
        if (not refresh and self._free is not None and self._last is not None
                and now - self._last.wall < self._recheck):
            return self._free
        with self._lock:
            if self._last is None:
                self._last = Sample()
                runnable = _runnable_now()
                own = _own_running_threads()
                if runnable is not None and own is not None:
                    # this process's own running threads (the caller, BLAS's or OpenMP's
                    # spinning workers) are not other processes
                    self.others = max(0.0, float(runnable - max(own, 1)))
                    self._free = free_cores(self.others, affinity_cores())
                    self._recheck = FIRST_RECHECK_SECONDS
                    return self._free
                time.sleep(FIRST_SAMPLE_SECONDS)
            elif not refresh and self._free is not None and now - self._last.wall < self._recheck:
                return self._free
            current = Sample()
            self._free = self._measure(self._last, current)
            self._last = current
            self._recheck = RECHECK_SECONDS
        return self._free


_POLICY = Policy()


def workers(limit: int | None = None) -> int:
    """Threads to run now: the free cores, capped by ``limit`` and the BLAS variables."""
    count = _POLICY.free()
    cap = _env_cap()
    if cap is not None:
        count = min(count, cap)
    if limit is not None:
        count = min(count, limit)
    return max(1, count)


def product_threads() -> int:
    """Threads for one large product outside data-parallel shards."""
    return workers()


def describe() -> dict:
    """For ``cnnlab info`` and run summaries: cores, what others use, threads granted."""
    free = _POLICY.free()
    return {"cores": affinity_cores(), "others_busy_cores": round(_POLICY.others, 2),
            "free_cores": free, "cap": _env_cap()}
