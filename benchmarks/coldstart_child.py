"""Cold-start child of ``bench_process``: a fresh interpreter that builds a default Firewall
(warm-up off, cache off) and screens twice; prints one JSON line of timestamps."""

import time

t_start = time.time()

import json  # noqa: E402  (everything below is part of what the cold start measures)

import torch  # noqa: E402, F401  (what Firewall() would import on first use)
import transformers  # noqa: E402, F401

from alknet_firewall.config import load_settings  # noqa: E402
from alknet_firewall.firewall import Firewall  # noqa: E402

t_import = time.time()
fw = Firewall(load_settings(None, pool={"warmup": False, "cache_size": 0}))
t_load = time.time()
v = fw.screen("hello")
t_first = time.time()
fw.screen("hello again, how are you?")
t_second = time.time()
fw.close()
print(
    json.dumps(
        {
            "t_start": t_start,
            "t_import": t_import,
            "t_load": t_load,
            "t_first": t_first,
            "t_second": t_second,
            "action": v.action,
            "error": v.error,
            "workers": fw.settings.pool.workers,
            "threads": fw.settings.pool.threads_per_worker,
        }
    )
)
