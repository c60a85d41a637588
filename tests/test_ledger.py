"""The resume ledger's own guarantees, on real files (the killed-run tests are in test_cli and test_ray_engine)."""

from __future__ import annotations

from pathlib import Path

from cutq_runtime import ledger


def _inputs(tmp_path: Path, n: int) -> list[tuple[str, str]]:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    pairs = []
    for i in range(n):
        source = tmp_path / "in" / f"{i}.jpg"
        source.write_bytes(b"x" * (i + 1))
        pairs.append((str(source), str(tmp_path / "out" / f"{i}.png")))
    return pairs


def test_a_torn_last_line_is_cut_so_the_next_record_survives(tmp_path: Path) -> None:
    (a, a_out), (b, b_out) = _inputs(tmp_path, 2)
    first = ledger.Ledger(tmp_path / "out", "key")
    first.commit(a, a_out, ledger.write_temp(a_out, b"png-a"))
    first.close()
    with open(first.path, "a") as handle:
        handle.write('{"source": "half a line')  # killed mid-append
    second = ledger.Ledger(tmp_path / "out", "key")
    second.commit(b, b_out, ledger.write_temp(b_out, b"png-b"))
    second.close()
    third = ledger.Ledger(tmp_path / "out", "key")
    assert third.finished(a, a_out) and third.finished(b, b_out)


def test_committed_but_not_renamed_is_recovered_and_other_settings_or_bytes_redo(tmp_path: Path) -> None:
    (a, a_out), (b, b_out) = _inputs(tmp_path, 2)
    run = ledger.Ledger(tmp_path / "out", "key")
    temp = ledger.write_temp(a_out, b"png-a")
    run._append(ledger.Record(a, a_out, "done", ledger.fingerprint(a), "key"))  # killed before the rename
    run.close()
    again = ledger.Ledger(tmp_path / "out", "key")
    assert again.finished(a, a_out) and Path(a_out).read_bytes() == b"png-a" and not Path(temp).exists()
    assert not ledger.Ledger(tmp_path / "out", "other-model").finished(a, a_out)
    Path(a).write_bytes(b"changed input")
    assert not ledger.Ledger(tmp_path / "out", "key").finished(a, a_out)
    assert not again.finished(b, b_out)  # never done
