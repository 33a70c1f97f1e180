"""The deployment kit's private keys stay out of commits: ignored by git, and a warning inside a checkout."""

import shutil
import subprocess
from pathlib import Path

import pytest

from flower_app.deploy import cli as deploy

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "path",
    [
        "certs/ca.key",  # the CA's private key
        "certs/server.key",
        "certs/ca.crt",
        "keys/phone-1",  # a SuperNode's private key (no suffix)
        "keys/phone-1.pub",
        "elsewhere/server.key",  # certs --out written somewhere else in the checkout
    ],
)
def test_gitignore_covers_what_the_kit_writes_with_its_documented_folders(path):
    # Prepare
    if shutil.which("git") is None:
        pytest.skip("git is not installed")

    # Execute: --no-index: whether the path would be ignored, tracked or not
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", "--quiet", path], cwd=ROOT, capture_output=True, timeout=30
    )

    # Assert
    assert done.returncode == 0, f"{path} is not ignored by .gitignore"


@pytest.mark.parametrize("git_entry", ["folder", "file"])  # a clone has a .git folder; a worktree a .git file
@pytest.mark.parametrize("command", [["certs", "--address", "127.0.0.1"], ["keys", "phone-1"]])
def test_the_kit_warns_in_one_line_when_it_writes_inside_a_git_checkout(tmp_path, capsys, command, git_entry):
    # Prepare
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    if git_entry == "folder":
        (checkout / ".git").mkdir()
    else:
        (checkout / ".git").write_text("gitdir: /elsewhere/.git/worktrees/checkout\n")
    out = checkout / "deploy" / "out"

    # Execute
    code = deploy.main([command[0], "--out", str(out), *command[1:]])

    # Assert
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0
    assert len(err) == 1 and err[0].startswith("warning: ") and str(checkout) in err[0]


def test_the_kit_says_nothing_outside_a_checkout(tmp_path, capsys):
    # Execute
    code = deploy.main(["keys", "--out", str(tmp_path / "keys"), "phone-1"])

    # Assert
    assert code == 0 and capsys.readouterr().err == ""
