"""Durability: kill -9 a writing process at random moments; every acknowledged point must
survive with its exact vector and payload, and no batch may be half-applied.

qv_crash_writer applies a deterministic sequence of batches (upserts of 1..64 points,
deletes by id and by filter) and prints "ack B N" after each call returns. After each kill,
`qv_crash_writer verify` replays the sequence and compares the collection bit for bit with
the replay up to the last acknowledged batch, or the one after it (committed, not yet
acknowledged). The next writer continues from the state found, so recovery is exercised on
an ever-growing collection."""
import os
import random
import subprocess
import time

from conftest import CRASH_WRITER

KILLS = max(50, int(os.environ.get("QUIVER_CRASH_KILLS", "60")))


def test_kill9_loses_no_acknowledged_point(tmp_path):
    rng = random.Random(1234)
    data = str(tmp_path / "crash")
    seed = "20261124"
    state = -1  # last batch known applied
    acked_points = 0
    lost_total = 0
    kills = 0
    for _ in range(KILLS):
        w = subprocess.Popen([CRASH_WRITER, "write", data, str(state + 1), seed],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Kill at any moment: sometimes before the collection is even open.
        time.sleep(rng.choice([0, rng.uniform(0, 0.05), rng.uniform(0.05, 0.4)]))
        w.kill()
        out, err = w.communicate()
        assert w.returncode == -9, f"writer ended on its own ({w.returncode}): {err}"
        kills += 1
        acks = [l.split() for l in out.splitlines() if l.startswith("ack ")]
        last = int(acks[-1][1]) if acks else state
        acked_points += sum(int(a[2]) for a in acks)
        v = subprocess.run([CRASH_WRITER, "verify", data, str(last), seed],
                           capture_output=True, text=True, timeout=120)
        fields = v.stdout.split()
        assert fields and fields[0] == "state", f"verify failed: {v.stdout} {v.stderr}"
        lost_total += int(fields[5])
        assert v.returncode == 0, f"after kill {kills} (last ack {last}): {v.stdout.strip()}"
        state = int(fields[1])
        assert state in (last, last + 1)
    print(f"\ncrash test: {kills} kills, {acked_points} acknowledged points, "
          f"{state + 1} batches applied, points lost = {lost_total}")
    assert kills == KILLS
    assert acked_points > 0
    assert lost_total == 0


def test_failed_sync_is_reported_sticky_and_loses_nothing(tmp_path):
    """Failure injection: libqv_failpoint.so (LD_PRELOAD) makes the Nth fsync/fdatasync
    and every later one fail with EIO, as a dying disk would. The write that hits it must
    fail (EIO passed through), the handle must then refuse writes (QV_ESTICKY, -15), and
    after reopening, every acknowledged point must be intact and writes must work again."""
    shim = os.path.join(os.path.dirname(os.path.abspath(CRASH_WRITER)), "libqv_failpoint.so")
    assert os.path.exists(shim), shim
    seed = "77"
    checked = 0
    for n, at in enumerate([4, 5, 8, 13, 21, 34, 55, 89]):
        data = str(tmp_path / f"fail{n}")
        env = dict(os.environ, LD_PRELOAD=shim, QV_FAIL_SYNC_AT=str(at),
                   ASAN_OPTIONS=os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0")
        w = subprocess.run([CRASH_WRITER, "write", data, "0", seed], capture_output=True, text=True,
                           env=env, timeout=120)
        assert w.returncode == 2, (at, w.stdout[-300:], w.stderr)
        lines = w.stdout.splitlines()
        acks = [int(l.split()[1]) for l in lines if l.startswith("ack ")]
        last = acks[-1] if acks else -1
        if "fail" not in w.stdout:  # the sync failed while the collection was being created
            assert "create" in w.stderr and not acks, w.stderr
        else:
            fail = next(l.split() for l in lines if l.startswith("fail "))
            assert int(fail[1]) == last + 1 and int(fail[2]) == 5, fail  # EIO
            assert "retry -15" in lines, lines[-3:]
            checked += 1
        v = subprocess.run([CRASH_WRITER, "verify", data, str(last), seed], capture_output=True, text=True,
                           timeout=120)
        assert v.returncode == 0, (at, v.stdout, v.stderr)
        state = int(v.stdout.split()[1])
        assert state in (last, last + 1) and v.stdout.split()[5] == "0"
        # Reopened without the fault, the collection takes writes again.
        w2 = subprocess.Popen([CRASH_WRITER, "write", data, str(state + 1), seed], stdout=subprocess.PIPE,
                              text=True)
        got = [w2.stdout.readline() for _ in range(3)]
        w2.kill()
        rest, _ = w2.communicate()
        acks2 = [int(l.split()[1]) for l in (got + rest.splitlines()) if l.startswith("ack ")]
        assert acks2, got
        v2 = subprocess.run([CRASH_WRITER, "verify", data, str(acks2[-1]), seed], capture_output=True,
                            text=True, timeout=120)
        assert v2.returncode == 0, v2.stdout
    assert checked >= 5
