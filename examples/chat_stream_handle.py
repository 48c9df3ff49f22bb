"""Call a Tide model through its Serve handle (no HTTP), from a driver attached to the cluster.

Runs as-is against `make serve` on this machine (which started Ray):
    .venv/bin/python examples/chat_stream_handle.py [--address auto] [--model tiny]
On a cluster, run it on the head (`ray exec CLUSTER.yaml ...`) or pass the head's address.
"""

from __future__ import annotations

import argparse
import os
import sys

from serving.sdk import ModelNotFound, TideError, connect, get_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "auto"), help="Ray cluster (default: auto)")
    p.add_argument("--model", default="tiny")
    p.add_argument("--max-tokens", type=int, default=24)
    args = p.parse_args()
    import ray

    try:
        connect(args.address)  # ray.init with the cluster's auth token
    except Exception as e:
        print(f"error: cannot connect to Ray at {args.address} (is `make serve` running?): {e}", file=sys.stderr)
        return 1
    try:
        model = get_model(args.model)
        messages = [{"role": "user", "content": "Say something about the sea."}]
        print(f"{model}: ", end="", flush=True)
        finish = None
        for chunk in model.chat_stream(messages, max_tokens=args.max_tokens, temperature=0):
            for choice in chunk.choices:
                print(choice.delta.content or "", end="", flush=True)
                finish = choice.finish_reason or finish
        print(f"\n[finish: {finish}]")
        done = model.complete("The tide", max_tokens=8, temperature=0)
        print(f"completion: {done.choices[0].text!r} ({done.usage.total_tokens} tokens)")
    except ModelNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TideError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
