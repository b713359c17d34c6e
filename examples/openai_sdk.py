"""Hatchery through the official ``openai`` SDK: models, a completion, a streamed chat.

    pip install openai
    python examples/openai_sdk.py --base-url http://127.0.0.1:8000 --model bdh-shakespeare

Any OpenAI-compatible client works the same way: point its base URL at ``<server>/v1``.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

try:
    import openai
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("this example needs the openai package: pip install openai")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default="none", help="Any value when auth is off.")
    parser.add_argument("--model", default=None, help="Default: the server's default model.")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


def default_model(base_url: str, api_key: str) -> str:
    """The server's default model, from Hatchery's ``/info`` (not part of the OpenAI API)."""
    request = urllib.request.Request(
        base_url.rstrip("/") + "/info", headers={"Authorization": f"Bearer {api_key}"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return str(json.load(answer)["default_model"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    client = openai.OpenAI(base_url=args.base_url.rstrip("/") + "/v1", api_key=args.api_key)
    with client:
        models = [model.id for model in client.models.list()]
        print("models:", ", ".join(models))
        model = args.model or default_model(args.base_url, args.api_key)
        print("using:", model)

        completion = client.completions.create(
            model=model, prompt=args.prompt, max_tokens=args.max_tokens, seed=args.seed
        )
        tokens = completion.usage.completion_tokens if completion.usage else "?"
        print(f"\n--- completion ({tokens} tokens) ---")
        print(args.prompt + completion.choices[0].text)

        print("\n--- streamed chat ---")
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": args.prompt}],
            max_tokens=args.max_tokens,
            seed=args.seed,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
            usage = chunk.usage or usage
        print(f"\n--- {usage.completion_tokens if usage else '?'} tokens streamed ---")
    return 0


if __name__ == "__main__":
    sys.exit(main())
