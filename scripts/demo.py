"""The main job end to end, as an operator would run it, in a scratch folder.

Two sites are simulated with two state folders: the connected build site (keys, bundle build)
and the air-gapped site (trust store, verify, install, serve, backup, audit). Every step is a
real `pai` command run as a subprocess; the demo stops at the first failure with its output.

Usage: ./dev.sh demo [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAI = [sys.executable, "-m", "pai.cli"]


class Demo:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.build_home = workdir / "build-site"
        self.site_home = workdir / "air-gapped-site"

    def pai(self, *args: str, home: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PAI_HOME": str(home)}
        shown = " ".join(["pai", *args])
        print(f"\n\033[1m$ {shown}\033[0m   (PAI_HOME={home.name})", flush=True)
        started = time.monotonic()
        proc = subprocess.run([*PAI, *args], env=env, text=True, capture_output=True)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        print(f"   [{time.monotonic() - started:.1f}s, exit {proc.returncode}]")
        if check and proc.returncode != 0:
            raise SystemExit(f"demo failed at: {shown}")
        return proc


def prepare_spec(demo: Demo, documents: int = 2000) -> Path:
    """The example spec beside a synthetic CRM data set (a subset, to keep the demo short)."""
    sys.path.insert(0, str(ROOT))
    from pai.crm.synthetic import write

    folder = demo.workdir / "spec"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "examples" / "demo-bundle.toml", folder / "demo-bundle.toml")
    data = write(folder / "data", total=documents)
    print(f"\nsynthetic CRM data: {documents} documents in {data}")
    return folder / "demo-bundle.toml"


def run(demo: Demo) -> None:
    build, site = demo.build_home, demo.site_home
    demo.pai("keys", "init", home=build)
    demo.pai("keys", "trust", "add", str(build / "keys" / "root.pub"), home=site)
    demo.pai("keys", "trust", "list", home=site)
    # Build site: the demo bundle (int8 MiniLM, FAISS index over CRM data, wheels, SBOM).
    spec = prepare_spec(demo)
    bundle = demo.workdir / "crm-demo-1.0.0.pai"
    demo.pai("bundle", "build", str(spec), "-o", str(bundle), home=build)
    # Air-gapped site: verify every byte, then look inside.
    demo.pai("bundle", "verify", str(bundle), home=site)
    demo.pai("bundle", "inspect", str(bundle), home=site)
    demo.pai("bundle", "inspect", "--sbom", str(bundle), home=site)
    # Air-gapped site: provision a node over SSH with Ansible from the bundle (root only).
    install_steps(demo, bundle)
    # Air-gapped site: serve the verified bundle, call it with a token, stop it.
    serve_steps(demo, bundle)
    # Disaster recovery: the operator's identity stays off the node; cron needs only the recipient.
    identity = demo.workdir / "operator" / "backup-identity.txt"
    made = demo.pai("backup", "keygen", "-o", str(identity), "--json", home=site)
    recipient = json.loads(made.stdout)["recipient"]
    repo = demo.workdir / "backup-repo"
    demo.pai("backup", "create", "--repo", str(repo), "-r", recipient, home=site)
    demo.pai("backup", "verify", "latest", "--repo", str(repo), "-i", str(identity), home=site)
    # The compliance officer: the log now holds the daemon's requests and the backups.
    demo.pai("audit", "checkpoint", home=site)
    demo.pai("audit", "verify", home=site)
    report = demo.workdir / "audit-report.html"
    demo.pai("audit", "export", "--format", "html", "-o", str(report), home=site)


def install_steps(demo: Demo, bundle: Path) -> None:
    """`pai install` and `pai verify-node` against one real SSH node made on this machine.

    The node is a network namespace with its own sshd and a debootstrap'd Debian root (the
    test suite's host helper, cached after the first run), reachable only over a bridge. It
    needs root; without it the step says so and the demo goes on.
    """
    sys.path.insert(0, str(ROOT))
    from tests.integration import hosts

    try:
        hosts.require_root_tools()
    except hosts.LabError as exc:
        print(f"\n(skipping `pai install` on a test node: {exc})")
        return
    print("\n\033[1m# making one SSH node (netns + sshd + Debian root) for `pai install`\033[0m")
    with hosts.lab(1) as lab:
        inventory = lab.inventory(demo.workdir / "hosts.ini")
        demo.pai("install", str(bundle), "-i", str(inventory), home=demo.site_home)
        demo.pai("verify-node", "-i", str(inventory), home=demo.site_home)
        node = lab.hosts[0]
        ready = lab.ssh(node, "curl -s http://127.0.0.1:8400/readyz")
        print(f"node {node.name} ({node.address}) /readyz: {ready.stdout.strip()[:200]}")


def serve_steps(demo: Demo, bundle: Path) -> None:
    """`pai serve` in the background on the bundle; a token; an embedding; a search; SIGTERM."""
    import signal
    import urllib.request

    site = demo.site_home
    demo.pai("token", "keygen", home=site)
    issued = demo.pai(
        "token", "issue", "--sub", "crm-app", "--tenant", "northwind",
        "--scopes", "embed,search", "--ttl", "1h", home=site,
    )  # fmt: skip
    token = issued.stdout.strip().splitlines()[-1]
    print(f"\n\033[1m$ pai serve --bundle {bundle.name} --port 0 &\033[0m", flush=True)
    log = (demo.workdir / "serve.log").open("w")
    daemon = subprocess.Popen(
        [*PAI, "serve", "--json", "--bundle", str(bundle), "--port", "0"],
        env={**os.environ, "PAI_HOME": str(site)}, stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    try:
        assert daemon.stdout is not None
        ready = daemon.stdout.readline()
        if not ready:
            raise SystemExit(f"demo failed: pai serve did not start (see {log.name})")
        print(ready.strip())
        url = f"http://127.0.0.1:{json.loads(ready)['port']}"

        def post(path: str, body: dict[str, object]) -> dict[str, object]:
            request = urllib.request.Request(
                url + path, data=json.dumps(body).encode(), method="POST",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )  # fmt: skip
            with urllib.request.urlopen(request, timeout=60) as response:
                return dict(json.loads(response.read()))

        embedded = post("/v1/embeddings", {"model": "minilm", "input": ["renewal quote", "hi"]})
        data = embedded["data"]
        assert isinstance(data, list)
        print(
            f"POST /v1/embeddings -> {len(data)} vectors of {len(data[0]['embedding'])} "
            f"floats from {embedded['model']}, usage {embedded['usage']}"
        )
        found = post("/v1/indexes/crm/search", {"query": "invoice dispute", "k": 3})
        hits = found["data"]
        assert isinstance(hits, list) and hits, "the search found nothing"
        for hit in hits:
            print(f"  {hit['score']:.3f}  {hit['id']}  {str(hit['text'])[:70]}")
        demo.pai("doctor", home=site)
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=120)
        log.close()
        print(f"$ kill -TERM {daemon.pid}   -> {out.strip()} exit {daemon.returncode}")
    if daemon.returncode != 0:
        raise SystemExit("demo failed: pai serve did not stop cleanly")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="Folder for the demo (default: a temp dir).")
    parser.add_argument("--keep", action="store_true", help="Keep the workdir afterwards.")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pai-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run(Demo(workdir))
        print("\n\033[1;32mdemo passed\033[0m")
    finally:
        if args.keep or args.workdir:
            print(f"demo files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
