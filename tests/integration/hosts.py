"""Real SSH test hosts on this machine: one network namespace + sshd + root filesystem each.

A *lab* is a set of hosts on one bridge that the tests make and tear down themselves:

* one debootstrap'd minimal Debian root filesystem, built once and cached (keyed by suite,
  variant and package list) under ``/var/cache/pai-test-rootfs``;
* per host an overlay mount of that rootfs (so hosts share nothing they write), ``/proc``
  and ``/dev`` mounted in, fresh host keys (``ssh-keygen -A``), key-only root login with a key
  the lab makes, and ``sshd -D`` started as
  ``ip netns exec NS unshare --mount --uts chroot ROOT sshd``;
* per host a network namespace with a veth into the lab's bridge, an address in
  ``10.231.K.0/24`` and *no default route*: the hosts reach the control node and each other,
  nothing beyond the bridge.

Everything the lab creates is named ``pt<id>…`` and recorded in ``/run/pai-test-hosts/<id>/``
with the pid of the test process; :func:`cleanup_stale` removes the leftovers of runs whose
process is gone (a killed test run), and :meth:`Lab.close` removes a lab's own, also after a
failure. Nothing is removed that the lab did not create.

Requires root, ``debootstrap``, ``ip`` and ``ssh-keygen``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "bookworm"
VARIANT = "minbase"
ROOTFS_PACKAGES = (
    "python3",
    "python3-venv",
    "openssh-server",
    "iproute2",
    "procps",
    "nftables",
    "curl",
)
CACHE = Path(os.environ.get("PAI_TEST_ROOTFS_CACHE", "/var/cache/pai-test-rootfs"))
STATE = Path(os.environ.get("PAI_TEST_HOSTS_STATE", "/run/pai-test-hosts"))
PREFIX = "pt"
NET = "10.231"


class LabError(RuntimeError):
    """The machine cannot make test hosts (not root, a tool missing, a command failed)."""


def _run(*args: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc  # type: ignore[no-any-return]


def require_root_tools() -> None:
    """Fail loudly (never skip) when the machine cannot make hosts: CI runs as root."""
    if os.geteuid() != 0:
        raise LabError("the provisioning integration tests need root (namespaces, mounts)")
    for tool in ("debootstrap", "ip", "ssh-keygen", "ssh", "unshare", "chroot", "mount"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} is missing; run ./dev.sh setup as root")


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (debootstrap must use the same)."""
    candidates: list[str] = []
    sources = Path("/etc/apt/sources.list.d")
    for file in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for line in file.read_text().splitlines():
            if line.startswith("URIs:"):
                candidates.extend(line.split()[1:])
    listfile = Path("/etc/apt/sources.list")
    if listfile.exists():
        for line in listfile.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb":
                uri = next((p for p in parts[1:] if not p.startswith("[")), "")
                candidates.append(uri)
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri
    return "http://deb.debian.org/debian"


