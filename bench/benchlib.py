"""Helpers the benchmarks under bench/ share: building pangate, running the gateway, and the
JSON case format of DESIGN.md."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def need(tools, who):
    """Installs missing Debian packages ({command: package}) when root, else exits."""
    missing = [pkg for tool, pkg in tools.items() if not shutil.which(tool)]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)
    still = [tool for tool in tools if not shutil.which(tool)]
    if still:
        sys.exit(f"{who}: needs {', '.join(still)} (apt-get install {' '.join(tools[t] for t in still)})")


def build():
    """The release binary, built now; PANGATE_BIN names another one instead (A/B runs)."""
    if os.environ.get("PANGATE_BIN"):
        return os.environ["PANGATE_BIN"]
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "pangate", "--bin", "pangate"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release", "pangate")


class Gateway:
    """`pangate up` on a config, ready once its socket accepts; stopped with SIGTERM."""

    def __init__(self, binary, config, sock, prefix=()):
        self.sock = sock
        self.p = subprocess.Popen([*prefix, binary, "up", "--config", config, "--log-level", "warn"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(sock)
                s.close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        sys.exit("the gateway did not start")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()


def case(name, metric, ours, peer, peer_name, lower_is_better=False, **extra):
    """One case of the JSON contract: ratio above 1 means pangate is ahead."""
    ratio = (peer / ours if lower_is_better else ours / peer) if ours and peer else None
    c = {"case": name, "metric": metric, "pangate": round(ours, 2), "peer": round(peer, 2), "peer_name": peer_name,
         "ratio": round(ratio, 3) if ratio else None, **extra}
    log(json.dumps(c))
    return c
