"""Chat with Tide over HTTP with the SDK's small client: one whole reply, then one streamed.

Runs as-is against `make serve`:  .venv/bin/python examples/chat_http.py [--url http://127.0.0.1:8000] [--model tiny]
(or set TIDE_URL). The tiny default model answers with random text: it is there to exercise the real path.
"""

from __future__ import annotations

import argparse
import os
import sys

from serving.sdk import ModelNotFound, TideAPIError, TideClient


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("TIDE_URL", "http://127.0.0.1:8000"), help="Tide endpoint")
    p.add_argument("--model", default="tiny", help="served model name")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--ignore-eos", action="store_true", help="always generate --max-tokens tokens")
    args = p.parse_args()
    messages = [{"role": "user", "content": "Write one sentence about tides."}]
    with TideClient(args.url) as tide:
        try:
            print("models:", ", ".join(m.id for m in tide.models().data))
            reply = tide.chat(args.model, messages, max_tokens=args.max_tokens, temperature=0,
                              ignore_eos=args.ignore_eos)
            print(f"reply ({reply.usage.completion_tokens} tokens, {reply.choices[0].finish_reason}):",
                  reply.choices[0].message.content)
            print("streamed: ", end="", flush=True)
            for chunk in tide.chat_stream(args.model, messages, max_tokens=args.max_tokens, temperature=0,
                                          ignore_eos=args.ignore_eos):
                for choice in chunk.choices:
                    print(choice.delta.content or "", end="", flush=True)
            print()
        except ModelNotFound as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except TideAPIError as e:
            print(f"error: HTTP {e.status}: {e}", file=sys.stderr)
            return 1
        except Exception as e:  # ConnectionFailed and friends
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
