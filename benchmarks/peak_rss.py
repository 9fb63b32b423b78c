"""Resident memory of this process (Linux): current RSS, peak RSS, and a reset of the peak.

Peak RSS is per process and, by default, over the process's whole life, so the peak of an inference would be
hidden behind the peak of building the model (loading a state_dict briefly holds two copies of the weights).
Writing "5" to /proc/self/clear_refs (Linux >= 4.0) sets the peak (VmHWM) back to the current RSS; the peak read
afterwards is then the peak of what ran since. Where the kernel refuses, `reset_peak()` returns False and the peak
stays the lifetime peak: callers record which of the two they measured.

RSS counts pages actually touched (an untouched allocation costs nothing) and memory the allocator keeps after a
free; it is what the operating system charges the process, not what tensors hold at a given moment. The kernel
batches its RSS counters (up to 64 pages per thread), so the figures are good to a few hundred kB.
"""
STATUS = "/proc/self/status"


def _status_bytes(field):
    try:
        with open(STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError as exc:
        raise RuntimeError(f"peak RSS needs Linux's {STATUS}: {exc}") from exc
    raise RuntimeError(f"{STATUS} has no {field} line")


def current_rss_bytes():
    """Resident set size now (VmRSS)."""
    return _status_bytes("VmRSS")


def peak_rss_bytes():
    """Largest resident set size since the process started, or since the last successful `reset_peak()` (VmHWM)."""
    return _status_bytes("VmHWM")


def reset_peak():
    """Sets the peak RSS to the current RSS; False if the kernel does not allow it (the peak stays the lifetime
    peak)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    # Some kernels accept the write and ignore it: trust the reset only if the peak came down to the current RSS.
    return peak_rss_bytes() <= current_rss_bytes() + 1024 * 1024
