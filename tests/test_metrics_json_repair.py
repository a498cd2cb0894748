"""metrics.json after a kill mid-write (issue 6): compat.fix_partial_metrics_json repairs the file where fast-reid's
JSONWriter opens it (every training start, --resume included): a trailing partial line is dropped with a warning,
complete lines stay byte for byte."""
import json
import logging
import os

import pytest

import fastreid_dpmpp  # noqa: F401  (applies the compat fixes)
from fastreid.utils.events import EventStorage, JSONWriter

from fastreid_dpmpp import compat

RECORDS = [{"iteration": 1, "total_loss": 2.5, "lr": 0.001}, {"iteration": 3, "total_loss": 1.25, "lr": 0.0005}]


def _complete_lines(records):
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()


def _parse_lines(path):
    with open(path, "rb") as f:
        content = f.read()
    assert content == b"" or content.endswith(b"\n")
    return [json.loads(line) for line in content.decode().splitlines()]


def test_a_partial_last_line_is_dropped_with_a_warning_naming_file_and_bytes(tmp_path, caplog):
    path = tmp_path / "metrics.json"
    complete = _complete_lines(RECORDS)
    partial = b'{"iteration": 5, "lr": 0.00025, "total_lo'
    path.write_bytes(complete + partial)
    with pytest.raises(json.JSONDecodeError):  # what a reader of the killed run's file gets
        [json.loads(line) for line in path.read_text().splitlines()]
    with caplog.at_level(logging.WARNING, logger="fastreid.dpmpp.compat"):
        dropped = compat.repair_partial_json_lines(str(path))
    assert dropped == len(partial)
    assert path.read_bytes() == complete  # the complete lines, byte for byte
    assert _parse_lines(path) == RECORDS
    warning = caplog.text
    assert str(path) in warning and f"{len(partial)} bytes" in warning


@pytest.mark.parametrize("content", [b"", b'{"iteration": 1}\n', b'{"iteration": 1}\n{"iteration": 3}\n'])
def test_complete_files_are_left_untouched(tmp_path, content, caplog):
    path = tmp_path / "metrics.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert compat.repair_partial_json_lines(str(path)) == 0
    assert path.read_bytes() == content and not caplog.records
    assert compat.repair_partial_json_lines(str(tmp_path / "absent.json")) == 0
    assert not (tmp_path / "absent.json").exists()


def test_a_file_that_is_one_partial_line_becomes_empty(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_bytes(b'{"iterati')
    assert compat.repair_partial_json_lines(str(path)) == 9
    assert path.read_bytes() == b""


def test_a_whole_record_cut_just_before_its_newline_is_kept(tmp_path):
    path = tmp_path / "metrics.json"
    complete = _complete_lines(RECORDS[:1])
    last = json.dumps(RECORDS[1], sort_keys=True).encode()
    path.write_bytes(complete + last)
    assert compat.repair_partial_json_lines(str(path)) == 0
    assert path.read_bytes() == complete + last + b"\n"


def test_a_partial_line_longer_than_the_read_block_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(compat, "_TAIL_BLOCK", 16)  # the backwards scan crosses several blocks
    path = tmp_path / "metrics.json"
    complete = _complete_lines(RECORDS)
    partial = b'{"iteration": 5, "' + b"x" * 100
    path.write_bytes(complete + partial)
    assert compat.repair_partial_json_lines(str(path)) == len(partial)
    assert path.read_bytes() == complete


def _write_records(writer, records):
    with EventStorage(0) as storage:
        for record in records:
            storage.iter = record["iteration"]
            for key, value in record.items():
                if key != "iteration":
                    storage.put_scalar(key, value, smoothing_hint=False)
            writer.write()
    writer.close()


def test_a_resumed_writer_appends_after_the_repaired_file(tmp_path):
    """The fast-reid writer, killed mid-line (simulated by cutting its file inside the last line), then a new
    JSONWriter as a resumed run builds it: the file parses line by line, old complete lines byte for byte."""
    path = tmp_path / "metrics.json"
    _write_records(JSONWriter(str(path)), RECORDS)
    written = path.read_bytes()
    first_line_end = written.index(b"\n") + 1
    os.truncate(path, first_line_end + 10)  # the kill: the second line is cut after 10 bytes

    resumed = {"iteration": 5, "total_loss": 0.5, "lr": 0.00025}
    _write_records(JSONWriter(str(path)), [resumed])
    assert path.read_bytes().startswith(written[:first_line_end])
    assert [r["iteration"] for r in _parse_lines(path)] == [1, 5]
    assert _parse_lines(path)[1]["total_loss"] == resumed["total_loss"]


def test_the_fix_is_installed_on_fastreid_json_writer():
    assert JSONWriter.__init__.__wrapped_original__.__module__ == "fastreid.utils.events"
