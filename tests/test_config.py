from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import pickle
import re
import socket
from datetime import time
from pathlib import Path

import pytest

from coze_speaker import config as cfg
from coze_speaker.config import (
    EMOTIONS,
    PRIORITIES,
    SAMPLE_RATES,
    Config,
    ConfigError,
    Secret,
    TlsConfig,
    config_from_dict,
    find_config_path,
    load_config,
    reduce_device_id,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """Isolate tests from the developer's environment and config files."""
    for var in ("COZE_API_TOKEN", "COZE_SPEAKER_CONFIG", "MQTT_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cfg, "DEFAULT_CONFIG_PATHS",
                        (Path("config.yaml"), tmp_path / "etc" / "coze-speaker" / "config.yaml"))
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "config.yaml", mode: int = 0o600) -> Path:
    p = tmp_path / name
    p.write_text(text)
    p.chmod(mode)
    return p


def errors_of(text: str, tmp_path: Path, env=None) -> list:
    write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config("config.yaml", env=env or {})
    assert str(ei.value) == "\n".join(ei.value.errors)
    return ei.value.errors


# ------------------------------------------------------------------ defaults / example


def test_defaults_without_any_file(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "pi")
    c = load_config(env={})
    assert c.source is None and c.warnings == ()
    assert c.coze.base_url == "https://api.coze.cn"
    assert c.coze.token is None and c.coze.voice_id is None
    assert c.coze.speed == 1.0 and c.coze.timeout == 15 and c.coze.retries == 3
    assert c.mqtt.port == 1883 and c.mqtt.tls is None and c.mqtt.protocol == 5
    assert c.mqtt.device_id == "pi" and c.mqtt.groups == () and c.mqtt.qos == 1
    assert c.homeassistant.enabled and not c.hermes.enabled
    assert c.audio.sample_rate == 48000 and c.audio.backend == "auto" and c.audio.volume == 100
    assert c.cache.dir == Path("~/.cache/coze-speaker").expanduser()
    assert c.state.dir == Path("~/.local/state/coze-speaker").expanduser()
    assert c.quiet_hours is None and c.fallback.engine == "auto" and c.logging.level == "info"
    assert c.limits.max_text_bytes == 8192 and c.queue.max_length == 100


def test_default_token_comes_from_environment_without_file():
    c = load_config(env={"COZE_API_TOKEN": "pat_abc"})
    assert c.coze.token == Secret("pat_abc")
    assert c.coze.token.reveal() == "pat_abc"


def test_empty_file_gives_defaults(tmp_path):
    write(tmp_path, "# only a comment\n")
    c = load_config("config.yaml", env={})
    assert c.source == Path("config.yaml")
    assert dataclasses.replace(c, source=None) == cfg.default_config(env={})


def test_example_file_loads():
    c = load_config(REPO / "config.example.yaml", env={})
    assert c.coze.token is None
    assert c.coze.voice_id == "7426720361733046281"
    assert c.audio.sample_rate == 48000
    c2 = load_config(REPO / "config.example.yaml", env={"COZE_API_TOKEN": "t"})
    assert c2.coze.token == Secret("t") and c2.warnings == ()


_KEY_LINE = re.compile(r"^(\s*)([a-z_]+):(\s|$)")


def example_keys(text: str) -> set:
    """Dotted keys of config.example.yaml, set or shown in comments.

    A commented example block (``#   tls:`` / ``#     ca_certs: ...``) nests like YAML
    below the comment's own column: its least indented key is a sibling of the keys at
    that column. Prose must not start with ``name:`` (a lowercase word and a colon).
    """
    keys, stack = set(), []  # stack of (column, dotted key)
    block_base = None  # (comment column, least key indent in the block)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        comment = re.match(r"^(\s*)# ?(.*)$", line)
        if comment:
            if block_base is None:  # first line of a comment block
                block = [re.match(r"^\s*# ?(.*)$", x) for x in lines[i:]]
                block = [m.group(1) for m in itertools.takewhile(bool, block)]
                indents = [len(m.group(1)) for m in map(_KEY_LINE.match, block) if m]
                block_base = (len(comment.group(1)), min(indents, default=0))
            found = _KEY_LINE.match(comment.group(2))
            if not found:
                continue
            column = block_base[0] + len(found.group(1)) - block_base[1]
        else:
            block_base = None
            found = _KEY_LINE.match(line)
            if not found:
                continue
            column = len(found.group(1))
        while stack and stack[-1][0] >= column:
            stack.pop()
        name = ".".join([k for _, k in stack[-1:]] + [found.group(2)])
        stack.append((column, name))
        keys.add(name)
    return keys


