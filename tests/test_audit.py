"""`pai audit`: the hash chain, checkpoints, verification, proofs, sealing, concurrency, crashes."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pai.audit import AuditBatcher, record_event
from pai.audit.chain import body_bytes, details_text
from pai.canonical import canonical_bytes
from pai.settings import paths

ROOT = Path(__file__).resolve().parent.parent


def db(home: Path) -> Path:
    return home / "audit" / "audit.duckdb"


def sql(home: Path, statement: str, params: list[Any] | None = None) -> list[Any]:
    """Tamper with the database directly, as an attacker with file access would."""
    con = duckdb.connect(str(db(home)))
    try:
        return con.execute(statement, params or []).fetchall()
    finally:
        con.close()


def sql_many(home: Path, statements: list[tuple[str, list[Any]]]) -> None:
    con = duckdb.connect(str(db(home)))
    try:
        for statement, params in statements:
            con.execute(statement, params)
    finally:
        con.close()


def fill(n: int) -> list[int]:
    """Append n events in one batch."""
    from pai.audit import pending, record_events

    events = [pending("test.event", resource=f"item:{i}", details={"i": i}) for i in range(n)]
    return record_events(events)


def verify(cli, *args: str):  # type: ignore[no-untyped-def]
    return cli("audit", "verify", "--json", *args)


def failure(result) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, result.output
    return result.json()["error"]


def rechain(home: Path) -> None:
    """Recompute every hash after a tamper, as a careful attacker would."""
    rows = sql(
        home, "SELECT seq, time, actor, action, resource, outcome, details FROM events ORDER BY seq"
    )
    prev = bytes(32)
    updates: list[tuple[str, list[Any]]] = []
    for seq, t, actor, action, resource, outcome, details in rows:
        digest = hashlib.sha256(
            prev + body_bytes(seq, t, actor, action, resource, outcome, details)
        ).digest()
        updates.append(
            (
                "UPDATE events SET prev_hash = ?, hash = ? WHERE seq = ?",
                [prev.hex(), digest.hex(), seq],
            )
        )
        prev = digest
    sql_many(home, updates)


# --- encoding -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    seq=st.integers(1, 2**62),
    strings=st.lists(st.text(), min_size=5, max_size=5),
    details=st.dictionaries(st.text(), json_values, max_size=4),
)
def test_event_bytes_are_canonical_json(
    seq: int, strings: list[str], details: dict[str, Any]
) -> None:
    time_, actor, action, resource, outcome = strings
    try:
        expected = canonical_bytes(
            {
                "seq": seq,
                "time": time_,
                "actor": actor,
                "action": action,
                "resource": resource,
                "outcome": outcome,
                "details": details,
            }
        )
    except UnicodeEncodeError:
        return  # lone surrogates are refused before they reach the chain
    assert (
        body_bytes(seq, time_, actor, action, resource, outcome, details_text(details)) == expected
    )


def test_bad_events_are_refused(pai_home: Path) -> None:
    from pai.errors import UsageError

    with pytest.raises(UsageError, match="outcome must be one of ok, denied, failed"):
        record_event("x", outcome="maybe")
    with pytest.raises(UsageError, match="refuses the float"):
        record_event("x", details={"ratio": 0.5})
    with pytest.raises(UsageError, match="action must not be empty"):
        record_event("")


# --- append and verify ------------------------------------------------------------------------


def test_record_and_verify(cli, pai_home: Path) -> None:
    assert fill(3) == [1, 2, 3]
    result = verify(cli)
    assert result.exit_code == 0, result.output
    doc = result.json()
    assert doc["events"] == 3 and doc["checkpoints"] == 0
    assert "no signed checkpoint" in doc["warnings"][0]
    rows = sql(pai_home, "SELECT seq, prev_hash, hash, time FROM events ORDER BY seq")
    assert rows[0][1] == "0" * 64 and rows[1][1] == rows[0][2]
    assert [r[3] for r in rows] == sorted(r[3] for r in rows)


def test_keys_commands_are_audited(cli, pai_home: Path) -> None:
    assert cli("keys", "init").exit_code == 0
    assert cli("keys", "rotate").exit_code == 0
    actions = [r[0] for r in sql(pai_home, "SELECT action FROM events ORDER BY seq")]
    assert actions == ["keys.init", "keys.rotate"]


def test_checkpoint_command_signs_the_head(cli, pai_home: Path) -> None:
    fill(5)
    made = cli("audit", "checkpoint", "--json")
    assert made.exit_code == 0, made.output
    doc = made.json()
    assert doc["seq"] == 6 and doc["new"] is True
    lines = (pai_home / "audit" / "checkpoints.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["body"]["seq"] == 6
    assert (
        json.loads(lines[0])["body"]["kid"]
        == json.loads((pai_home / "keys" / "node.pub").read_text())["kid"]
    )
    ok = verify(cli)
    assert ok.exit_code == 0 and ok.json()["checkpoints"] == 1
    # the checkpoint covers the event that logs the checkpoint command
    assert ok.json()["events"] == 6 and ok.json()["warnings"] == []


def test_automatic_checkpoints_follow_config(cli, pai_home: Path) -> None:
    pai_home.mkdir(parents=True)
    (pai_home / "config.toml").write_text(
        '[audit]\ncheckpoint_every = 4\ncheckpoint_interval = "1d"\n'
    )
    for i in range(9):
        record_event("test.event", details={"i": i})
    fill(6)  # one batch crossing the threshold gets one checkpoint at its end
    seqs = [r[0] for r in sql(pai_home, "SELECT seq FROM checkpoints ORDER BY seq")]
    assert seqs == [4, 8, 15]
    assert verify(cli).exit_code == 0


def test_bad_checkpoint_config_does_not_lose_events(cli, pai_home: Path) -> None:
    fill(1)
    (pai_home / "config.toml").write_text("[audit]\ncheckpoint_every = 0\n")
    result = cli("audit", "checkpoint")
    assert result.exit_code == 0  # an explicit checkpoint does not depend on the policy
    fill(1)  # the policy is read on append: a bad value is logged, the event still lands
    assert sql(pai_home, "SELECT count(*) FROM events")[0][0] == 3


# --- tampering ------------------------------------------------------------------------------


@pytest.fixture
def signed_log(cli, pai_home: Path) -> Path:
    """Ten events, the checkpoint command's event 11 and a checkpoint there, then event 12."""
    fill(10)
    assert cli("audit", "checkpoint").exit_code == 0  # event 11 records the checkpoint
    fill(1)
    return pai_home


