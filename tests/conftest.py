"""Shared fixtures: a fake Coze on loopback and config files that point at it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_coze import FakeCoze  # noqa: E402

TOKEN = "pat_fake_token_123"
VOICE = "voice_0000"


@pytest.fixture
def fake_coze():
    with FakeCoze(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def make_config(tmp_path, monkeypatch, fake_coze):
    """Write a config file for the fake Coze; keyword sections override parts of it."""
    monkeypatch.delenv("COZE_API_TOKEN", raising=False)
    monkeypatch.delenv("COZE_SPEAKER_CONFIG", raising=False)

    def make(**sections) -> Path:
        import yaml

        data = {
            # the suites written for the HTTP endpoint pin it (and one request per piece);
            # test_ws.py and test_faults_ws.py cover the defaults (transport auto, first sentence first)
            "coze": {"base_url": fake_coze.url, "token": TOKEN, "voice_id": VOICE, "retries": 2, "timeout": 5,
                     "transport": "http", "first_sentence_first": False},
            "audio": {"sample_rate": 24000},
            "cache": {"dir": str(tmp_path / "cache")},
            "state": {"dir": str(tmp_path / "state")},
        }
        for name, values in sections.items():
            if isinstance(values, dict):
                data.setdefault(name, {}).update(values)
            else:
                data[name] = values
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        path.chmod(0o600)
        return path

    return make
