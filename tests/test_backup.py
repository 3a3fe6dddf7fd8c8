"""`pai backup`: encrypted snapshots, verification, restore, retention, copy, schedule, drill.

Real files, real processes, the real `age` binary for interoperability, a real tmpfs for the
full-disk case.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from pai.audit import record_event
from pai.backup import age
from pai.backup.drill import verify_audit_chain
from pai.backup.prune import Policy, plan
from pai.backup.repo import read_sidecar, sign_sidecar
from pai.canonical import canonical_bytes
from pai.db import connect
from pai.keyring import node_key
from pai.settings import paths

AGE = shutil.which("age")
needs_age = pytest.mark.skipif(AGE is None, reason="Debian package `age` is not installed")
BUNDLE_SIZE = 4 * 1024 * 1024 + 17


def _pai_subprocess(*args: str, home: Path) -> list[str]:
    return [sys.executable, "-m", "pai.cli", *args]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAI_")}
    env["PAI_HOME"] = str(home)
    return env


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not path.is_symlink() and not rel.startswith(skip):
            out[rel] = _sha(path)
    return out


@pytest.fixture
def state(pai_home: Path, cli) -> Path:  # type: ignore[no-untyped-def]
    """A node's state folder: keys, config, trust store, a bundle, an index, audit log."""
    assert cli("keys", "init").exit_code == 0
    assert cli("keys", "trust", "add", str(pai_home / "keys" / "root.pub")).exit_code == 0
    (pai_home / "config.toml").write_text(
        "[backup]\nscrypt_work_factor = 10\nblob_threshold = 4000000\n"  # the bundle, not the db
    )
    bundles = pai_home / "bundles" / "crm-assistant"
    bundles.mkdir(parents=True)
    (bundles / "crm-assistant-1.0.pai").write_bytes(os.urandom(BUNDLE_SIZE))
    os.symlink("crm-assistant-1.0.pai", bundles / "current")
    (pai_home / "indexes").mkdir()
    (pai_home / "indexes" / "docs.faiss").write_bytes(os.urandom(40_000))
    for i in range(5):
        record_event("test.seed", resource=f"item:{i}")
    assert cli("audit", "checkpoint").exit_code == 0  # a signed line in audit/checkpoints.jsonl
    (pai_home / "cache").mkdir()
    (pai_home / "cache" / "tokens.bin").write_bytes(b"x" * 100)
    return pai_home