def test_example_file_documents_every_key():
    documented = example_keys((REPO / "config.example.yaml").read_text())
    model = {name for name, _ in cfg.config_keys()}
    assert model - documented == set(), "keys missing from config.example.yaml"
    assert documented - model == set(), "config.example.yaml shows keys the model does not have"


def test_example_keys_reads_commented_blocks():
    text = "a:\n  # x, or:\n  #   b:\n  #     c: 1   # why\n  # d: 2\n  e: 3\n# f:\n#   g: 1\nh: 1\n"
    assert example_keys(text) == {"a", "a.b", "a.b.c", "a.d", "a.e", "f", "f.g", "h"}


def test_every_key_has_a_one_line_doc():
    keys = cfg.config_keys()
    assert len(keys) == len({name for name, _ in keys}) > 60
    for name, doc in keys:
        assert doc.strip() and "\n" not in doc and len(doc) <= 100, name
    sections = [getattr(cfg, n) for n in cfg.__all__ if n.endswith("Config") or n == "QuietHours"]
    assert len(sections) == 15
    for section in sections:  # a field declared without key() would silently not be a key
        for f in dataclasses.fields(section):
            assert f.name in ("source", "warnings") or f.metadata.get("doc"), (section.__name__, f.name)


def test_constants():
    assert SAMPLE_RATES == (8000, 16000, 22050, 24000, 32000, 44100, 48000)
    assert "neutral" in EMOTIONS and len(EMOTIONS) == 9
    assert PRIORITIES == ("low", "normal", "high", "critical")


def test_replace_and_frozen():
    c = load_config(env={})
    c2 = dataclasses.replace(c, audio=dataclasses.replace(c.audio, volume=10))
    assert c2.audio.volume == 10 and c.audio.volume == 100
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.audio.volume = 5  # type: ignore[misc]
    hash(c)


# ------------------------------------------------------------------ env expansion


def test_env_expansion_default_and_escape(tmp_path):
    write(tmp_path, """
mqtt:
  host: ${BROKER}
  port: ${PORT:-8883}
  username: "$$user-${SUFFIX:-x}"
  tls: ${TLS:-true}
audio:
  sample_rate: ${RATE}
  device: "plughw:${CARD:-1},0"
coze:
  speed: ${SPEED}
  voice_id: ${VOICE:-}
""")
    c = load_config("config.yaml", env={"BROKER": "mqtt.lan", "RATE": "44100", "SPEED": "1.5"})
    assert c.mqtt.host == "mqtt.lan"
    assert c.mqtt.port == 8883
    assert c.mqtt.username == "$user-x"
    assert c.mqtt.tls == TlsConfig()
    assert c.audio.sample_rate == 44100
    assert c.audio.device == "plughw:1,0"
    assert c.coze.speed == 1.5
    assert c.coze.voice_id is None


def test_env_strings_in_string_fields_stay_strings(tmp_path):
    write(tmp_path, "coze:\n  voice_id: ${VOICE}\n")
    assert load_config("config.yaml", env={"VOICE": "12345"}).coze.voice_id == "12345"


def test_plain_yaml_typing_for_literal_strings(tmp_path):
    errs = errors_of('mqtt:\n  port: "1883"\n', tmp_path)
    assert errs == ["config.yaml:2: mqtt.port: expected an integer, got '1883'"]


