"""Open-model load test of POST /tag on the platform server.

    flock /tmp/mlsys-heavy.lock .venv/bin/python benchmarks/tagger_loadtest.py \
        /work/data/garments artifacts/tagger --rate 10 --duration 60 \
        --out artifacts/tagger/loadtest.json

Starts the real server (`mlsys.platform.server.serve`, uvicorn, 2 workers, the tagger
component only), then replays test-set JPEGs as raw bodies through the same open-model
generator as `mlsys loadtest` (`mlsys.compose.loadtest`): each request is sent at its
scheduled time and its latency counted from that time, so a stalled server cannot hide behind
a waiting client. Writes the summary JSON and the latency PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mlsys.compose.loadtest import http_post, parse_url, plot_run, run_once
from mlsys.compose.stack import stop_process, wait_ready
from mlsys.tagger.schema import open_garments


def start_server(model_dir: str, port: int, workers: int) -> subprocess.Popen[bytes]:
    code = (
        "from mlsys.platform.server import serve; from mlsys.platform.settings import Settings; "
        f"serve(Settings(tagger_model_dir={str(Path(model_dir).resolve())!r}, "
        "max_body_bytes=10*1024*1024, log_requests=False), "
        f"factory='mlsys.compose.app:app_from_env', host='127.0.0.1', port={port}, "
        f"workers={workers})"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], env={**os.environ}, start_new_session=True
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("data_dir")
    ap.add_argument("model_dir")
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="summary JSON (a PNG is written beside it)")
    args = ap.parse_args()
    data = open_garments(args.data_dir)
    url = f"http://127.0.0.1:{args.port}"
    target = parse_url(url)
    payloads = [
        http_post(target, "/tag", data.image_bytes(u), "image/jpeg") for u in data.test_uuids[:200]
    ]
    server = start_server(args.model_dir, args.port, args.workers)
    try:
        wait_ready(url, server)
        result, summary = run_once(url, "", args.rate, args.duration, payloads=payloads)
    finally:
        stop_process(server)
    summary["workers"] = args.workers
    summary["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps(summary, indent=2))
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps(summary, indent=2))
        plot_run(result, summary, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