@pytest.fixture
def identity(tmp_path: Path, cli) -> tuple[Path, str]:  # type: ignore[no-untyped-def]
    out = tmp_path / "operator" / "backup-identity.txt"
    out.parent.mkdir()
    result = cli("backup", "keygen", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    return out, result.json()["recipient"]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "repo"


def _audit_hashes(home: Path) -> dict[int, str]:
    """Read under the database's lock, as every pai process does, so appenders never collide."""
    with connect(home / "audit" / "audit.duckdb", read_only=True) as con:
        return {int(s): str(h) for s, h in con.execute("SELECT seq, hash FROM events").fetchall()}


def _actions(home: Path) -> list[str]:
    with connect(home / "audit" / "audit.duckdb", read_only=True) as con:
        return [str(r[0]) for r in con.execute("SELECT action FROM events ORDER BY seq").fetchall()]


def _create(cli, repo: Path, recipient: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    result = cli("backup", "create", "--repo", str(repo), "-r", recipient, "--json")
    assert result.exit_code == 0, result.output
    return result.json()  # type: ignore[no-any-return]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# --- create, list, verify ---------------------------------------------------------------------


def test_create_list_verify_and_dedup(cli, state, identity, repo) -> None:  # type: ignore[no-untyped-def]
    key, recipient = identity
    first = _create(cli, repo, recipient)
    assert first["new_blobs"] >= 1 and first["new_bytes"] > BUNDLE_SIZE
    second = _create(cli, repo, recipient)
    assert second["reused_blobs"] >= 1
    assert second["new_bytes"] < first["new_bytes"] - BUNDLE_SIZE  # the bundle was not stored again

    listed = cli("backup", "list", "--repo", str(repo), "--json").json()["snapshots"]
    assert [s["id"] for s in listed] == [first["snapshot"], second["snapshot"]]
    assert listed[1]["new_bytes"] == second["new_bytes"]

    keyless = cli("backup", "verify", "--all", "--repo", str(repo), "--json")
    assert keyless.exit_code == 0, keyless.output
    assert keyless.json()["decrypted"] is False and len(keyless.json()["verified"]) == 2
    full = cli("backup", "verify", "latest", "--repo", str(repo), "-i", str(key), "--json")
    assert full.exit_code == 0, full.output
    assert full.json()["verified"][0]["decrypted"] is True

    sidecar = read_sidecar(repo / "snapshots" / f"{first['snapshot']}.json")
    assert sidecar.signer == node_key(paths()).kid
    assert sidecar.body["recipients"] == [recipient]
    assert {c["name"] for c in sidecar.body["contents"]} >= {"audit", "bundles", "keys", "trust"}
    assert "cache" not in {c["name"] for c in sidecar.body["contents"]}
    actions = _actions(state)
    assert actions.count("backup.create") == 2 and actions.count("backup.verify") == 2


def test_snapshot_leaves_out_caches_locks_and_the_root_key(cli, state, identity, repo) -> None:  # type: ignore[no-untyped-def]
    key, recipient = identity
    (state / "serve.pid").write_text("123\n")
    snap = _create(cli, repo, recipient)["snapshot"]
    target = state.parent / "restored"
    assert (
        cli(
            "backup", "restore", snap, "--repo", str(repo), "-i", str(key), "--target", str(target)
        ).exit_code
        == 0
    )
    assert (target / "keys" / "node.key").exists()
    assert (target / "keys" / "signing").is_dir()
    assert not (target / "keys" / "root.key").exists()
    assert not (target / "cache").exists() and not (target / "serve.pid").exists()
    assert not list(target.rglob("*.lock"))
    assert os.readlink(target / "bundles" / "crm-assistant" / "current") == "crm-assistant-1.0.pai"


def test_bad_input_is_one_clear_line(cli, state, identity, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = cli("backup", "create", "--repo", str(repo), "-r", "age1notakey")
    assert bad.exit_code == 2 and "is not an age public key" in bad.stderr
    assert not repo.exists()
    none = cli("backup", "create", "--repo", str(repo))
    assert none.exit_code == 2 and "no recipient given" in none.stderr
    both = cli("backup", "verify", "--repo", str(tmp_path))
    assert both.exit_code == 1 and "not a pai backup repository" in both.stderr
    _create(cli, repo, identity[1])
    usage = cli("backup", "verify", "--repo", str(repo))
    assert usage.exit_code == 2 and "name one snapshot" in usage.stderr
    missing = cli("backup", "verify", "nope", "--repo", str(repo))
    assert missing.exit_code == 1 and "no snapshot 'nope'" in missing.stderr
    no_repo = cli("backup", "list")
    assert no_repo.exit_code == 2 and "no backup repository given" in no_repo.stderr
    again = cli("backup", "keygen", "-o", str(identity[0]))
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert "AGE-SECRET-KEY-1" in identity[0].read_text() and identity[0].stat().st_mode & 0o077 == 0


# --- age interoperability ----------------------------------------------------------------------


@needs_age
def test_age_binary_decrypts_what_pai_writes(cli, state, identity, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    key, recipient = identity
    snap = _create(cli, repo, recipient)["snapshot"]
    out = tmp_path / "by-age"
    out.mkdir()
    tar = subprocess.run(
        f"age -d -i {key} {repo}/snapshots/{snap}.age | tar -x -C {out}",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert tar.returncode == 0, tar.stderr
    manifest = json.loads((out / "pai-backup-manifest.json").read_bytes())
    assert (out / "config.toml").read_bytes() == (state / "config.toml").read_bytes()
    [bundle] = [f for f in manifest["files"] if f.get("blob")]
    blob = repo / "blobs" / bundle["blob"][:2] / f"{bundle['blob']}.age"
    plain = subprocess.run([AGE, "-d", "-i", str(key), str(blob)], capture_output=True, check=True)
    assert plain.stdout == (state / bundle["path"]).read_bytes()


@needs_age
def test_pai_decrypts_what_age_writes(tmp_path: Path) -> None:
    keys = tmp_path / "k.txt"
    subprocess.run(["age-keygen", "-o", str(keys)], check=True, capture_output=True)
    recipient = next(ln.split()[-1] for ln in keys.read_text().splitlines() if "public key" in ln)
    for size in (0, 1, 65536, 65537, 200_000):
        plain = tmp_path / "plain"
        plain.write_bytes(os.urandom(size))
        sealed = tmp_path / "sealed.age"
        subprocess.run([AGE, "-r", recipient, "-o", str(sealed), str(plain)], check=True)
        with (tmp_path / "out").open("wb") as dst:
            age.decrypt_file(sealed, dst, list(age.load_identities(keys)))
        assert (tmp_path / "out").read_bytes() == plain.read_bytes()
    assert str(age.load_identities(keys)[0].recipient) == recipient


@needs_age
def test_age_keygen_identity_restores_a_pai_backup(cli, state, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    keys = tmp_path / "k.txt"
    subprocess.run(["age-keygen", "-o", str(keys)], check=True, capture_output=True)
    recipient = next(ln.split()[-1] for ln in keys.read_text().splitlines() if "public key" in ln)
    _create(cli, repo, recipient)
    target = tmp_path / "restored"
    result = cli(
        "backup", "restore", "latest", "--repo", str(repo), "-i", str(keys), "--target", str(target)
    )
    assert result.exit_code == 0, result.output
    assert _sha(target / "indexes" / "docs.faiss") == _sha(state / "indexes" / "docs.faiss")


@needs_age
def test_passphrase_backups_interoperate_through_a_terminal(cli, state, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """age reads passphrases only from a terminal: `script` gives it a pty fed from stdin."""
    secret = tmp_path / "pass.txt"
    secret.write_text("correct horse battery staple\n")
    snap = cli("backup", "create", "--repo", str(repo), "--passphrase-file", str(secret), "--json")
    assert snap.exit_code == 0, snap.output
    archive = repo / "snapshots" / f"{snap.json()['snapshot']}.age"
    assert b"-> scrypt " in archive.read_bytes()[:200]
    out = tmp_path / "plain.tar"
    done = subprocess.run(
        f"printf 'correct horse battery staple\\n' | script -qec "
        f"'age -d -o {out} {archive}' /dev/null",
        shell=True,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0 and out.read_bytes()[:512].strip(b"\0"), done.stdout
    plain = tmp_path / "note.txt"
    plain.write_bytes(b"written by age -p\n")
    sealed = tmp_path / "note.age"
    subprocess.run(
        "printf 'correct horse battery staple\\ncorrect horse battery staple\\n' | "
        f"script -qec 'age -p -o {sealed} {plain}' /dev/null",
        shell=True,
        capture_output=True,
        timeout=60,
        check=True,
    )
    with sealed.open("rb") as src:
        got = age.Decryptor(src, [age.ScryptRecipient(b"correct horse battery staple")]).read()
    assert got == plain.read_bytes()


# --- faults ------------------------------------------------------------------------------------


def test_flipped_byte_in_archive_blob_or_sidecar_is_named(cli, state, identity, repo) -> None:  # type: ignore[no-untyped-def]
    key, recipient = identity
    snap = _create(cli, repo, recipient)["snapshot"]
    archive = repo / "snapshots" / f"{snap}.age"
    [blob] = list((repo / "blobs").glob("*/*.age"))
    sidecar = repo / "snapshots" / f"{snap}.json"
    originals = {p: p.read_bytes() for p in (archive, blob, sidecar)}

    _flip(archive, archive.stat().st_size // 2)
    result = cli("backup", "verify", snap, "--repo", str(repo))
    assert result.exit_code == 1
    assert f"snapshots/{snap}.age: sha256 differs from the sidecar" in result.stderr
    archive.write_bytes(originals[archive])

    _flip(blob, 1000)
    result = cli("backup", "verify", "--all", "--repo", str(repo))
    assert result.exit_code == 1
    assert f"blobs/{blob.parent.name}/{blob.name}: sha256 differs" in result.stderr
    blob.write_bytes(originals[blob])

    raw = originals[sidecar].replace(b'"host":"', b'"host":"X', 1)
    sidecar.write_bytes(raw)
    result = cli("backup", "verify", snap, "--repo", str(repo))
    assert result.exit_code == 1 and "signature does not verify" in result.stderr
    sidecar.write_bytes(originals[sidecar])

    blob.unlink()
    result = cli("backup", "verify", snap, "--repo", str(repo))
    assert result.exit_code == 1 and f"{blob.name} is missing from the repository" in result.stderr
    blob.write_bytes(originals[blob])
    assert cli("backup", "verify", snap, "--repo", str(repo), "-i", str(key)).exit_code == 0


def test_tampering_that_the_signer_re_signed_is_caught_by_decryption(
    cli, state, identity, repo
) -> None:  # type: ignore[no-untyped-def]
    """Someone holding the node key could re-sign a sidecar; the age MAC still catches it."""
    key, recipient = identity
    snap = _create(cli, repo, recipient)["snapshot"]
    archive = repo / "snapshots" / f"{snap}.age"
    _flip(archive, archive.stat().st_size - 40)
    sidecar_path = repo / "snapshots" / f"{snap}.json"
    body = json.loads(sidecar_path.read_bytes())["body"]
    body["archive"]["sha256"] = _sha(archive)
    sidecar_path.write_bytes(sign_sidecar(body, node_key(paths())))
    assert cli("backup", "verify", snap, "--repo", str(repo)).exit_code == 0
    result = cli("backup", "verify", snap, "--repo", str(repo), "-i", str(key))
    assert result.exit_code == 1
    assert f"snapshots/{snap}.age: age payload chunk" in result.stderr
    assert "fails authentication" in result.stderr


def test_wrong_identity_or_passphrase_writes_nothing(cli, state, identity, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _create(cli, repo, identity[1])
    other = tmp_path / "other.txt"
    assert cli("backup", "keygen", "-o", str(other)).exit_code == 0
    target = tmp_path / "restored"
    result = cli(
        "backup",
        "restore",
        "latest",
        "--repo",
        str(repo),
        "-i",
        str(other),
        "--target",
        str(target),
    )
    assert result.exit_code == 1
    assert "none of the given identities opens the file" in result.stderr
    assert (
        not target.exists()
        and sorted(p.name for p in tmp_path.iterdir() if "restore" in p.name) == []
    )

    secret, wrong = tmp_path / "p1", tmp_path / "p2"
    secret.write_text("right\n")
    wrong.write_text("wrong\n")
    repo2 = tmp_path / "repo2"
    assert (
        cli("backup", "create", "--repo", str(repo2), "--passphrase-file", str(secret)).exit_code
        == 0
    )
    result = cli(
        "backup",
        "restore",
        "latest",
        "--repo",
        str(repo2),
        "--passphrase-file",
        str(wrong),
        "--target",
        str(target),
    )
    assert result.exit_code == 1 and "wrong passphrase" in result.stderr
    assert not target.exists()
    result = cli("backup", "verify", "latest", "--repo", str(repo2), "-i", str(other))
    assert result.exit_code == 1 and "passphrase-encrypted" in result.stderr


def test_sigkill_during_create_leaves_no_snapshot(state, identity, repo) -> None:  # type: ignore[no-untyped-def]
    for i in range(8):
        (state / "bundles" / f"model-{i}.onnx").write_bytes(os.urandom(4 * 1024 * 1024))
    cmd = _pai_subprocess("backup", "create", "--repo", str(repo), "-r", identity[1], home=state)
    proc = subprocess.Popen(cmd, env=_env(state), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not list(repo.glob("blobs/.*.tmp")) and time.monotonic() < deadline:
            assert proc.poll() is None, "create finished before it could be killed"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not list((repo / "snapshots").glob("*.json"))
    listed = subprocess.run(
        _pai_subprocess("backup", "list", "--repo", str(repo), "--json", home=state),
        env=_env(state),
        capture_output=True,
    )
    assert listed.returncode == 0 and json.loads(listed.stdout)["snapshots"] == []
    again = subprocess.run(
        _pai_subprocess(
            "backup", "create", "--repo", str(repo), "-r", identity[1], "--json", home=state
        ),
        env=_env(state),
        capture_output=True,
    )
    assert again.returncode == 0, again.stderr
    assert not list(repo.rglob("*.tmp"))
    verify = subprocess.run(
        _pai_subprocess(
            "backup", "verify", "--all", "--repo", str(repo), "-i", str(identity[0]), home=state
        ),
        env=_env(state),
        capture_output=True,
    )
    assert verify.returncode == 0, verify.stderr


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_during_create_fails_cleanly(cli, state, identity, tiny_disk) -> None:  # type: ignore[no-untyped-def]
    repo = tiny_disk / "repo"
    result = cli("backup", "create", "--repo", str(repo), "-r", identity[1])
    assert result.exit_code == 1
    assert "disk full" in result.stderr and "no snapshot was recorded" in result.stderr
    left = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    assert not [p for p in left if p.endswith((".tmp", ".age", ".json")) and p != "config.json"]
    listed = cli("backup", "list", "--repo", str(repo), "--json")
    assert listed.exit_code == 0 and listed.json()["snapshots"] == []
    assert _actions(state)[-1] == "backup.create"


# --- restore -----------------------------------------------------------------------------------

APPENDER = """
import os, sys, time
from pai.audit import record_event
stop = sys.argv[1]
i = 0
while not os.path.exists(stop):
    record_event("test.append", resource=f"n:{i}")
    i += 1
    time.sleep(0.01)  # a busy daemon, not a tight loop: flock is not fair to waiting readers
"""


def test_round_trip_while_audit_events_are_appended(cli, state, identity, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    key, recipient = identity
    stop = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, "-c", APPENDER, str(stop)], env=_env(state))
    try:
        start = len(_audit_hashes(state))
        deadline = time.monotonic() + 60
        while len(_audit_hashes(state)) < start + 5:
            assert proc.poll() is None and time.monotonic() < deadline, "appender stopped"
            time.sleep(0.05)
        snap = _create(cli, repo, recipient)["snapshot"]
        time.sleep(0.2)
    finally:
        stop.write_text("")
        proc.wait(timeout=30)
    target = tmp_path / "elsewhere"
    result = cli(
        "backup",
        "restore",
        snap,
        "--repo",
        str(repo),
        "-i",
        str(key),
        "--target",
        str(target),
        "--json",
    )
    assert result.exit_code == 0, result.output
    source = _tree(state, skip=("audit/audit.duckdb", "backup/cache", "cache"))
    restored = _tree(target, skip=("audit/audit.duckdb",))
    for rel in list(source):
        if rel.endswith(".lock") or rel == "keys/root.key":
            source.pop(rel)
    assert restored == source
    chain = verify_audit_chain(target)
    assert chain["ok"] and chain["verify"]["checkpoints"] >= 1, chain
    live = _audit_hashes(state)
    assert len(live) > chain["events"] > start
    assert live[chain["events"]] == chain["head"]  # the restored log is a prefix of the live one


def test_restore_swaps_atomically_and_refuses_a_running_daemon(cli, state, identity, repo) -> None:  # type: ignore[no-untyped-def]
    key, recipient = identity
    snap = _create(cli, repo, recipient)["snapshot"]
    bundle = state / "bundles" / "crm-assistant" / "crm-assistant-1.0.pai"
    before = _sha(bundle)
    bundle.write_bytes(b"ransomware")
    (state / "indexes" / "docs.faiss").unlink()

    pid = state / "serve.pid"
    pid.write_text(f"{os.getpid()}\n")
    fd = os.open(pid, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        refused = cli("backup", "restore", "latest", "--repo", str(repo), "-i", str(key))
        assert refused.exit_code == 1 and "a pai daemon is running on" in refused.stderr
        assert _actions(state)[-1] == "backup.restore"
        assert bundle.read_bytes() == b"ransomware"
        forced = cli(
            "backup", "restore", "latest", "--repo", str(repo), "-i", str(key), "--force", "--json"
        )
    finally:
        os.close(fd)
    assert forced.exit_code == 0, forced.output
    assert forced.json()["snapshot"] == snap
    assert _sha(bundle) == before and (state / "indexes" / "docs.faiss").exists()
    previous = Path(forced.json()["previous"])
    assert (
        previous / "bundles" / "crm-assistant" / "crm-assistant-1.0.pai"
    ).read_bytes() == b"ransomware"
    assert verify_audit_chain(state)["ok"]
    assert "backup.restore" in _actions(state)


# --- prune, copy, reindex ----------------------------------------------------------------------


def test_retention_plan_follows_restic() -> None:
    snaps = [
        ("a", "2026-11-01T02:00:00Z"),
        ("b", "2026-11-01T14:00:00Z"),
        ("c", "2026-11-08T02:00:00Z"),
        ("d", "2026-11-15T02:00:00Z"),
        ("e", "2026-11-20T02:00:00Z"),
        ("f", "2026-11-20T09:00:00Z"),
        ("g", "2026-10-31T02:00:00Z"),
        ("h", "2026-09-10T02:00:00Z"),
    ]
    kept = plan(snaps, Policy(last=1, daily=2, weekly=2, monthly=3))
    assert kept["f"] == ["last", "daily", "weekly", "monthly"]
    assert kept["e"] == []
    assert kept["d"] == ["daily", "weekly"]
    assert kept["g"] == ["monthly"] and kept["h"] == ["monthly"]
    assert kept["a"] == kept["b"] == kept["c"] == []
    assert plan(snaps, Policy(daily=30))["a"] == [] and plan(snaps, Policy(daily=30))["b"] == [
        "daily"
    ]


def test_prune_removes_snapshots_and_unreferenced_blobs(cli, state, identity, repo) -> None:  # type: ignore[no-untyped-def]
    recipient = identity[1]
    first = _create(cli, repo, recipient)["snapshot"]
    bundle = state / "bundles" / "crm-assistant" / "crm-assistant-1.0.pai"
    bundle.write_bytes(os.urandom(BUNDLE_SIZE))
    second = _create(cli, repo, recipient)["snapshot"]
    assert len(list(repo.glob("blobs/*/*.age"))) == 2

    refused = cli("backup", "prune", "--repo", str(repo))
    assert refused.exit_code == 2 and "no retention rule given" in refused.stderr
    dry = cli("backup", "prune", "--repo", str(repo), "--keep-last", "1", "--dry-run", "--json")
    assert dry.exit_code == 0 and dry.json()["remove"] == [first]
    assert len(list(repo.glob("snapshots/*.json"))) == 2
    done = cli("backup", "prune", "--repo", str(repo), "--keep-last", "1", "--json")
    assert done.exit_code == 0, done.output
    assert done.json()["remove"] == [first] and len(done.json()["blobs_removed"]) == 1
    assert [
        s["id"] for s in cli("backup", "list", "--repo", str(repo), "--json").json()["snapshots"]
    ] == [second]
    assert len(list(repo.glob("blobs/*/*.age"))) == 1
    assert (
        cli("backup", "verify", "--all", "--repo", str(repo), "-i", str(identity[0])).exit_code == 0
    )
    assert "backup.prune" in _actions(state)


def test_copy_is_verifying_and_idempotent(cli, state, identity, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    key, recipient = identity
    _create(cli, repo, recipient)
    _create(cli, repo, recipient)
    usb = tmp_path / "usb"
    first = cli("backup", "copy", "--repo", str(repo), "--to", str(usb), "--json")
    assert first.exit_code == 0, first.output
    assert len(first.json()["copied"]) == 2 and first.json()["bytes_transferred"] > BUNDLE_SIZE
    again = cli("backup", "copy", "--repo", str(repo), "--to", str(usb), "--json")
    assert again.json()["copied"] == [] and again.json()["bytes_transferred"] == 0
    assert cli("backup", "verify", "--all", "--repo", str(usb), "-i", str(key)).exit_code == 0

    third = _create(cli, repo, recipient)["snapshot"]
    _flip(repo / "snapshots" / f"{third}.age", 300)
    bad = cli("backup", "copy", "--repo", str(repo), "--to", str(usb))
    assert bad.exit_code == 1 and f"snapshots/{third}.age does not match its sidecar" in bad.stderr
    assert not (usb / "snapshots" / f"{third}.json").exists()
    assert not list(usb.rglob("*.tmp"))


def test_reindex_rebuilds_the_catalog_from_sidecars(cli, state, identity, repo) -> None:  # type: ignore[no-untyped-def]
    ids = [_create(cli, repo, identity[1])["snapshot"] for _ in range(2)]
    (repo / "catalog.duckdb").unlink()
    assert cli("backup", "list", "--repo", str(repo), "--json").json()["snapshots"] == []
    result = cli("backup", "reindex", "--repo", str(repo), "--json")
    assert result.exit_code == 0 and result.json()["snapshots"] == 2
    rows = cli("backup", "list", "--repo", str(repo), "--json").json()["snapshots"]
    assert [r["id"] for r in rows] == ids
    assert rows[0]["sidecar_sha256"] == read_sidecar(repo / "snapshots" / f"{ids[0]}.json").sha256
    assert _create(cli, repo, identity[1])["new_bytes"] < BUNDLE_SIZE  # blobs known again


# --- schedule, run, drill ----------------------------------------------------------------------


def test_schedule_writes_and_removes_a_cron_entry(cli, state, identity, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cron = tmp_path / "cron.d" / "pai-backup"
    bad = cli(
        "backup",
        "schedule",
        "--cron",
        "every night",
        "--repo",
        str(repo),
        "-r",
        identity[1],
        "--cron-file",
        str(cron),
    )
    assert bad.exit_code == 2 and "is not five fields" in bad.stderr and not cron.exists()
    ok = cli(
        "backup",
        "schedule",
        "--cron",
        "0 2 * * *",
        "--repo",
        str(repo),
        "-r",
        identity[1],
        "--keep-daily",
        "7",
        "--cron-file",
        str(cron),
        "--json",
    )
    assert ok.exit_code == 0, ok.output
    line = cron.read_text().splitlines()[-1]
    assert line.startswith("0 2 * * * root PAI_HOME=")
    assert "backup run --repo" in line and "--keep-daily 7" in line and identity[1] in line
    assert cli("backup", "schedule", "--remove", "--cron-file", str(cron)).exit_code == 0
    assert not cron.exists()


def test_run_prints_one_json_line_and_skips_when_busy(state, identity, repo) -> None:  # type: ignore[no-untyped-def]
    cmd = _pai_subprocess(
        "backup", "run", "--repo", str(repo), "-r", identity[1], "--keep-last", "1", home=state
    )
    for _ in range(2):
        done = subprocess.run(cmd, env=_env(state), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        [line] = done.stdout.splitlines()
        summary = json.loads(line)
    assert summary["ok"] and summary["exit"] == 0 and len(summary["removed"]) == 1
    lock = state / "backup" / "run.lock"
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        busy = subprocess.run(cmd, env=_env(state), capture_output=True, text=True)
    finally:
        os.close(fd)
    assert busy.returncode == 75
    assert json.loads(busy.stdout)["error"] == "the previous scheduled backup is still running"
    failing = subprocess.run(
        _pai_subprocess(
            "backup",
            "run",
            "--repo",
            str(state / "bundles" / "crm-assistant"),
            "-r",
            identity[1],
            home=state,
        ),
        env=_env(state),
        capture_output=True,
        text=True,
    )
    assert failing.returncode == 1 and json.loads(failing.stdout)["error"].startswith("create:")


def test_drill_passes_and_fails_with_evidence(cli, state, identity, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    key, recipient = identity
    snap = _create(cli, repo, recipient)["snapshot"]
    report = tmp_path / "evidence.json"
    good = cli(
        "backup",
        "drill",
        snap,
        "--repo",
        str(repo),
        "-i",
        str(key),
        "--report",
        str(report),
        "--json",
    )
    assert good.exit_code == 0, good.output
    evidence = json.loads(report.read_text())
    assert evidence["result"] == "pass" and evidence["checks"]["audit_chain"]
    assert evidence["bundles"][0]["path"] == "bundles/crm-assistant/crm-assistant-1.0.pai"
    assert evidence["audit"]["events"] >= 5

    con = duckdb.connect(str(state / "audit" / "audit.duckdb"))
    con.execute("UPDATE events SET resource = 'item:forged' WHERE seq = 3")
    con.close()
    forged = _create(cli, repo, recipient)["snapshot"]
    bad = cli("backup", "drill", forged, "--repo", str(repo), "-i", str(key), "--json")
    assert bad.exit_code == 1
    assert bad.json()["result"] == "fail" and not bad.json()["checks"]["audit_chain"]
    assert "event 3 was modified" in bad.json()["audit"]["error"]


def test_manifest_path_escape_is_refused(cli, state, identity, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A snapshot crafted with ../ paths (encrypted to the operator, re-signed) is refused."""
    import io
    import tarfile

    key, recipient = identity
    snap = _create(cli, repo, recipient)["snapshot"]
    archive = repo / "snapshots" / f"{snap}.age"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"evil"
        info = tarfile.TarInfo("../escaped")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with (
        archive.open("wb") as dst,
        age.Encryptor(dst, [age.X25519Recipient.parse(recipient)]) as enc,
    ):
        enc.write(buf.getvalue())
    sidecar_path = repo / "snapshots" / f"{snap}.json"
    body = json.loads(sidecar_path.read_bytes())["body"]
    body["archive"].update(sha256=_sha(archive), size=archive.stat().st_size)
    sidecar_path.write_bytes(sign_sidecar(body, node_key(paths())))
    target = tmp_path / "t" / "restored"
    result = cli(
        "backup", "restore", snap, "--repo", str(repo), "-i", str(key), "--target", str(target)
    )
    assert result.exit_code == 1 and "unsafe path '../escaped'" in result.stderr
    assert not (tmp_path / "t" / "escaped").exists() and not target.exists()
    assert canonical_bytes(body)  # the crafted sidecar was canonical: only the path check caught it


def test_large_databases_are_chunked_so_unchanged_blocks_are_not_stored_again(
    cli, state, identity, repo, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    key, recipient = identity
    (state / "config.toml").write_text("[backup]\nblob_threshold = 262144\n")
    with connect(
        state / "state.duckdb", schema="CREATE TABLE IF NOT EXISTS t (i BIGINT, s VARCHAR)"
    ) as con:
        con.execute("INSERT INTO t SELECT range, md5(range::VARCHAR) FROM range(1000000)")
        con.execute("CHECKPOINT")
    db_size = (state / "state.duckdb").stat().st_size
    assert db_size > 4 * 1024 * 1024
    _create(cli, repo, recipient)
    with connect(state / "state.duckdb") as con:
        con.execute("INSERT INTO t VALUES (-1, 'one more row')")
        con.execute("CHECKPOINT")
    second = _create(cli, repo, recipient)
    assert second["new_bytes"] < db_size // 3  # only the changed chunks, not the whole database
    verified = cli("backup", "verify", "--all", "--repo", str(repo), "-i", str(key))
    assert verified.exit_code == 0, verified.output
    target = tmp_path / "restored"
    assert (
        cli(
            "backup",
            "restore",
            "latest",
            "--repo",
            str(repo),
            "-i",
            str(key),
            "--target",
            str(target),
        ).exit_code
        == 0
    )
    assert _sha(target / "state.duckdb") == _sha(state / "state.duckdb")
    with connect(target / "state.duckdb", read_only=True) as con:
        assert con.execute("SELECT count(*) FROM t").fetchone() == (1000001,)


def test_restore_refuses_to_swap_a_mount_point(cli, state, identity, repo, tiny_disk) -> None:  # type: ignore[no-untyped-def]
    _create(cli, repo, identity[1])
    result = cli(
        "backup",
        "restore",
        "latest",
        "--repo",
        str(repo),
        "-i",
        str(identity[0]),
        "--target",
        str(tiny_disk),
    )
    assert result.exit_code == 2 and "is a mount point" in result.stderr
    assert list(tiny_disk.iterdir()) == []


def test_restore_of_a_damaged_blob_fails_and_leaves_the_target_alone(
    cli, state, identity, repo
) -> None:  # type: ignore[no-untyped-def]
    key, recipient = identity
    _create(cli, repo, recipient)
    [blob] = list((repo / "blobs").glob("*/*.age"))
    _flip(blob, blob.stat().st_size // 2)
    before = _tree(state, skip=("audit/", "backup/"))
    result = cli("backup", "restore", "latest", "--repo", str(repo), "-i", str(key), "--force")
    assert result.exit_code == 1
    assert f"blobs/{blob.parent.name}/{blob.name}: age payload chunk" in result.stderr
    assert _tree(state, skip=("audit/", "backup/")) == before
    assert not [p for p in state.parent.iterdir() if "restore" in p.name]


def test_copy_from_a_read_only_medium(cli, state, identity, repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    _create(cli, repo, identity[1])
    shelf = tmp_path / "usb-ro"
    shelf.mkdir()
    subprocess.run(["mount", "--bind", str(repo), str(shelf)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(shelf)], check=True)
        result = cli(
            "backup", "copy", "--repo", str(shelf), "--to", str(tmp_path / "site-b"), "--json"
        )
    finally:
        subprocess.run(["umount", str(shelf)], check=True)
    assert result.exit_code == 0, result.output
    assert len(result.json()["copied"]) == 1


def test_sealed_audit_segments_come_back_and_the_drill_verifies_them(
    cli, state, identity, repo
) -> None:  # type: ignore[no-untyped-def]
    key, recipient = identity
    sealed = cli("audit", "seal", "--before", "2100-01-01")
    assert sealed.exit_code == 0, sealed.output
    record_event("test.after-seal", resource="item:late")
    segments = sorted(p.name for p in (state / "audit" / "segments").iterdir())
    assert segments
    snap = _create(cli, repo, recipient)["snapshot"]
    drill = cli("backup", "drill", snap, "--repo", str(repo), "-i", str(key), "--json")
    assert drill.exit_code == 0, drill.output
    evidence = drill.json()
    assert evidence["result"] == "pass"
    assert evidence["audit"]["verify"]["segments"] == 1 and evidence["audit"]["events"] >= 7