def test_unset_variable_is_error_with_line(tmp_path):
    errs = errors_of("mqtt:\n  host: localhost\n  username: ${MQTT_USER}\n", tmp_path)
    assert errs == ["config.yaml:3: mqtt.username: environment variable MQTT_USER is not set"]


def test_unset_variable_in_secret_is_none(tmp_path):
    write(tmp_path, "coze:\n  token: ${COZE_API_TOKEN}\nmqtt:\n  password: ${MQTT_PASSWORD}\n")
    c = load_config("config.yaml", env={})
    assert c.coze.token is None and c.mqtt.password is None


def test_bad_env_reference(tmp_path):
    errs = errors_of("mqtt:\n  host: ${BROKER\n", tmp_path)
    assert errs[0].startswith("config.yaml:2: mqtt.host: invalid environment reference")


def test_config_from_dict_expands_and_validates():
    c = config_from_dict({"mqtt": {"port": "${P}"}}, env={"P": "1884"})
    assert c.mqtt.port == 1884 and c.source is None
    with pytest.raises(ConfigError) as ei:
        config_from_dict({"audio": {"volume": 101}, "coze": {"speed": "fast"}})
    assert ei.value.errors == [
        "<dict>: coze.speed: expected a number, got 'fast'",
        "<dict>: audio.volume: must be between 0 and 100, got 101",
    ]


# ------------------------------------------------------------------ validation messages


def test_sample_rate_message_exact(tmp_path):
    errs = errors_of("audio:\n  device: default\n  sample_rate: 44000\n", tmp_path)
    assert errs == ["config.yaml:3: audio.sample_rate: 44000 is not one of "
                    "8000, 16000, 22050, 24000, 32000, 44100, 48000"]


def test_sample_rate_auto(tmp_path):
    write(tmp_path, "audio:\n  sample_rate: auto\n")
    assert load_config("config.yaml", env={}).audio.sample_rate == "auto"


def test_relative_path_shown_as_given(tmp_path):
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "speaker.yaml").write_text("audio:\n  sample_rate: 44000\n")
    with pytest.raises(ConfigError) as ei:
        load_config("etc/speaker.yaml", env={})
    assert str(ei.value).startswith("etc/speaker.yaml:2: audio.sample_rate: 44000 is not one of")


def test_unknown_key_lists_known_keys(tmp_path):
    errs = errors_of("mqtt:\n  host: x\n  prot: 1883\n", tmp_path)
    assert errs == ["config.yaml:3: mqtt.prot: unknown key (known: host, port, username, password, "
                    "password_file, tls, client_id, protocol, keepalive, base_topic, device_id, groups, qos)"]
    errs = errors_of("colors: true\n", tmp_path)
    assert errs[0].startswith("config.yaml:1: colors: unknown key (known: coze, mqtt, homeassistant,")


