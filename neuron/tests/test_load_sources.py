"""A load request's ``source`` is a folder inside ``allowed_paths`` or an allowed hub repo id."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from neuron_testing import fake_harness, running, settings_for

from neuron.settings import Harnesses, NeuronSettings, VllmHarness


def settings(root: Path, sources: list[str]) -> NeuronSettings:
    harness = fake_harness().model_copy(
        update={"allowed_paths": [str(root)], "allowed_sources": sources}
    )
    return settings_for(harness=Harnesses(vllm=harness))


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("/etc", "outside this neuron's allowed_paths"),
        ("/", "outside this neuron's allowed_paths"),
        ("ALLOWED/../outside", "outside this neuron's allowed_paths"),
        ("ALLOWED/link", "outside this neuron's allowed_paths"),  # symlink out
        ("./outside", "outside this neuron's allowed_paths"),
        ("evil/repo", "does not match this neuron's allowed_sources"),
        ("Qwen/../../etc", "neither a hub repo id"),
        ("a/b/c", "neither a hub repo id"),
        ("~root/x", "neither a hub repo id"),
    ],
)
async def test_sources_elsewhere_are_400(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, fragment: str
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (tmp_path / "outside").mkdir()
    (allowed / "link").symlink_to(tmp_path / "outside")
    monkeypatch.chdir(tmp_path)  # the engine's working directory is the neuron's
    async with running(settings(allowed, ["Qwen/*"])) as neuron:
        response = await neuron.load("m", source=source.replace("ALLOWED", str(allowed)))
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert fragment in error["message"]
        assert error["param"] == "source"
        assert await neuron.models() == {}


async def test_a_hub_id_that_exists_on_disk_is_judged_as_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # vLLM loads "etc/ssl" from disk when it exists relative to its working directory.
    (tmp_path / "allowed").mkdir()
    monkeypatch.chdir("/")
    async with running(settings(tmp_path / "allowed", ["*"])) as neuron:
        response = await neuron.load("m", source="etc/ssl")
        assert response.status_code == 400
        assert "allowed_paths" in response.json()["error"]["message"]


async def test_allowed_folders_and_repo_ids_load(tmp_path: Path) -> None:
    root = tmp_path / ".cache" / "allowed"  # like ~/.cache/huggingface: a dot above is fine
    model = root / "tiny"
    model.mkdir(parents=True)
    async with running(settings(root, ["Qwen/*"])) as neuron:
        assert (await neuron.load("local", source=str(model))).status_code == 200
        assert (await neuron.load("hub", source="Qwen/Qwen3-0.6B")).status_code == 200
        assert (await neuron.load("Qwen/Qwen3-8B")).status_code == 200  # source = model_id


def test_the_default_allowed_paths_are_the_hf_cache_and_the_models_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("HF_HOME", raising=False)
    home = os.path.expanduser("~")
    assert VllmHarness().paths == [f"{home}/.cache/huggingface", "/var/lib/neuron/models"]
    assert VllmHarness(hf_cache="/srv/hf").paths == ["/srv/hf", "/var/lib/neuron/models"]