def test_modified_row_is_detected(cli, signed_log: Path) -> None:
    sql(signed_log, "UPDATE events SET outcome = 'ok', resource = 'item:other' WHERE seq = 4")
    err = failure(verify(cli))
    assert err["code"] == "audit-hash" and err["first_bad_seq"] == 4
    assert "event 4 was modified" in err["message"]


def test_modified_and_rechained_row_is_caught_by_the_checkpoint(cli, signed_log: Path) -> None:
    sql(signed_log, "UPDATE events SET details = '{\"i\":99}' WHERE seq = 4")
    rechain(signed_log)
    err = failure(verify(cli))
    assert err["code"] == "audit-checkpoint-mismatch" and err["first_bad_seq"] == 11


def test_deleted_row_is_detected(cli, signed_log: Path) -> None:
    sql(signed_log, "DELETE FROM events WHERE seq = 6")
    err = failure(verify(cli))
    assert err["code"] == "audit-sequence" and err["first_bad_seq"] == 6
    assert "event 6 is missing" in err["message"]


def test_inserted_row_is_detected(cli, signed_log: Path) -> None:
    rows = sql(signed_log, "SELECT * FROM events WHERE seq = 5")
    sql(signed_log, "UPDATE events SET seq = seq + 100 WHERE seq > 5")
    sql(signed_log, "UPDATE events SET seq = seq - 99 WHERE seq > 100")
    forged = list(rows[0])
    forged[0], forged[2] = 6, "mallory"
    sql(signed_log, "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", forged)
    err = failure(verify(cli))
    assert err["code"] == "audit-hash" and err["first_bad_seq"] == 6


def test_reordered_rows_are_detected(cli, signed_log: Path) -> None:
    sql(signed_log, "UPDATE events SET seq = -1 WHERE seq = 3")
    sql(signed_log, "UPDATE events SET seq = 3 WHERE seq = 4")
    sql(signed_log, "UPDATE events SET seq = 4 WHERE seq = -1")
    err = failure(verify(cli))
    assert err["code"] == "audit-hash" and err["first_bad_seq"] == 3