@pytest.mark.parametrize("yaml_text, message", [
    ("coze:\n  speed: fast\n", "coze.speed: expected a number, got 'fast'"),
    ("coze:\n  speed: true\n", "coze.speed: expected a number, got true"),
    ("coze:\n  speed: 5\n", "coze.speed: must be between 0.2 and 3, got 5"),
    ("coze:\n  timeout: 0\n", "coze.timeout: must be greater than 0, got 0"),
    ("coze:\n  retries: 2.5\n", "coze.retries: expected an integer, got 2.5"),
    ("coze:\n  emotion: grumpy\n", "coze.emotion: 'grumpy' is not one of happy, sad, angry, surprised, "
                                   "fear, hate, excited, coldness, neutral"),
    ("coze:\n  base_url: ftp://x\n", "coze.base_url: 'ftp://x' must be an http:// or https:// URL"),
    ("mqtt:\n  port: 0\n", "mqtt.port: must be between 1 and 65535, got 0"),
    ("mqtt:\n  qos: true\n", "mqtt.qos: true is not one of 0, 1, 2"),
    ("mqtt:\n  protocol: 4\n", "mqtt.protocol: 4 is not one of 5, 311"),
    ("mqtt:\n  tls: maybe\n", "mqtt.tls: expected true, false or a mapping, got 'maybe'"),
    ("mqtt:\n  base_topic: a/+/b\n", "mqtt.base_topic: 'a/+/b' must not contain MQTT wildcards (+ or #)"),
    ("mqtt:\n  base_topic: /a\n", "mqtt.base_topic: '/a' must not start or end with '/'"),
    ("mqtt:\n  groups: kitchen\n", "mqtt.groups: expected a list, got 'kitchen'"),
    ("homeassistant:\n  enabled: 1\n", "homeassistant.enabled: expected true or false, got 1"),
    ("audio: [1, 2]\n", "audio: expected a mapping, got a list"),
    ("audio:\n  chime: doorbell\n", "audio.chime: 'doorbell' needs audio.chimes_dir to be set"),
    ("limits:\n  max_requests_per_hour: -1\n", "limits.max_requests_per_hour: must be at least 0, got -1"),
    ("quiet_hours:\n  start: 25:00\n", "quiet_hours.start: expected a time as HH:MM, got 25:00"),
    ("quiet_hours:\n  min_priority: urgent\n",
     "quiet_hours.min_priority: 'urgent' is not one of low, normal, high, critical"),
    ("logging:\n  level: verbose\n", "logging.level: 'verbose' is not one of debug, info, warning, error"),
])
def test_wrong_values(tmp_path, yaml_text, message):
    errs = errors_of(yaml_text, tmp_path)
    assert errs == [f"config.yaml:2: {message}"] or errs == [f"config.yaml:1: {message}"]


def test_multiple_errors_reported_together_in_line_order(tmp_path):
    errs = errors_of("""\
coze:
  speed: fast
  retries: 11
mqtt:
  prot: 1
audio:
  sample_rate: 44000
""", tmp_path)
    assert [e.split(":")[1] for e in errs] == ["2", "3", "5", "7"]


def test_yaml_syntax_error(tmp_path):
    errs = errors_of("coze:\n  speed: 1\n bad: [\n", tmp_path)
    assert len(errs) == 1 and errs[0].startswith("config.yaml:") and "invalid YAML" in errs[0]


def test_top_level_must_be_mapping(tmp_path):
    assert errors_of("- a\n- b\n", tmp_path) == ["config.yaml:1: top level must be a mapping, got a list"]


def test_duplicate_key(tmp_path):
    errs = errors_of("mqtt:\n  port: 1\n  port: 2\n", tmp_path)
    assert errs == ["config.yaml:3: mqtt.port: duplicate key (first on line 2)"]


def test_explicit_missing_file():
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config("nope.yaml", env={})


def test_nested_values(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    write(tmp_path, """
mqtt:
  tls: {ca_certs: ca.pem, insecure: true}
  groups: [downstairs, all_floors]
""")
    c = load_config("config.yaml", env={})
    assert c.mqtt.tls == TlsConfig(ca_certs=tmp_path / "ca.pem", insecure=True)
    assert c.mqtt.groups == ("downstairs", "all_floors")


def test_quiet_hours_unquoted_times(tmp_path):
    # YAML 1.1 reads 22:00 as the integer 1320; the loader must still see "22:00".
    write(tmp_path, "quiet_hours:\n  start: 22:00\n  end: 07:30\n  volume: 20\n")
    q = load_config("config.yaml", env={}).quiet_hours
    assert q == cfg.QuietHours(start=time(22, 0), end=time(7, 30), volume=20, min_priority="high")


def test_null_backend_and_trailing_slash(tmp_path):
    write(tmp_path, "audio:\n  backend: null\ncoze:\n  base_url: https://api.coze.com/\n")
    c = load_config("config.yaml", env={})
    assert c.audio.backend == "null" and c.coze.base_url == "https://api.coze.com"


# ------------------------------------------------------------------ secrets


def test_secret_behaviour():
    s = Secret("hunter2")
    assert repr(s) == "Secret('***')" and str(s) == "***" and f"{s}" == "***"
    assert s.reveal() == "hunter2"
    assert s == Secret("hunter2") and s != Secret("other") and s != "hunter2"
    assert s and not Secret("")
    assert copy.deepcopy(s) == s
    with pytest.raises(TypeError):
        pickle.dumps(s)


def test_token_file(tmp_path):
    (tmp_path / "token").write_text("  pat_SECRET_VALUE\n")
    write(tmp_path, "coze:\n  token_file: token\n")
    c = load_config("config.yaml", env={"COZE_API_TOKEN": "from-env"})
    assert c.coze.token.reveal() == "pat_SECRET_VALUE"
    assert c.coze.token_file == tmp_path / "token"
    assert "pat_SECRET_VALUE" not in repr(c) and "pat_SECRET_VALUE" not in str(c)
    assert c.warnings == ()


def test_token_file_with_env_and_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "tok").write_text("abc")
    write(tmp_path, "mqtt:\n  password_file: ~/${NAME}\n")
    assert load_config("config.yaml", env={"NAME": "tok"}).mqtt.password == Secret("abc")


