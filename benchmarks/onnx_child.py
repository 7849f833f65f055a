"""ONNX Runtime child of ``bench_onnx``: a fresh process that screens with ``model.backend: onnx``
(torch is never imported); prints one JSON line: start-up timestamps, memory, and whether torch
got loaded.

    python benchmarks/onnx_child.py MESSAGES.json PRECISION
"""

import time

t_start = time.time()

import json  # noqa: E402
import sys  # noqa: E402

from alknet_firewall.config import load_settings  # noqa: E402
from alknet_firewall.firewall import Firewall  # noqa: E402

t_import = time.time()


def status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as fh:
        msgs = json.load(fh)
    fw = Firewall(
        load_settings(
            None,
            model={"backend": "onnx", "onnx": {"precision": sys.argv[2]}},
            pool={"warmup": False, "cache_size": 0},
        )
    )
    t_load = time.time()
    v = fw.screen("hello")
    t_first = time.time()
    rss_loaded = status("VmRSS")
    res = fw.screen_many_safe(msgs)
    errors = sum(1 for r in res if isinstance(r, BaseException) or r.error)
    fw.close()
    print(
        json.dumps(
            {
                "t_start": t_start,
                "t_import": t_import,
                "t_load": t_load,
                "t_first": t_first,
                "action": v.action,
                "error": v.error,
                "n": len(msgs),
                "errors": errors,
                "rss_loaded": rss_loaded,
                "vm_hwm": status("VmHWM"),
                "torch_imported": "torch" in sys.modules,
                "transformers_imported": "transformers" in sys.modules,
            }
        )
    )


main()