def rootfs_key() -> str:
    text = f"{SUITE}|{VARIANT}|{','.join(sorted(ROOTFS_PACKAGES))}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def base_rootfs() -> Path:
    """The cached base root filesystem, built on first use (about a minute)."""
    folder = CACHE / rootfs_key()
    done = folder / "complete"
    if done.exists():
        return folder / "rootfs"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{rootfs_key()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return folder / "rootfs"
        shutil.rmtree(folder, ignore_errors=True)
        tmp = CACHE / f"{rootfs_key()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _run(
            "debootstrap",
            f"--variant={VARIANT}",
            f"--include={','.join(ROOTFS_PACKAGES)}",
            SUITE,
            str(tmp / "rootfs"),
            debian_mirror(),
            timeout=900,
        )
        # openssh-server's postinst made host keys: every host must get its own.
        for key in (tmp / "rootfs/etc/ssh").glob("ssh_host_*"):
            key.unlink()
        (tmp / "rootfs/var/cache/apt/archives").mkdir(parents=True, exist_ok=True)
        for deb in (tmp / "rootfs/var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        tmp.rename(folder)
        done.write_text(json.dumps({"suite": SUITE, "packages": list(ROOTFS_PACKAGES)}))
    return folder / "rootfs"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Host:
    """One test host: its names, address and sshd process."""

    name: str
    netns: str
    veth: str
    address: str
    root: Path
    upper: Path
    sshd_pid: int = 0

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host (its netns and root), as root, outside of SSH."""
        return _run(
            "ip", "netns", "exec", self.netns, "chroot", str(self.root), *command, check=check
        )


@dataclass
class Lab:
    """A bridge with hosts; use :func:`lab` to make one."""

    lab_id: str
    bridge: str
    subnet: str
    folder: Path
    hosts: list[Host] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    @property
    def private_key(self) -> Path:
        return self.folder / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.folder / "known_hosts"

    def ssh_args(self) -> str:
        return (
            f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes "
            "-o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=10"
        )

    def inventory(self, path: Path, *, group: str = "pai_nodes", extra: str = "") -> Path:
        """Write an INI inventory of the lab's hosts (``extra`` goes under [group:vars])."""
        lines = [f"[{group}]"]
        lines += [f"{h.name} ansible_host={h.address}" for h in self.hosts]
        lines += [
            "",
            f"[{group}:vars]",
            "ansible_user=root",
            f"ansible_ssh_private_key_file={self.private_key}",
            f"ansible_ssh_common_args='{self.ssh_args()}'",
            "ansible_python_interpreter=/usr/bin/python3",
            f"pai_admin_networks=['{self.subnet}.0/24']",
            f"pai_api_allowed_networks=['{self.subnet}.0/24']",
        ]
        if extra:
            lines.append(extra)
        path.write_text("\n".join(lines) + "\n")
        return path

    def ssh(self, host: Host, command: str) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on ``host`` over real SSH, as the tests' client would."""
        return _run(
            "ssh", *self.ssh_args().split(), "-i", str(self.private_key),
            f"root@{host.address}", command, check=False, timeout=60,
        )  # fmt: skip

    def record(self) -> None:
        data = {
            "pid": os.getpid(),
            "bridge": self.bridge,
            "hosts": [
                {"netns": h.netns, "veth": h.veth, "root": str(h.root), "sshd": h.sshd_pid}
                for h in self.hosts
            ],
        }
        (self.folder / "lab.json").write_text(json.dumps(data))

    def close(self) -> None:
        teardown(self.folder)


def _kill_netns(netns: str) -> None:
    """Kill every process inside ``netns`` (sshd and whatever Ansible started there)."""
    for _ in range(50):
        pids = _run("ip", "netns", "pids", netns, check=False).stdout.split()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.1)


def _umount_tree(root: str) -> None:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4]
        if target == root or target.startswith(root + "/"):
            mounts.append(target)
    for target in sorted(mounts, key=len, reverse=True):
        _run("umount", "-l", target, check=False)


