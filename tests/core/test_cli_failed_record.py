"""`cvpipe run` on a full disk (issue 24 item 12): the CLI says the failed run is recorded only when the store
really holds it as failed; when even that record could not be written, it says so, in one line."""

from __future__ import annotations

import errno

import pytest
from typer.testing import CliRunner

from cvpipe.cli.main import app
from cvpipe.store import store as store_module

cli = CliRunner()


@pytest.fixture
def full_disk_during_commit(monkeypatch):
    def enospc(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "_copy_stream", enospc)


def test_a_failure_that_was_recorded_says_so(toy_config_file, full_disk_during_commit):
    r = cli.invoke(app, ["run", str(toy_config_file())])
    assert r.exit_code == 1 and "no space left on device" in r.output
    assert "the run is recorded as failed" in r.output and "Traceback" not in r.output, r.output


def test_no_record_written_means_no_claim_of_one(toy_config_file, full_disk_during_commit, monkeypatch):
    real = store_module.ArtifactStore.write_manifest

    def full_for_failures(self, manifest):
        if manifest.get("status") == "failed":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, manifest)

    monkeypatch.setattr(store_module.ArtifactStore, "write_manifest", full_for_failures)
    r = cli.invoke(app, ["run", str(toy_config_file())])
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "no space left on device" in text, r.output
    assert "recorded as failed" not in text and "could not be recorded" in text, r.output
    assert "Traceback" not in r.output
