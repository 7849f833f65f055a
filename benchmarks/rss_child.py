"""Peak-RSS child of ``bench_process``: a fresh process that builds a Firewall and screens the
messages of a JSON file concurrently; prints one JSON line of memory figures.

    python benchmarks/rss_child.py MESSAGES.json WORKERS THREADS
"""

import json
import sys

import psutil

from alknet_firewall.config import load_settings
from alknet_firewall.firewall import Firewall


def vm_hwm() -> int:
    # Peak RSS of this process image (unlike ru_maxrss, not inherited from the forking parent).
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as fh:
        msgs = json.load(fh)
    p = psutil.Process()
    fw = Firewall(
        load_settings(
            None,
            pool={
                "workers": int(sys.argv[2]),
                "threads_per_worker": int(sys.argv[3]),
                "cache_size": 0,
            },
        )
    )
    rss_loaded = p.memory_info().rss
    res = fw.screen_many(msgs, return_exceptions=True)
    errors = sum(1 for r in res if isinstance(r, BaseException) or r.error)
    rss_end = p.memory_info().rss
    fw.close()
    print(
        json.dumps(
            {
                "rss_loaded": rss_loaded,
                "rss_end": rss_end,
                "errors": errors,
                "vm_hwm": vm_hwm(),
                "n": len(msgs),
            }
        )
    )


if __name__ == "__main__":
    main()