def test_truncated_tail_is_detected(cli, signed_log: Path) -> None:
    sql(signed_log, "DELETE FROM events WHERE seq > 7")
    err = failure(verify(cli))
    assert err["code"] == "audit-truncated" and err["first_bad_seq"] == 8
    assert "events 8..11 were removed" in err["message"]


def test_truncation_is_detected_with_an_off_machine_copy(
    cli, signed_log: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "checkpoints-copy.jsonl"
    copy.write_bytes((signed_log / "audit" / "checkpoints.jsonl").read_bytes())
    # the attacker removes events and every trace of the checkpoint on the machine
    sql(signed_log, "DELETE FROM events WHERE seq > 7")
    sql(signed_log, "DELETE FROM checkpoints")
    (signed_log / "audit" / "checkpoints.jsonl").unlink()
    assert verify(cli).exit_code == 0  # nothing on the machine shows it...
    err = failure(verify(cli, "--checkpoints", str(copy)))  # ...the copy does
    assert err["code"] == "audit-truncated" and err["first_bad_seq"] == 8


def test_forged_checkpoint_is_detected(cli, signed_log: Path) -> None:
    path = signed_log / "audit" / "checkpoints.jsonl"
    doc = json.loads(path.read_text())
    doc["body"]["seq"] = 12  # claim the checkpoint covers event 12 too
    path.write_text(json.dumps(doc) + "\n")
    err = failure(verify(cli))
    assert err["code"] == "audit-checkpoint-signature" and err["first_bad_seq"] == 12
    assert "does not verify" in err["message"]


def test_resigned_checkpoint_is_detected_with_the_real_key(
    cli, signed_log: Path, tmp_path: Path
) -> None:
    real_pub = tmp_path / "node.pub"
    real_pub.write_bytes((signed_log / "keys" / "node.pub").read_bytes())
    # rewrite history, then make a new node key and re-sign a checkpoint with it
    sql(signed_log, "UPDATE events SET actor = 'nobody' WHERE seq = 2")
    rechain(signed_log)
    sql(signed_log, "DELETE FROM checkpoints")
    (signed_log / "audit" / "checkpoints.jsonl").unlink()
    for name in ("node.key", "node.pub"):
        (signed_log / "keys" / name).unlink()
    assert cli("audit", "checkpoint").exit_code == 0
    assert verify(cli).exit_code == 0  # consistent with the attacker's key...
    err = failure(verify(cli, "--pubkey", str(real_pub)))  # ...not with the node's real key
    assert err["code"] == "audit-checkpoint-signature"
    assert "not by" in err["message"]


def test_missing_checkpoint_copy_is_a_clear_error(cli, signed_log: Path, tmp_path: Path) -> None:
    result = verify(cli, "--checkpoints", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 1
    assert "does not exist" in result.json()["error"]["message"]


def test_torn_checkpoint_line_is_ignored_and_repaired(cli, signed_log: Path) -> None:
    path = signed_log / "audit" / "checkpoints.jsonl"
    with path.open("ab") as handle:
        handle.write(b'{"body":{"seq":')  # a writer killed mid-line
    assert verify(cli).exit_code == 0
    assert cli("audit", "checkpoint").exit_code == 0
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])
    assert verify(cli).exit_code == 0


# --- proofs ---------------------------------------------------------------------------------


