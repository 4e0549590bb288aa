"""The OpenMP wait policy the CLI sets before torch loads: PASSIVE (idle threads sleep, so
worker processes get the cores) except for ``raddino pretrain``, ``raddino demo`` and
``raddino study``, whose training steps run faster with OpenMP's default; a policy the user set
is kept."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import os, sys; sys.argv = ['raddino', *sys.argv[1:]]; import raddino.cli.main; "
    "print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
)


def policy(args: list[str], user: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user is not None:
        env["OMP_WAIT_POLICY"] = user
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    result = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True,
                            text=True, check=True)  # fmt: skip
    return result.stdout.strip()


@pytest.mark.parametrize(
    ("args", "user", "expected"),
    [
        (["encode", "x.png"], None, "PASSIVE"),
        (["demo", "--quick"], None, "unset"),
        (["study", "quick"], None, "unset"),
        (["pretrain", "--config", "tiny_cpu"], None, "unset"),
        (["pretrain"], "PASSIVE", "PASSIVE"),
        (["encode"], "ACTIVE", "ACTIVE"),
    ],
)
def test_the_policy_follows_the_command_and_the_user(args, user, expected):
    assert policy(args, user) == expected
