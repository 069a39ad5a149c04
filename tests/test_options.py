"""Option parsing: every accepted spelling, and a clear error for everything else."""

from __future__ import annotations

import pytest

from pytest_nsbox.box.options import (
    OPTIONS,
    BoxOptions,
    OptionError,
    format_size,
    parse_options,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1024, 1024),
        ("64M", 64 << 20),
        ("64MiB", 64 << 20),
        ("64mb", 64 << 20),
        ("1.5G", 3 << 29),
        ("512Ki", 512 << 10),
        ("100", 100),
        (" 2 g ", 2 << 30),
    ],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "", "-5M", "0", 0, True, "1.5.5G", "64X", None, [1]])
def test_bad_sizes_name_the_option_and_what_is_accepted(text: object) -> None:
    with pytest.raises(OptionError) as info:
        parse_size(text)
    assert "memory=" in str(info.value)
    assert "'64M'" in str(info.value)


def test_format_size() -> None:
    assert format_size(64 << 20) == "64 MiB"
    assert format_size(3 << 29) == "1.5 GiB"
    assert format_size(512) == "512 B"


def test_defaults_match_the_contract() -> None:
    options = BoxOptions()
    assert (options.net, options.hostname, options.tmpfs, options.user) == (
        "isolated", "nsbox", ("/tmp",), "self")
    assert options.memory is None and options.timeout is None and options.enabled
    assert {spec.name: spec.default for spec in OPTIONS} == {
        name: value for name, value in options.as_dict().items()
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"memroy": "1G"}, "did you mean 'memory'"),
        ({"net": "bogus"}, "'isolated' or 'none' or 'host'"),
        ({"pids": -1}, "whole number of tasks"),
        ({"pids": 2.5}, "whole number of tasks"),
        ({"timeout": -1}, "positive number of seconds"),
        ({"timeout": "soon"}, "positive number of seconds"),
        ({"cpu": 0}, "number of cores"),
        ({"cpuset": "1-0"}, "'0-1'"),
        ({"cpuset": "a"}, "'0-1'"),
        ({"hostname": "bad host"}, "host name"),
        ({"tmpfs": "relative"}, "absolute path"),
        ({"tmpfs": ["/"]}, "other than '/'"),
        ({"readonly": "maybe"}, "True or False"),
        ({"user": "nobody"}, "'self' or 'root' or 'host'"),
        ({"netem": {"delay": "fast"}}, "'50ms'"),
        ({"netem": {"jitter": "5ms"}}, "together with a 'delay'"),
        ({"netem": {"bandwidth": "1mbit"}}, "keys delay"),
        ({"netem": {"loss": "150%"}}, "percentage"),
    ],
)
def test_bad_values(values: dict[str, object], message: str) -> None:
    with pytest.raises(OptionError) as info:
        parse_options(values)
    name = next(iter(values))
    assert name in str(info.value)
    assert message in str(info.value)


def test_good_values_are_normalised() -> None:
    options = parse_options({
        "memory": "256M", "cpu": "0.5", "cpuset": "0, 1", "pids": 64, "timeout": 10,
        "net": "isolated",
        "netem": {"delay": "50ms", "jitter": "5ms", "loss": "1%", "rate": "1mbit"},
        "hostname": "box-1.test", "tmpfs": "/tmp /var/tmp/", "readonly": "yes", "user": "root",
        "enabled": False,
    })
    assert options.memory == 256 << 20
    assert options.cpu == 0.5
    assert options.cpuset == "0,1"
    assert options.tmpfs == ("/tmp", "/var/tmp")
    assert options.readonly is True
    assert options.enabled is False
    assert options.netem == {"delay": "50ms", "jitter": "5ms", "loss": "1%", "rate": "1mbit"}


def test_none_clears_a_limit_but_not_a_mode() -> None:
    base = parse_options({"memory": "1G"})
    assert parse_options({"memory": None}, base=base).memory is None
    with pytest.raises(OptionError):
        parse_options({"net": None})


def test_replace_validates() -> None:
    options = BoxOptions().replace(memory="64M")
    assert options.memory == 64 << 20
    with pytest.raises(OptionError):
        options.replace(net="bogus")


def test_net_options_that_cannot_mean_anything() -> None:
    with pytest.raises(OptionError, match="together with net='isolated'"):
        parse_options({"net": "none", "netem": {"delay": "5ms"}})
    with pytest.raises(OptionError, match="forwarded ports together with net='isolated'"):
        parse_options({"net": "host", "forward": {5432: "127.0.0.1:5432"}})


def test_devices() -> None:
    assert parse_options({"devices": ["/dev/fuse"]}).devices == ("/dev/fuse",)
    assert parse_options({"devices": "host"}).devices == ("host",)
    for bad in (["/etc/passwd"], ["/dev"], ["host", "/dev/fuse"], 3):
        with pytest.raises(OptionError, match="devices"):
            parse_options({"devices": bad})