@pytest.fixture
def proof_files(cli, signed_log: Path, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "proof.json"
    made = cli("audit", "prove", "6", "-o", str(out), "--json")
    assert made.exit_code == 0, made.output
    pub = tmp_path / "node.pub"
    pub.write_bytes((signed_log / "keys" / "node.pub").read_bytes())
    return out, pub


def check(cli, proof: Path, pub: Path):  # type: ignore[no-untyped-def]
    return cli("audit", "check-proof", str(proof), "--pubkey", str(pub), "--json")


def test_proof_verifies_with_only_the_public_key(cli, proof_files: tuple[Path, Path]) -> None:
    proof, pub = proof_files
    doc = json.loads(proof.read_text())
    assert doc["leaf_index"] == 5 and doc["event"]["details"] == {"i": 5}
    assert len(doc["audit_path"]) >= 3
    result = check(cli, proof, pub)
    assert result.exit_code == 0, result.output
    assert result.json()["seq"] == 6


def test_proof_for_every_position_of_an_odd_tree(cli, pai_home: Path, tmp_path: Path) -> None:
    fill(13)
    assert cli("audit", "checkpoint").exit_code == 0
    pub = pai_home / "keys" / "node.pub"
    for seq in range(1, 14):
        out = tmp_path / f"p{seq}.json"
        assert cli("audit", "prove", str(seq), "-o", str(out)).exit_code == 0
        assert check(cli, out, pub).exit_code == 0, seq


def _hostile(cli, proof: Path, pub: Path, change) -> str:  # type: ignore[no-untyped-def]
    doc = json.loads(proof.read_text())
    change(doc)
    bad = proof.with_name("hostile.json")
    bad.write_text(json.dumps(doc))
    result = check(cli, bad, pub)
    assert result.exit_code == 1, result.output
    return str(result.json()["error"]["message"])


def test_hostile_proofs_are_rejected(cli, proof_files: tuple[Path, Path]) -> None:
    proof, pub = proof_files

    def wrong_index(d: dict[str, Any]) -> None:
        d["leaf_index"] = 4

    def shifted_event(d: dict[str, Any]) -> None:
        d["leaf_index"] = 6
        d["event"]["seq"] = 7

    def longer(d: dict[str, Any]) -> None:
        d["audit_path"].append(d["audit_path"][0])

    def shorter(d: dict[str, Any]) -> None:
        d["audit_path"].pop()

    def swapped(d: dict[str, Any]) -> None:
        d["audit_path"][0], d["audit_path"][1] = d["audit_path"][1], d["audit_path"][0]

    def altered(d: dict[str, Any]) -> None:
        d["event"]["outcome"] = "denied"

    def bigger_tree(d: dict[str, Any]) -> None:
        d["tree_size"] += 1

    def forged_root(d: dict[str, Any]) -> None:
        d["checkpoint"]["body"]["merkle_root"] = "ab" * 32

    assert "belongs at 5" in _hostile(cli, proof, pub, wrong_index)
    assert "altered" in _hostile(cli, proof, pub, shifted_event)
    assert "cannot be a path" in _hostile(cli, proof, pub, longer)
    assert "cannot be a path" in _hostile(cli, proof, pub, shorter)
    assert "does not lead to the signed Merkle root" in _hostile(cli, proof, pub, swapped)
    assert "altered" in _hostile(cli, proof, pub, altered)
    assert "checkpoint signs 11" in _hostile(cli, proof, pub, bigger_tree)
    assert "does not verify" in _hostile(cli, proof, pub, forged_root)


def test_proof_against_another_key_is_rejected(
    cli, proof_files: tuple[Path, Path], tmp_path: Path
) -> None:
    from pai.keys import generate

    proof, _ = proof_files
    other = tmp_path / "other.pub"
    other.write_text(json.dumps(generate("node").public_document()))
    result = check(cli, proof, other)
    assert result.exit_code == 1
    assert "not by" in result.json()["error"]["message"]


def test_prove_unknown_event(cli, signed_log: Path, tmp_path: Path) -> None:
    result = cli("audit", "prove", "99", "-o", str(tmp_path / "p.json"))
    assert result.exit_code == 1
    assert "there is no event 99" in result.stderr
    assert not (tmp_path / "p.json").exists()


# --- sealing --------------------------------------------------------------------------------


def _age(home: Path, up_to: int, when: str) -> None:
    """Backdate events 1..up_to (rechained: as if they had been written then)."""
    sql(home, "UPDATE events SET time = ? WHERE seq <= ?", [when, up_to])
    rechain(home)


def test_seal_moves_old_events_and_verify_spans_segments(cli, pai_home: Path) -> None:
    fill(20)
    _age(pai_home, 12, "2026-01-01T00:00:00Z")
    sealed = cli("audit", "seal", "--before", "2026-02-01", "--json")
    assert sealed.exit_code == 0, sealed.output
    doc = sealed.json()
    assert (doc["first_seq"], doc["last_seq"], doc["count"]) == (1, 12, 12)
    segment = pai_home / "audit" / "segments" / doc["file"]
    assert segment.read_bytes()[:4] == b"PAR1"
    assert sql(pai_home, "SELECT min(seq) FROM events")[0][0] == 13
    ok = verify(cli)
    assert ok.exit_code == 0, ok.output
    assert ok.json()["sealed_events"] == 12 and ok.json()["events"] == 21
    # a proof of a sealed event still works
    assert cli("audit", "prove", "3", "-o", str(pai_home / "p.json")).exit_code == 0
    assert check(cli, pai_home / "p.json", pai_home / "keys" / "node.pub").exit_code == 0
    # nothing more to seal
    again = cli("audit", "seal", "--before", "2026-02-01", "--json")
    assert again.json()["sealed"] == 0


def test_tampered_segment_is_detected(cli, pai_home: Path) -> None:
    fill(6)
    _age(pai_home, 4, "2026-01-01T00:00:00Z")
    doc = cli("audit", "seal", "--before", "2026-02-01", "--json").json()
    segment = pai_home / "audit" / "segments" / doc["file"]
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    err = failure(verify(cli))
    assert err["code"] == "audit-segment" and err["first_bad_seq"] == 1


def test_deleted_segment_is_detected(cli, pai_home: Path) -> None:
    fill(6)
    _age(pai_home, 4, "2026-01-01T00:00:00Z")
    assert cli("audit", "seal", "--before", "2026-02-01").exit_code == 0
    sql(pai_home, "DELETE FROM segments")
    err = failure(verify(cli))
    assert err["code"] == "audit-sequence" and err["first_bad_seq"] == 1


def test_seal_bad_date_is_a_usage_error(cli, pai_home: Path) -> None:
    result = cli("audit", "seal", "--before", "last tuesday")
    assert result.exit_code == 2
    assert "is not an ISO 8601 date" in result.stderr


# --- batching, concurrency, crashes ---------------------------------------------------------


def test_batcher_writes_a_lone_event_without_flush(pai_home: Path) -> None:
    """One event, far below max_events, is written once max_delay passes, with no flush()."""
    from pai.audit.verify import verify_log

    batcher = AuditBatcher(max_events=1000, max_delay=0.05)
    batcher.add("serve.start", resource="daemon", actor="svc:infer")
    deadline = time.monotonic() + 30
    written = 0
    while time.monotonic() < deadline:
        if (paths().audit / "audit.duckdb").exists():
            written = verify_log(paths()).events
            if written:
                break
        time.sleep(0.05)
    batcher.close()
    assert written == 1


def test_batcher_flushes_on_size_time_and_close(pai_home: Path) -> None:
    batcher = AuditBatcher(max_events=50, max_delay=0.05)
    for i in range(120):
        batcher.add("infer.embed", resource="model:m", actor="svc:infer", details={"n": i})
    assert batcher.flush() == 120
    batcher.add("infer.embed", outcome="denied", actor="svc:infer")
    assert batcher.close() == 121
    from pai.errors import StateError, UsageError

    with pytest.raises(StateError, match="closed"):
        batcher.add("x")
    with pytest.raises(UsageError):
        AuditBatcher().add("x", outcome="nope")
    from pai.audit.verify import verify_log

    assert verify_log(paths()).events == 121


def test_import_is_cheap_and_exit_flushes(pai_home: Path) -> None:
    code = (
        "import sys; import pai.audit as a; "
        "assert 'duckdb' not in sys.modules and 'pyarrow' not in sys.modules, sorted(sys.modules); "
        "b = a.AuditBatcher(max_events=1000, max_delay=60); b.add('exit.flush')"
    )
    env = {**os.environ, "PAI_HOME": str(pai_home)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sql(pai_home, "SELECT action FROM events") == [("exit.flush",)]


WRITER = textwrap.dedent(
    """
    import sys
    from pai.audit import AuditBatcher, record_event
    name, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "single":
        for i in range(count):
            seq = record_event("load." + name, resource=f"{name}:{i}", actor=name, details={"i": i})
            print(seq, flush=True)
    elif mode == "mixed":  # every 20th event appended alone, the rest batched
        batcher = AuditBatcher(max_events=19, max_delay=0.01)
        for i in range(count):
            if i % 20 == 19:
                batcher.flush()
                print(record_event("load." + name, resource=f"{name}:{i}", actor=name), flush=True)
            else:
                batcher.add("load." + name, resource=f"{name}:{i}", actor=name, details={"i": i})
        print(batcher.close(), flush=True)
    else:
        batcher = AuditBatcher(max_events=int(mode), max_delay=0.01)
        for i in range(count):
            batcher.add("load." + name, resource=f"{name}:{i}", actor=name, details={"i": i})
            if i % int(mode) == int(mode) - 1:
                print(batcher.flush(), flush=True)
        print(batcher.close(), flush=True)
    """
)


def _spawn(home: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PAI_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, *args], env=env, stdout=subprocess.PIPE, text=True
    )


def test_four_processes_append_concurrently_without_loss_or_fork(cli, pai_home: Path) -> None:
    (pai_home).mkdir(parents=True)
    (pai_home / "config.toml").write_text("[audit]\ncheckpoint_every = 700\n")
    modes = ["mixed", "10", "25", "50"]
    counts = [1000, 1000, 1000, 1000]
    procs = [
        _spawn(pai_home, f"w{i}", str(n), m)
        for i, (n, m) in enumerate(zip(counts, modes, strict=True))
    ]
    for proc in procs:
        proc.communicate(timeout=150)
        assert proc.returncode == 0
    result = verify(cli)
    assert result.exit_code == 0, result.output
    total = sum(counts)
    assert result.json()["events"] == total
    assert result.json()["checkpoints"] == total // 700
    per_writer = dict(
        sql(pai_home, "SELECT actor, count(DISTINCT resource) FROM events GROUP BY actor")
    )
    assert per_writer == {f"w{i}": n for i, n in enumerate(counts)}
    # the writers interleaved: the chain alternates between them many times
    actors = [r[0] for r in sql(pai_home, "SELECT actor FROM events ORDER BY seq")]
    switches = sum(1 for a, b in itertools.pairwise(actors) if a != b)
    assert switches >= 4


@pytest.mark.parametrize("mode", ["500", "single"])
def test_sigkill_mid_batch_keeps_every_acknowledged_event(cli, pai_home: Path, mode: str) -> None:
    acknowledged = 0
    for round_ in range(3):
        proc = _spawn(pai_home, f"k{round_}", "1000000", mode)
        assert proc.stdout is not None
        for _ in range(2 + round_):
            line = proc.stdout.readline()
            acknowledged = max(acknowledged, int(line))
        time.sleep(0.01 * round_)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        result = verify(cli)
        assert result.exit_code == 0, result.output
        assert result.json()["events"] >= acknowledged
    seqs = [r[0] for r in sql(pai_home, "SELECT seq FROM events ORDER BY seq")]
    assert seqs == list(range(1, len(seqs) + 1))


# --- exports --------------------------------------------------------------------------------


@pytest.fixture
def month(cli, pai_home: Path) -> Path:
    """Thirty events spread over October, three on November 1, and a checkpoint."""
    pai_home.mkdir(parents=True)
    (pai_home / "config.toml").write_text('[audit]\ncheckpoint_interval = "1000d"\n')
    from pai.audit import pending, record_events

    record_events(
        [
            pending(
                "keys.rotate" if i % 3 == 0 else "infer.embed",
                resource=f"item:{i}",
                actor="alice" if i % 2 else "svc:inference",
                outcome="denied" if i % 10 == 9 else "ok",
                details={"i": i},
            )
            for i in range(30)
        ]
    )
    sql_many(
        pai_home,
        [
            ("UPDATE events SET time = ? WHERE seq = ?", [f"2026-10-{seq:02d}T10:00:00Z", seq])
            for seq in range(1, 31)
        ],
    )
    record_events([pending("infer.embed", resource="late", details={"i": i}) for i in range(3)])
    sql(pai_home, "UPDATE events SET time = ? WHERE seq > 30", ["2026-11-01T10:00:00Z"])
    rechain(pai_home)
    assert cli("audit", "checkpoint").exit_code == 0
    return pai_home


def test_export_jsonl_with_filters(cli, month: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.jsonl"
    result = cli(
        "audit",
        "export",
        "--since",
        "2026-10-05",
        "--until",
        "2026-10-20",
        "--actor",
        "svc:*",
        "--format",
        "jsonl",
        "-o",
        str(out),
        "--json",
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in rows] == [5, 7, 9, 11, 13, 15, 17, 19]
    assert result.json()["events"] == 8
    assert rows[0]["details"] == {"i": 4} and rows[0]["actor"] == "svc:inference"


def test_export_csv_outcome_and_action(cli, month: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.csv"
    result = cli(
        "audit",
        "export",
        "--outcome",
        "denied",
        "--action",
        "infer.*",
        "--format",
        "csv",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0] == "seq,time,actor,action,resource,outcome,details,prev_hash,hash"
    assert [line.split(",")[0] for line in lines[1:]] == ["20", "30"]


def test_export_html_is_self_contained(cli, month: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = cli(
        "audit", "export", "--since", "2026-10-01", "--until", "2026-11-01", "-o", str(out)
    )
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "Verified" in page and "<svg" in page and "2026-10-01T00:00:00Z" in page
    assert json.loads((month / "keys" / "node.pub").read_text())["kid"] in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<link" not in page and "src=" not in page
    embedded = page.split('id="pai-audit-events">')[1].split("</script>")[0]
    assert len(json.loads(embedded)) == 30


def test_export_report_shows_a_failed_verification(cli, month: Path, tmp_path: Path) -> None:
    sql(month, "UPDATE events SET actor = 'mallory' WHERE seq = 7")
    out = tmp_path / "r.html"
    assert cli("audit", "export", "-o", str(out)).exit_code == 0
    page = out.read_text()
    assert "NOT verified" in page and "audit-hash" in page


def test_export_bad_arguments(cli, month: Path, tmp_path: Path) -> None:
    bad = cli("audit", "export", "--format", "pdf", "-o", str(tmp_path / "x"))
    assert bad.exit_code == 2 and "--format must be one of csv, jsonl, html" in bad.stderr
    order = cli(
        "audit",
        "export",
        "--since",
        "2026-10-10",
        "--until",
        "2026-10-01",
        "-o",
        str(tmp_path / "x"),
    )
    assert order.exit_code == 2 and "--until must be later than --since" in order.stderr
    assert not (tmp_path / "x").exists()


def _clean_python(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Python where pai cannot be imported: no site hooks, only cryptography on the path."""
    import cryptography

    site = Path(cryptography.__file__).parent.parent
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-S", *args],
        env=env,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _standalone(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _clean_python(folder, str(folder / "verify_evidence.py"), str(folder), *args)


@pytest.mark.parametrize("fmt", ["html", "csv", "jsonl"])
def test_evidence_verifies_offline_without_pai(cli, month: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "evidence"
    result = cli(
        "audit",
        "export",
        "--since",
        "2026-10-10",
        "--until",
        "2026-10-20",
        "--outcome",
        "ok",
        "--format",
        fmt,
        "-o",
        str(out),
        "--with-evidence",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert result.json()["slice"] == {"first_seq": 9, "last_seq": 34}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            f"report.{fmt}",
            "events.jsonl",
            "checkpoints.jsonl",
            "node.pub",
            "evidence.json",
            "verify_evidence.py",
            "README.txt",
        ]
    )
    assert "No module named 'pai'" in _clean_python(out, "-c", "import pai").stderr
    ok = _standalone(out, "--pubkey", str(month / "keys" / "node.pub"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "VERIFIED" in ok.stdout and "exactly the 9 matching events" in ok.stdout


def test_tampered_evidence_is_rejected(cli, month: Path, tmp_path: Path) -> None:
    out = tmp_path / "evidence"
    assert (
        cli(
            "audit",
            "export",
            "--since",
            "2026-10-10",
            "--format",
            "jsonl",
            "-o",
            str(out),
            "--with-evidence",
        ).exit_code
        == 0
    )
    pristine = {p.name: p.read_bytes() for p in out.iterdir()}

    def restore() -> None:
        for name, data in pristine.items():
            (out / name).write_bytes(data)

    report = out / "report.jsonl"
    lines = report.read_text().splitlines()
    report.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # drop an event
    assert "report holds" in _standalone(out).stdout
    restore()
    report.write_text(report.read_text().replace('"outcome":"denied"', '"outcome":"ok"', 1))
    assert "differs from the signed log" in _standalone(out).stdout
    restore()
    events = out / "events.jsonl"
    events.write_text(events.read_text().replace('"actor":"alice"', '"actor":"bob"', 1))
    assert "was altered" in _standalone(out).stdout
    restore()
    from pai.keys import generate

    other = tmp_path / "other.pub"
    other.write_text(json.dumps(generate("node").public_document()))
    assert "not by" in _standalone(out, "--pubkey", str(other)).stdout
    restore()
    assert _standalone(out).returncode == 0
