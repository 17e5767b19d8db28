"""osr-score --resume over files it did not write (issue 20: `printf '[1, 2]\\n' > a.jsonl` then
--resume exited 1 with a traceback): any line that is not one of its rows is refused with exit 2,
one line, and the file untouched; a torn last row of its own is still cut. Hypothesis writes the
hostile files."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from osr.serve.score_cli import UsageError, _open_output
from osr.serve.score_cli import main as score_main
from osr.serve.score_output import CSV_FIELDS, RowWriter

ROOT = Path(__file__).resolve().parents[1]
CSV_HEADER = (",".join(f'"{name}"' for name in CSV_FIELDS) + "\n").encode()
SAMPLE = str(ROOT / "samples" / "cat.jpg")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=10,
)
ok_rows = st.fixed_dictionaries({
    "path": st.text(min_size=1, max_size=12), "status": st.just("ok"), "error": st.none(),
    "class_index": st.integers(-1, 9), "class_name": st.text(max_size=6), "score": st.floats(-50, 50),
    "p_value": st.floats(0, 1), "unknown": st.booleans(),
    "top_k": st.lists(st.fixed_dictionaries({"class_index": st.integers(0, 9), "class_name": st.text(max_size=4),
                                             "logit": st.floats(-9, 9)}), max_size=2),
})
error_rows = st.fixed_dictionaries({
    "path": st.text(min_size=1, max_size=12), "status": st.just("error"), "error": st.text(max_size=20),
    "class_index": st.none(), "class_name": st.none(), "score": st.none(), "p_value": st.none(),
    "unknown": st.none(), "top_k": st.just([]),
})
our_rows = ok_rows | error_rows
# rows that look like ours but are not: one field of the wrong kind


def replaced(rows, key: str, values):
    return st.builds(lambda row, value: {**row, key: value}, rows, values)


def not_a_probability(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1


hostile_rows = st.one_of(
    replaced(our_rows, "path", json_values.filter(lambda v: not isinstance(v, str))),
    replaced(our_rows, "status", json_values.filter(lambda v: v not in ("ok", "error"))),
    replaced(ok_rows, "p_value", json_values.filter(not_a_probability)),
    replaced(ok_rows, "unknown", json_values.filter(lambda v: not isinstance(v, bool))),
    replaced(our_rows, "path_bytes_b64", st.integers() | st.lists(st.text(max_size=3), min_size=1)
             | st.text(alphabet="!*%", min_size=1, max_size=5)),
)
not_rows = json_values.filter(lambda v: not isinstance(v, dict)) | st.dictionaries(
    st.text(max_size=6).filter(lambda key: key != "path"), json_values, max_size=4)
lines = st.lists(
    st.one_of(
        st.tuples(st.just("ours"), our_rows),
        st.tuples(st.just("json"), not_rows),
        st.tuples(st.just("hostile"), hostile_rows),
        st.tuples(st.just("bytes"), st.binary(max_size=30)),
    ),
    max_size=6,
)


def write_file(path: Path, fmt: str, items: list, cut: int | None) -> bytes:
    """Rows of ours through RowWriter (the real format), the others as they are; then maybe a cut."""
    path.write_bytes(b"")
    for kind, value in items:
        if kind == "ours":
            writer = RowWriter(path, fmt)
            writer.write([value])
            writer.close()
        elif kind == "bytes":
            with open(path, "ab") as handle:
                handle.write(value + b"\n")
        elif fmt == "jsonl":
            with open(path, "ab") as handle:
                handle.write(json.dumps(value).encode("utf-8", "surrogatepass") + b"\n")
        else:
            cells = list(value.values()) if isinstance(value, dict) else [value]
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerow(cells)
            with open(path, "ab") as handle:
                handle.write(text.getvalue().encode("utf-8", "surrogatepass"))
    data = path.read_bytes()
    if cut is not None and data:
        data = data[: cut % len(data)]
        path.write_bytes(data)
    return data


def resume(path: Path, fmt: str) -> tuple[bool, bytes]:
    """(resumed?, the file afterwards): --resume's opening of --out, UsageError being its only refusal."""
    try:
        writer, _, _ = _open_output(argparse.Namespace(out=path, resume=True), fmt)
    except UsageError as exc:
        assert "\n" not in str(exc) and "is not a row osr-score writes" in str(exc) or "damaged" in str(exc), exc
        return False, path.read_bytes()
    writer.close()
    return True, path.read_bytes()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=lines, cut=st.none() | st.integers(0, 10_000))
def test_resume_refuses_what_it_did_not_write_and_changes_nothing(tmp_path: Path, fmt: str, items: list,
                                                                  cut: int | None) -> None:
    path = tmp_path / f"rows.{fmt}"
    before = write_file(path, fmt, items, cut)
    resumed, after = resume(path, fmt)
    if not resumed:
        assert after == before  # nothing lost
        return
    if fmt == "csv" and CSV_HEADER.startswith(before):
        assert after == CSV_HEADER  # an empty file, or a torn header, gets the header
        return
    assert before.startswith(after)  # at most a torn tail was cut ...
    if after != before:
        tail = before[len(after):]
        assert b"\n" not in tail.rstrip(b"\n") or fmt == "csv"
        assert tail.startswith(b'{"path": ' if fmt == "jsonl" else b'"')  # ... and only one of its own rows
    if fmt == "jsonl" and cut is None:
        assert all(kind == "ours" or (kind == "bytes" and not value.strip()) for kind, value in items), items


@pytest.mark.parametrize("content", [b"[1, 2]\n", b'{"path": ["a.jpg"], "status": "ok"}\n', b"[1, 2]",
                                     b'{"path": "a.jpg", "status": "ok", "p_value": NaN, "unknown": false}\n',
                                     b"[" * 100_000 + b"\n"],
                         ids=["list", "path_is_a_list", "list_without_newline", "nan_p_value", "nesting_bomb"])
def test_osr_score_resume_of_a_foreign_line_exits_2_with_one_line(tmp_path: Path, capsys, content: bytes) -> None:
    out = tmp_path / "a.jsonl"
    out.write_bytes(content)
    assert score_main([SAMPLE, "--out", str(out), "--resume", "--model-repository",
                       str(ROOT / "model_repository")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"osr-score: error: cannot resume from {out}: line 1 is not a row osr-score writes (")
    assert "Traceback" not in capsys.readouterr().err
    assert out.read_bytes() == content


def test_a_csv_with_another_header_is_refused_untouched(tmp_path: Path) -> None:
    out = tmp_path / "a.csv"
    out.write_bytes(b"name,size\nx.jpg,3\n\"torn")
    assert resume(out, "csv") == (False, b"name,size\nx.jpg,3\n\"torn")


def test_its_own_torn_rows_are_still_cut(tmp_path: Path) -> None:
    out = tmp_path / "a.jsonl"
    writer = RowWriter(out, "jsonl")
    writer.write([{"path": "a.jpg", "status": "error", "error": "x", "class_index": None, "class_name": None,
                   "score": None, "p_value": None, "unknown": None, "top_k": []}])
    writer.close()
    whole = out.read_bytes()
    out.write_bytes(whole + b'{"path": "b.jp')
    assert resume(out, "jsonl") == (True, whole)
