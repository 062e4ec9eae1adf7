"""Bad input for the live backend: each a clear error naming what to do, no traceback from the CLI.
None of these needs a running deployment; a wrong model name does (tests/test_live.py)."""

from __future__ import annotations

import socket
import subprocess
import sys

import gymnasium as gym
import pytest

import envs  # noqa: F401  (registers the env id)
from envs.live.backend import LiveConfig, Unreachable
from envs.live.deploy import DeploymentError
from tests.test_cli_errors import assert_user_error, run_cli


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again on exit: nothing listens there


def test_unreachable_endpoint_fails_at_construction_with_what_to_do():
    url = f"http://127.0.0.1:{_closed_port()}"
    live = {"frontend_url": url, "control_url": url, "model_name": "m"}
    with pytest.raises(Unreachable, match=r"cannot reach the Dynamo frontend.*poa-gym dynamo up"):
        gym.make("PoAGym/DisaggRouting-v0", scenario="agg-4w-prefix", backend="dynamo", live=live)


def test_a_workdir_without_a_deployment_says_how_to_start_one(tmp_path):
    with pytest.raises(DeploymentError, match=r"no deployment recorded here.*poa-gym dynamo up"):
        gym.make(
            "PoAGym/DisaggRouting-v0",
            scenario="agg-4w-prefix",
            backend="dynamo",
            live={"workdir": str(tmp_path)},
        )


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"frontend_url": "http://x"}, "go together"),
        ({"workdir": None}, "needs a workdir"),
        ({"speedup": 0}, "live.speedup"),
        ({"request_timeout_s": -1}, "request_timeout_s"),
    ],
)
def test_live_config_rules(fields, fragment):
    with pytest.raises(ValueError, match=fragment):
        LiveConfig(**fields)


def test_the_live_backend_takes_one_scenario():
    with pytest.raises(ValueError, match="exactly one"):
        gym.make(
            "PoAGym/DisaggRouting-v0", scenarios=["agg-4w-prefix", "llama70b-b200-1p2d"], backend="dynamo"
        )


def test_crosscheck_against_an_unreachable_frontend_is_one_line():
    url = f"http://127.0.0.1:{_closed_port()}"
    result = run_cli("crosscheck", "--live", url, "agg-4w-prefix", "--control-url", url, "--model-name", "m")
    assert_user_error(result, "cannot reach the Dynamo frontend", "poa-gym dynamo up")


def test_a_missing_dynamo_install_says_make_dynamo(tmp_path):
    """With the `dynamo` package unimportable (as on a machine without `make dynamo`)."""
    code = (
        "import sys; sys.modules['dynamo'] = None; from eval.cli import main; "
        f"sys.exit(main(['dynamo', 'up', 'agg-4w-prefix', '--workdir', {str(tmp_path)!r}]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert_user_error(result, "NVIDIA Dynamo is not installed", "make dynamo")


def test_ports_are_drawn_below_the_ephemeral_range():
    """A port taken from the kernel's ephemeral range can be handed to another process's bind(0)
    before the process it was meant for starts."""
    from envs.live import ports

    low = ports._ephemeral_range()[0]
    drawn = ports.free_ports(8)
    assert len(set(drawn)) == 8 and all(ports.PORT_FLOOR <= p < low for p in drawn)
