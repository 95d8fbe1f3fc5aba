"""Fuzzed run folders for ``train --resume``: a damaged ``config.json``, ``metrics.jsonl``
(a torn last line is what a killed run leaves), resume state and last checkpoint. Resuming
either works or gives one of our one-line errors naming the run's file, and changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from records import FUZZ, check_input
from records import restored as damaged

from napari_inkdetect.engine import drain
from napari_inkdetect.training import train

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True),
    st.text(max_size=6), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip
WHERE = "train --resume"


def _resume(config, run: Path) -> None:
    assert Path(config.out) == run
    drain(train(config.with_(resume=True)))


@pytest.mark.parametrize("action", ["removed", "replaced by junk"])
@settings(max_examples=5, **FUZZ)
@given(data=st.data(), value=JUNK)
def test_config_json_value(run_folder, action, data, value):
    source, config = run_folder
    with damaged(source) as run:
        stored = json.loads((run / "config.json").read_text())
        key = data.draw(st.sampled_from(sorted(stored)))
        if action == "removed":
            del stored[key]
        else:
            stored[key] = value
        (run / "config.json").write_text(json.dumps(stored))
        check_input(
            lambda: _resume(config, run),
            ["config.json", str(run)],
            f"run config.json: a setting {action}",
            WHERE,
            [run],
            writes=True,
        )


@pytest.mark.parametrize(
    "content",
    ["", "{", "[1, 2]", "null", '"text"', "\x00\x01binary", '{"segment": 3}'],
    ids=["empty", "torn", "list", "null", "string", "binary", "wrong types"],
)
def test_config_json_unreadable(run_folder, content):
    source, config = run_folder
    with damaged(source) as run:
        (run / "config.json").write_text(content)
        check_input(
            lambda: _resume(config, run),
            ["config.json", str(run)],
            f"run config.json: {content[:12]!r}",
            WHERE,
            [run],
            may_read=False,
        )


@settings(max_examples=5, **FUZZ)
@given(
    lines=st.lists(
        st.one_of(
            st.just('{"kind": "step", "step": 1, "loss": 0.5}'),
            st.just('{"kind": "step", "step": 9'),  # torn by a kill mid-write
            st.just("[1, 2]"),
            st.just("null"),
            st.just('{"step": "two"}'),
            st.just(""),
            st.just('{"step": NaN}'),
            st.text(max_size=10),
        ),
        max_size=5,
    )
)
def test_metrics_jsonl(run_folder, lines):
    source, config = run_folder
    with damaged(source) as run:
        (run / "metrics.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""))
        check_input(
            lambda: _resume(config, run),
            ["metrics.jsonl", str(run)],
            "run metrics.jsonl: torn, empty or junk lines",
            WHERE,
            [run],
            writes=True,
        )


@pytest.mark.parametrize("name", ["last.state.pt", "last.safetensors"])
@pytest.mark.parametrize("damage", ["truncated", "zero-length", "garbage", "removed"])
def test_resume_state_damaged(run_folder, name, damage):
    source, config = run_folder
    with damaged(source) as run:
        target = run / name
        data = target.read_bytes()
        if damage == "removed":
            target.unlink()
        else:
            target.write_bytes({"truncated": data[: len(data) // 2], "zero-length": b"",
                                "garbage": b"\x80\x02garbage" * 50}[damage])  # fmt: skip
        check_input(
            lambda: _resume(config, run),
            [name, str(run)],
            f"run {name} {damage}",
            WHERE,
            [run],
            may_read=False,
        )


@pytest.mark.parametrize(
    "state",
    [[1, 2], {"step": "two"}, {"optimizer": {}}, {"step": 2, "optimizer": 3}],
    ids=["list", "step not a number", "keys missing", "optimizer not a dict"],
)
def test_resume_state_of_the_wrong_shape(run_folder, state):
    import torch

    source, config = run_folder
    with damaged(source) as run:
        torch.save(state, run / "last.state.pt")
        check_input(
            lambda: _resume(config, run),
            ["last.state.pt", str(run)],
            f"run last.state.pt holding {type(state).__name__} {list(state)[:2]}",
            WHERE,
            [run],
            may_read=False,
        )
