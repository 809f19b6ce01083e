"""Open a run's analysis/report.html in a real browser (headless Chromium, Debian's package)
with the network cut off, and save a screenshot: an example of checking the report as a reader
sees it, offline.

    apt-get install -y chromium
    python -m benchmarks.render_report results/smoke [--out /tmp/report.png] [--height 2400]

Prints the screenshot's path and the HTML's size. The proxy is pointed at an unroutable address
so any request the page made for a remote resource would fail (the page needs none).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def render(html: Path, out: Path, *, width: int = 1280, height: int = 2400) -> Path:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                        "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                        f"--user-data-dir={profile}", "--hide-scrollbars",
                        f"--window-size={width},{height}", f"--screenshot={out}",
                        html.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    if not out.is_file():
        raise SystemExit(f"chromium wrote no screenshot to {out}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/report.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args(argv)
    html = args.run_dir / "analysis" / "report.html"
    if not html.is_file():
        raise SystemExit(f"{html} does not exist: run `python main.py --phase analysis` first")
    path = render(html, args.out, width=args.width, height=args.height)
    print(f"{path} ({html} is {html.stat().st_size / 2 ** 20:.2f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
