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
