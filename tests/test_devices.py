"""Device listing, rate probing and rate choice."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from alsa_sink import alsa_sink, hanging_aplay  # noqa: F401  (fixture used by name)
from coze_speaker.sound.devices import (
    COZE_RATES,
    Device,
    _hw_for,
    choose_rate,
    format_devices,
    list_devices,
    parse_aplay_l,
    parse_hw_params,
    probe_rates,
    resolve_sample_rate,
)

# What `aplay -D hw:0,0 --dump-hw-params ...` prints on a Raspberry Pi (headphone jack).
BCM2835_DUMP = """\
Playing raw data '/dev/null' : Signed 16 bit Little Endian, Rate 8000 Hz, Mono
HW Params of device "hw:0,0":
--------------------
ACCESS:  MMAP_INTERLEAVED RW_INTERLEAVED
FORMAT:  U8 S16_LE
SUBFORMAT:  STD
SAMPLE_BITS: [8 16]
FRAME_BITS: [8 16]
CHANNELS: [1 2]
RATE: [8000 192000]
PERIOD_TIME: (159 2048000]
PERIOD_SIZE: [32 16384]
PERIOD_BYTES: [64 65536]
PERIODS: [1 128]
BUFFER_TIME: (166 8192000]
BUFFER_SIZE: [32 65536]
BUFFER_BYTES: [64 131072]
TICK_TIME: ALL
--------------------
"""

HDMI_DUMP = """\
HW Params of device "hw:1,0":
--------------------
ACCESS:  MMAP_INTERLEAVED RW_INTERLEAVED
FORMAT:  IEC958_SUBFRAME_LE
SUBFORMAT:  STD
SAMPLE_BITS: 32
FRAME_BITS: [64 256]
CHANNELS: [2 8]
RATE: 48000
PERIOD_TIME: [1333 1365333]
PERIOD_SIZE: [64 65536]
BUFFER_TIME: [2666 2730666]
TICK_TIME: ALL
--------------------
aplay: set_params:1352: Sample format non available
Available formats:
- IEC958_SUBFRAME_LE
"""

HDMI_SET_DUMP = HDMI_DUMP.replace("RATE: 48000", "RATE: {32000 44100 48000}")

USB_DUMP = """\
HW Params of device "hw:2,0":
--------------------
ACCESS:  MMAP_INTERLEAVED RW_INTERLEAVED
FORMAT:  S16_LE S24_3LE
SUBFORMAT:  STD
SAMPLE_BITS: [16 24]
FRAME_BITS: [32 48]
CHANNELS: 2
RATE: [44100 48000]
PERIOD_TIME: [1000 1000000]
--------------------
aplay: set_params:1339: Channels count non available
"""

APLAY_L_PI = """\
**** List of PLAYBACK Hardware Devices ****
card 0: Headphones [bcm2835 Headphones], device 0: bcm2835 Headphones [bcm2835 Headphones]
  Subdevices: 8/8
  Subdevice #0: subdevice #0
  Subdevice #1: subdevice #1
card 1: vc4hdmi0 [vc4-hdmi-0], device 0: MAI PCM i2s-hifi-0 [MAI PCM i2s-hifi-0]
  Subdevices: 1/1
  Subdevice #0: subdevice #0
card 2: Device [USB Audio Device], device 0: USB Audio [USB Audio]
  Subdevices: 1/1
  Subdevice #0: subdevice #0