def test_token_and_token_file_conflict(tmp_path):
    (tmp_path / "token").write_text("pat_SECRET_VALUE")
    errs = errors_of("coze:\n  token: inline_SECRET\n  token_file: token\n", tmp_path)
    assert errs == ["config.yaml:3: coze.token_file: cannot be combined with coze.token; set only one"]
    assert "SECRET" not in "\n".join(errs)


def test_unreadable_token_file_never_shows_content(tmp_path):
    (tmp_path / "bin").write_bytes(b"\xffpat_SECRET_VALUE")
    errs = errors_of("coze:\n  token_file: missing\nmqtt:\n  password_file: bin\n", tmp_path)
    assert errs[0].startswith(f"config.yaml:2: coze.token_file: cannot read {tmp_path / 'missing'}")
    assert errs[1].startswith("config.yaml:4: mqtt.password_file:") and str(tmp_path / "bin") in errs[1]
    assert "SECRET" not in "\n".join(errs)


def test_secret_errors_do_not_leak(tmp_path):
    errs = errors_of("coze:\n  token: [pat_SECRET]\n  speed: fast\n", tmp_path)
    assert errs[0] == "config.yaml:2: coze.token: expected a string, got a list"
    assert "SECRET" not in "\n".join(errs)
    errs = errors_of("coze:\n  token: ab${pat_SECRET\n", tmp_path)
    assert "SECRET" not in "\n".join(errs)


def test_world_readable_inline_secret_warns(tmp_path, caplog):
    write(tmp_path, "mqtt:\n  password: pat_SECRET\n", mode=0o644)
    with caplog.at_level(logging.WARNING, logger="coze_speaker.config"):
        c = load_config("config.yaml", env={})
    assert c.mqtt.password.reveal() == "pat_SECRET"
    assert len(c.warnings) == 1
    w = c.warnings[0]
    assert "config.yaml" in w and "chmod 600" in w and "mqtt.password" in w and "SECRET" not in w
    assert w in caplog.text and "SECRET" not in caplog.text


@pytest.mark.parametrize("mode, text", [
    (0o600, "mqtt:\n  password: pat_SECRET\n"),
    (0o644, "mqtt:\n  password: ${MQTT_PASSWORD}\n"),
])
def test_no_warning_when_private_or_from_env(tmp_path, mode, text):
    write(tmp_path, text, mode=mode)
    assert load_config("config.yaml", env={"MQTT_PASSWORD": "x"}).warnings == ()


# ------------------------------------------------------------------ paths / device id


def test_find_config_path_order(tmp_path, monkeypatch):
    etc = cfg.DEFAULT_CONFIG_PATHS[-1]
    assert find_config_path(None, env={}) == etc
    etc.parent.mkdir(parents=True)
    etc.write_text("")
    assert find_config_path(None, env={}) == etc
    (tmp_path / "config.yaml").write_text("")
    assert find_config_path(None, env={}) == Path("config.yaml")
    assert find_config_path(None, env={"COZE_SPEAKER_CONFIG": "/x.yaml"}) == Path("/x.yaml")
    assert find_config_path("cli.yaml", env={"COZE_SPEAKER_CONFIG": "/x.yaml"}) == Path("cli.yaml")
    monkeypatch.setenv("COZE_SPEAKER_CONFIG", "/y.yaml")
    assert find_config_path(None) == Path("/y.yaml")


