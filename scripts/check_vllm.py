"""The README's `vllm serve models/merge`, checked on a GPU machine: start the server, ask one chat
completion through the OpenAI client, print it with the timings, stop the server.

    pip install -e ".[vllm]" && python scripts/check_vllm.py models/merge [--port 8000]

Exit status 0 when the server answered with a non-empty message. The reply should be Gen Z-flavoured;
compare it with `genz-speak chat models/merge --temperature 0` on the same question.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

QUESTION = "Why is the sky blue?"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path, nargs="?", default=Path("models/merge"))
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the server to start")
    args = p.parse_args()

    import httpx
    from openai import OpenAI

    vllm = shutil.which("vllm")
    if vllm is None:
        sys.exit('vllm is not installed: pip install -e ".[vllm]"')
    cmd = [vllm, "serve", str(args.model_dir), "--port", str(args.port), "--max-model-len", "2048"]
    print("$", " ".join(cmd), flush=True)
    start = time.monotonic()
    server = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{args.port}/v1"
    try:
        while True:
            if server.poll() is not None:
                sys.exit(f"vllm serve exited with status {server.returncode} before answering")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - start > args.timeout:
                sys.exit(f"vllm serve did not answer within {args.timeout:.0f} s")
            time.sleep(2)
        ready = time.monotonic() - start
        client = OpenAI(base_url=url, api_key="unused")
        model = client.models.list().data[0].id
        t = time.monotonic()
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": QUESTION}],
            max_tokens=128,
            temperature=0.0,
            extra_body={"repetition_penalty": 1.2},
        )
        answer = reply.choices[0].message.content or ""
        print(f"\nserver ready in {ready:.1f} s; model id {model!r}; answer in {time.monotonic() - t:.2f} s")
        print(f"usage: {reply.usage}")
        print(f"\nuser: {QUESTION}\nassistant: {answer}\n")
        return 0 if answer.strip() else 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