"""


@pytest.mark.parametrize(
    "text, rates, rate_range",
    [
        (BCM2835_DUMP, COZE_RATES, (8000, 192000)),
        (HDMI_DUMP, (48000,), (48000, 48000)),
        (HDMI_SET_DUMP, (32000, 44100, 48000), (32000, 48000)),
        (USB_DUMP, (44100, 48000), (44100, 48000)),
        ("RATE: (8000 48000)", (16000, 22050, 24000, 32000, 44100), (8001, 47999)),
        ("RATE: [1 4294967295]", COZE_RATES, (1, 4294967295)),
        ("RATE: ALL", COZE_RATES, (1, 4294967295)),
        ("RATE: 96000", (), (96000, 96000)),
        ("RATE: NONE", (), None),
        ("FORMAT:  S16_LE\nCHANNELS: 2\n", (), None),
        ("", (), None),
        ("aplay: main:831: audio open error: No such file or directory", (), None),
    ],
)
def test_parse_hw_params(text, rates, rate_range):
    assert parse_hw_params(text) == (rates, rate_range)


@pytest.mark.parametrize(
    "rates, expected",
    [
        (COZE_RATES, 48000),
        ((44100,), 44100),
        ((22050, 24000), 24000),
        ((8000, 16000), 16000),
        ((), 48000),
        ((96000, 192000), 48000),
        ([44100, 11025], 44100),
    ],
)
def test_choose_rate(rates, expected):
    assert choose_rate(rates) == expected


def test_parse_aplay_l():
    assert parse_aplay_l(APLAY_L_PI) == [
        (0, 0, "bcm2835 Headphones"),
        (1, 0, "vc4-hdmi-0: MAI PCM i2s-hifi-0"),
        (2, 0, "USB Audio Device: USB Audio"),
    ]
    assert parse_aplay_l("aplay: device_list:274: no soundcards found...") == []


# ----------------------------------------------------------------------------- real aplay


def test_probe_rates_of_a_nonexistent_device():
    assert probe_rates("hw:99,0") == ((), None)
    assert probe_rates("hw:31,0", timeout=2.0) == ((), None)


def test_probe_rates_of_the_hermetic_sink(alsa_sink):
    # The file-over-null PCM takes any rate; the probe plays nothing audible.
    rates, rate_range = probe_rates("sink")
    assert rates == COZE_RATES
    assert rate_range == (1, 4294967295)
    assert probe_rates("broken") == ((), None)


def test_probe_rates_without_aplay():
    assert probe_rates("default", aplay="/nonexistent/aplay") == ((), None)


def test_probe_rates_never_hangs(tmp_path):
    script = hanging_aplay(tmp_path)
    assert probe_rates("hw:0,0", aplay=str(script), timeout=0.3) == ((), None)


def test_list_devices_does_not_raise_here():
    devices = list_devices()
    assert isinstance(devices, list)
    assert devices and devices[0].name == "default"
    assert all(isinstance(d, Device) for d in devices)
    assert "default" in format_devices(devices)


def test_list_devices_in_hermetic_config(alsa_sink):
    assert list_devices()[0] == Device("default", "ALSA default device", (), None)


def test_list_devices_without_aplay():
    devices = list_devices(aplay="/nonexistent/aplay")
    assert [d.name for d in devices] == ["default"]


# ----------------------------------------------------------------------------- a Pi, played by a script


def pi_aplay(tmp_path: Path) -> Path:
    """An executable answering `aplay -l` and `--dump-hw-params` like a Raspberry Pi with a
    headphone jack, HDMI and a USB dongle (no such hardware here). Logs its -D devices."""
    dumps = {"hw:0,0": BCM2835_DUMP, "hw:1,0": HDMI_DUMP, "hw:2,0": USB_DUMP}
    log = tmp_path / "probed.log"
    script = tmp_path / "pi-aplay"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"dumps = {dumps!r}\n"
        "args = sys.argv[1:]\n"
        "if '-l' in args:\n"
        f"    sys.stdout.write({APLAY_L_PI!r}); sys.exit(0)\n"
        "dev = args[args.index('-D') + 1]\n"
        f"open({str(log)!r}, 'a').write(dev + '\\n')\n"
        "if dev not in dumps:\n"
        "    sys.stderr.write('aplay: main:831: audio open error: No such file or directory\\n'); sys.exit(1)\n"
        "sys.stderr.write(dumps[dev]); sys.exit(0)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_list_devices_on_a_pi(tmp_path, monkeypatch):
    monkeypatch.delenv("ALSA_CARD", raising=False)
    monkeypatch.delenv("ALSA_PCM_CARD", raising=False)
    devices = list_devices(aplay=str(pi_aplay(tmp_path)))
    by_name = {d.name: d for d in devices}
    assert [d.name for d in devices] == [
        "default", "hw:0,0", "plughw:0,0", "hw:1,0", "plughw:1,0", "hw:2,0", "plughw:2,0",
    ]
    assert by_name["default"].rates == COZE_RATES  # card 0 is the default card
    assert by_name["hw:0,0"] == Device("hw:0,0", "bcm2835 Headphones", COZE_RATES, (8000, 192000))
    assert by_name["plughw:1,0"].rates == (48000,)
    assert by_name["hw:2,0"].rates == (44100, 48000)
    table = format_devices(devices)
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "RATES", "DESCRIPTION"]
    assert any(line.startswith("hw:1,0") and "48000" in line and "vc4-hdmi-0" in line for line in lines)
    assert any(line.startswith("hw:2,0") and "44100,48000" in line for line in lines)


def test_resolve_sample_rate_numbers():
    assert resolve_sample_rate(24000, "hw:0,0") == 24000
    assert resolve_sample_rate("16000", "default") == 16000
    with pytest.raises(ValueError):
        resolve_sample_rate("fast", "default")


def test_resolve_sample_rate_auto_probes_the_hw_device(tmp_path, monkeypatch):
    monkeypatch.delenv("ALSA_CARD", raising=False)
    monkeypatch.delenv("ALSA_PCM_CARD", raising=False)
    aplay = str(pi_aplay(tmp_path))
    log = tmp_path / "probed.log"
    assert resolve_sample_rate("auto", "plughw:2,0", aplay=aplay) == 48000  # USB: [44100 48000]
    assert resolve_sample_rate("auto", "hw:1,0", aplay=aplay) == 48000
    assert resolve_sample_rate("auto", "default", aplay=aplay) == 48000
    assert resolve_sample_rate("auto", "hw:7,0", aplay=aplay) == 48000  # probe fails: fallback
    assert resolve_sample_rate("auto", "dmix", aplay=aplay) == 48000  # not derivable: no probe
    assert log.read_text().split() == ["hw:2,0", "hw:1,0", "hw:0,0", "hw:7,0"]


def test_resolve_sample_rate_auto_picks_a_lower_native_rate(tmp_path):
    script = tmp_path / "aplay-44k"
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.stderr.write('RATE: 44100\\n')\n")
    script.chmod(0o755)
    assert resolve_sample_rate("auto", "plughw:CARD=Device,DEV=0", aplay=str(script)) == 44100


def test_resolve_sample_rate_auto_on_this_machine():
    assert resolve_sample_rate("auto", "hw:99,0") == 48000
    assert resolve_sample_rate("auto", "default") == 48000


@pytest.mark.parametrize(
    "device, env, hw",
    [
        ("hw:1,0", {}, "hw:1,0"),
        ("plughw:2,1", {}, "hw:2,1"),
        ("plughw:CARD=Device,DEV=0", {}, "hw:CARD=Device,DEV=0"),
        ("hw:1", {}, "hw:1,0"),
        ("plughw:CARD=Device", {}, "hw:CARD=Device,DEV=0"),
        ("default", {}, "hw:0,0"),
        ("default", {"ALSA_CARD": "1"}, "hw:1,0"),
        ("default", {"ALSA_CARD": "Headphones"}, "hw:CARD=Headphones,DEV=0"),
        ("sysdefault", {}, "hw:0,0"),
        ("sysdefault:CARD=vc4hdmi0", {}, "hw:CARD=vc4hdmi0,DEV=0"),
        ("sysdefault:1", {}, "hw:1,0"),
        ("dmix", {}, None),
        ("pipewire", {}, None),
    ],
)
def test_hw_for(monkeypatch, device, env, hw):
    monkeypatch.delenv("ALSA_CARD", raising=False)
    monkeypatch.delenv("ALSA_PCM_CARD", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _hw_for(device) == hw


def test_format_devices_empty_and_unknown():
    text = format_devices([Device("default", "ALSA default device")])
    assert "default" in text and "?" in text
    assert "no playback devices" in format_devices([])