def test_load_config_uses_search_order(tmp_path):
    etc = cfg.DEFAULT_CONFIG_PATHS[-1]
    etc.parent.mkdir(parents=True)
    etc.write_text("logging:\n  level: debug\n")
    assert load_config(env={}).logging.level == "debug"
    assert load_config(env={}).source == etc
    other = write(tmp_path, "logging:\n  level: error\n", name="other.yaml")
    assert load_config(env={"COZE_SPEAKER_CONFIG": str(other)}).logging.level == "error"
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(env={"COZE_SPEAKER_CONFIG": str(tmp_path / "missing.yaml")})


@pytest.mark.parametrize("host, expected", [
    ("RaspberryPi", "raspberrypi"),
    ("My Pi.local", "my-pi-local"),
    ("--x__y--", "x__y"),
    ("!!!", "speaker"),
    ("", "speaker"),
])
def test_reduce_device_id(host, expected):
    assert reduce_device_id(host) == expected


def test_device_id_default_from_hostname(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "Kitchen.Pi")
    assert load_config(env={}).mqtt.device_id == "kitchen-pi"


def test_device_id_default_is_the_same_everywhere(monkeypatch, tmp_path):
    monkeypatch.setattr(socket, "gethostname", lambda: "Kitchen.Pi")
    write(tmp_path, "mqtt:\n  host: broker\n")
    assert cfg.MqttConfig().device_id == "kitchen-pi"
    assert cfg.default_config(env={}).mqtt.device_id == "kitchen-pi"
    assert load_config("config.yaml", env={}).mqtt.device_id == "kitchen-pi"


def test_explicit_device_id_must_be_valid(tmp_path):
    errs = errors_of("mqtt:\n  device_id: Kitchen Pi\n", tmp_path)
    assert errs == ["config.yaml:2: mqtt.device_id: 'Kitchen Pi' must match ^[a-z0-9_-]+$ (try 'kitchen-pi')"]


def test_config_type():
    assert isinstance(load_config(env={}), Config)


# ------------------------------------------------------------------ audio: warm device
def test_keep_open_and_wake_ms(tmp_path):
    c = load_config(env={})
    assert (c.audio.keep_open, c.audio.wake_ms) == (5.0, 0)
    write(tmp_path, "audio:\n  backend: alsa\n  keep_open: 0\n  wake_ms: 300\n")
    c = load_config("config.yaml", env={})
    assert (c.audio.backend, c.audio.keep_open, c.audio.wake_ms, c.warnings) == ("alsa", 0.0, 300, ())
    errs = errors_of("audio:\n  keep_open: -1\n  wake_ms: 2001\n", tmp_path)
    assert errs[0].startswith("config.yaml:2: audio.keep_open: ") and "-1" in errs[0]
    assert errs[1].startswith("config.yaml:3: audio.wake_ms: ") and "2001" in errs[1]


def test_preroll_ms_is_read_as_wake_ms_with_a_warning(tmp_path, caplog):
    write(tmp_path, "audio:\n  chime: none\n  preroll_ms: 250\n")
    with caplog.at_level(logging.WARNING, logger="coze_speaker.config"):
        c = load_config("config.yaml", env={})
    assert c.audio.wake_ms == 250
    assert c.warnings == ("config.yaml:3: audio.preroll_ms: is deprecated: rename it to wake_ms",)
    assert c.warnings[0] in caplog.text
    errs = errors_of("audio:\n  preroll_ms: 4000\n", tmp_path)
    assert errs == ["config.yaml:2: audio.preroll_ms: must be between 0 and 2000, got 4000"]
    errs = errors_of("audio:\n  wake_ms: 100\n  preroll_ms: 250\n", tmp_path)
    assert errs == ["config.yaml:3: audio.preroll_ms: is the old name of audio.wake_ms; set only wake_ms"]