def teardown(folder: Path) -> None:
    """Remove what the lab recorded in ``folder``: processes, mounts, netns, links, files."""
    record = folder / "lab.json"
    if record.exists():
        data = json.loads(record.read_text())
        for h in data["hosts"]:
            _kill_netns(h["netns"])
            if h.get("sshd"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(h["sshd"], signal.SIGKILL)
            _umount_tree(h["root"])
            _run("ip", "netns", "del", h["netns"], check=False)
            _run("ip", "link", "del", h["veth"], check=False)
        _run("ip", "link", "del", data["bridge"], check=False)
    _umount_tree(str(folder))
    shutil.rmtree(folder, ignore_errors=True)


def cleanup_stale() -> list[str]:
    """Tear down labs whose test process is gone (a killed run); return their ids."""
    removed: list[str] = []
    if not STATE.is_dir():
        return removed
    for folder in sorted(STATE.iterdir()):
        record = folder / "lab.json"
        try:
            pid = json.loads(record.read_text())["pid"] if record.exists() else 0
        except (OSError, ValueError, KeyError):
            pid = 0
        if pid and _pid_alive(pid) and pid != os.getpid():
            continue
        teardown(folder)
        removed.append(folder.name)
    return removed


def _free_subnet() -> str:
    used = _run("ip", "-o", "-4", "addr").stdout
    for k in range(1, 250):
        subnet = f"{NET}.{k}"
        if f" {subnet}." not in used:
            return subnet
    raise LabError(f"no free {NET}.K.0/24 subnet for a test bridge")


def _start_host(lab: Lab, index: int, base: Path) -> Host:
    n = index + 1
    hdir = lab.folder / f"h{n}"
    for sub in ("upper", "work", "root"):
        (hdir / sub).mkdir(parents=True)
    host = Host(
        name=f"h{n}",
        netns=f"{PREFIX}{lab.lab_id}h{n}",
        veth=f"{PREFIX}{lab.lab_id}v{n}",
        address=f"{lab.subnet}.{10 + n}",
        root=hdir / "root",
        upper=hdir / "upper",
    )
    lab.hosts.append(host)
    lab.record()
    root = str(host.root)
    _run(
        "mount", "-t", "overlay", "overlay", "-o",
        f"lowerdir={base},upperdir={hdir / 'upper'},workdir={hdir / 'work'}", root,
    )  # fmt: skip
    _run("mount", "--make-private", root)
    _run("mount", "-t", "proc", "proc", f"{root}/proc")
    _run("mount", "--bind", "/dev", f"{root}/dev")
    _run("mount", "--make-private", f"{root}/dev")

    _run("ip", "netns", "add", host.netns)
    _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0",
         "netns", host.netns)  # fmt: skip
    _run("ip", "link", "set", host.veth, "master", lab.bridge, "up")
    _run("ip", "-n", host.netns, "link", "set", "lo", "up")
    _run("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
    _run("ip", "-n", host.netns, "link", "set", "eth0", "up")

    _run("chroot", root, "ssh-keygen", "-A")
    (host.root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    auth = host.root / "root/.ssh/authorized_keys"
    auth.write_text(Path(f"{lab.private_key}.pub").read_text())
    auth.chmod(0o600)
    (host.root / "run/sshd").mkdir(exist_ok=True)
    (host.root / "etc/ssh/sshd_config.d/pai-test.conf").write_text(
        f"ListenAddress {host.address}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "UseDNS no\nMaxSessions 50\nMaxStartups 50\n"
    )
    (host.root / "etc/hostname").write_text(f"{host.name}\n")
    (host.root / "etc/hosts").write_text(f"127.0.0.1 localhost\n{host.address} {host.name}\n")
    log = open(hdir / "sshd.log", "wb")  # noqa: SIM115 - kept open by the child
    proc = subprocess.Popen(
        ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--uts", "chroot", root,
         "/bin/sh", "-c", f"hostname {host.name}; exec /usr/sbin/sshd -D -e"],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    host.sshd_pid = proc.pid
    lab.record()
    key = (host.root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    with lab.known_hosts.open("a") as kh:
        kh.write(f"{host.address} {key[0]} {key[1]}\n")
    return host


def _wait_ssh(lab: Lab, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for host in lab.hosts:
        while True:
            if lab.ssh(host, "true").returncode == 0:
                break
            if time.monotonic() > deadline:
                log = (lab.folder / host.name / "sshd.log").read_text(errors="replace")
                raise LabError(f"sshd on {host.name} did not answer: {log[-500:]}")
            time.sleep(0.2)


@contextlib.contextmanager
def lab(count: int) -> Iterator[Lab]:
    """Make ``count`` hosts on a new bridge; tear all of it down on exit, error or not."""
    require_root_tools()
    cleanup_stale()
    base = base_rootfs()
    STATE.mkdir(parents=True, exist_ok=True)
    lab_id = secrets.token_hex(2)
    folder = STATE / lab_id
    folder.mkdir()
    # Host writes (release venvs) go to a tmpfs: fast installs, and teardown is an unmount.
    _run("mount", "-t", "tmpfs", "-o", f"size={2 * count + 1}G,mode=0700", "pai-test", str(folder))
    the_lab = Lab(lab_id=lab_id, bridge=f"{PREFIX}{lab_id}br", subnet=_free_subnet(), folder=folder)
    the_lab.record()
    try:
        _run("ip", "link", "add", the_lab.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{the_lab.gateway}/24", "dev", the_lab.bridge)
        _run("ip", "link", "set", the_lab.bridge, "up")
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(the_lab.private_key))
        the_lab.known_hosts.touch()
        for i in range(count):
            _start_host(the_lab, i, base)
        _wait_ssh(the_lab)
        yield the_lab
    finally:
        the_lab.close()
