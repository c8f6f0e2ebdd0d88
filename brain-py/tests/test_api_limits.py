"""``HttpLimits`` and the ``brain serve`` flags that set it: bad values are refused with
the flag's (or the field's) name, the defaults are the documented ones, and the server
makes room for its connections in the open-file limit."""

from __future__ import annotations

import resource

import pytest

from brain._api.limits import HttpLimits
from brain._api.server import _room_for_connections
from brain.cli import _http_limits, _parser


def test_the_flags_default_to_the_limits_defaults() -> None:
    assert _http_limits(_parser().parse_args(["serve"])) == HttpLimits()


def test_the_flags_and_their_environment_variables_set_every_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BRAIN_MAX_CONNECTIONS_PER_PEER", "7")
    monkeypatch.setenv("BRAIN_REQUEST_BODY_TIMEOUT", "2.5")
    args = _parser().parse_args(
        [
            "serve",
            "--max-connections",
            "9",
            "--max-request-bytes",
            "1000",
            "--request-head-timeout",
            "0.5",
        ]
    )
    assert _http_limits(args) == HttpLimits(
        max_connections=9,
        max_connections_per_peer=7,
        max_body_bytes=1000,
        head_timeout=0.5,
        body_timeout=2.5,
    )


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-connections", "0", "argument --max-connections: must be at least 1, got 0"),
        ("--max-request-bytes", "1k", "argument --max-request-bytes: not a whole number: '1k'"),
        ("--request-body-timeout", "-1", "argument --request-body-timeout: must be positive"),
        ("--request-head-timeout", "soon", "not a number of seconds: 'soon'"),
    ],
)
def test_a_bad_flag_is_refused_by_name(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(["serve", flag, value])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_environment_variable_is_refused_like_its_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BRAIN_MAX_CONNECTIONS", "many")
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve"])
    assert "argument --max-connections: not a whole number: 'many'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "field",
    [
        "head_timeout",
        "body_timeout",
        "max_connections",
        "max_connections_per_peer",
        "max_body_bytes",
    ],
)
def test_limits_refuse_zero(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        HttpLimits(**{field: 0})


def test_serve_raises_the_open_file_limit_to_hold_its_connections() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1_500 + 1_024  # connections + the brain's other files
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard limit on open files ({hard}) is under {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1_024, hard))
    try:
        _room_for_connections(1_500)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (wanted, hard)
        _room_for_connections(10)  # never lowered
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (wanted, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
