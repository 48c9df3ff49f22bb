"""Ray Serve LLM (`ray.serve.llm.build_openai_app`) on the same model and engine args: the peer baseline.

Run by bench_serving.py; needs the `bench` extra (pyarrow, pandas, ...), never `ray[llm]` on CPU machines.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--engine-args", required=True, help="JSON of vLLM engine kwargs")
    p.add_argument("--env", default="{}", help="JSON of env vars for the engine")
    a = p.parse_args()

    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from serving.loopback import loopback_only

    loopback_only()  # Ray on 127.0.0.1 only, as for Tide (Serve LLM's own replica gRPC still binds [::])
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=os.cpu_count(), log_to_driver=False)
    cfg = LLMConfig(
        model_loading_config={"model_id": "tiny", "model_source": a.model},
        accelerator_config={"kind": "cpu"},
        deployment_config={"ray_actor_options": {"num_cpus": 0},
                           "autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
        engine_kwargs=json.loads(a.engine_args),
        runtime_env={"env_vars": json.loads(a.env)},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    serve.run(build_openai_app({"llm_configs": [cfg]}), blocking=False)
    print("RAYLLM READY", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
