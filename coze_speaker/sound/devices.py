"""ALSA playback devices: list them, probe their native sample rates, pick a Coze rate.

A rate probe opens the device non-blocking, in-process through pyalsaaudio when it is
installed (hw params, no child process), else through ``aplay --dump-hw-params`` with a
timeout. Listing shells out to ``aplay -l`` (or asks pyalsaaudio for the cards when aplay
is missing). Nothing here raises: an unknown answer is an empty rate list.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

from ..childenv import child_environment
from ..vocabulary import DEFAULT_PLAY_RATE, SAMPLE_RATES
from .alsa_player import alsa_available, import_alsaaudio

log = logging.getLogger(__name__)

COZE_RATES = SAMPLE_RATES  # the old name, still imported by tests
DEFAULT_DEVICE = "default"

RateRange = Optional[Tuple[int, int]]


@dataclass(frozen=True)
class Device:
    name: str  # ALSA PCM name: "hw:0,0", "plughw:0,0", "default"
    description: str
    rates: Tuple[int, ...] = ()  # Coze rates the hardware plays natively; () if unknown
    rate_range: RateRange = None


# ----------------------------------------------------------------------------- parsing

_RATE_LINE = re.compile(r"^\s*RATE\s*:\s*(.*?)\s*$", re.MULTILINE)
_INTERVAL = re.compile(r"^([\[(])\s*(\d+)\s+(\d+)\s*([\])])$")
_MAX_RATE = 4294967295


def parse_hw_params(text: str) -> Tuple[Tuple[int, ...], RateRange]:
    """Parse the RATE line of an ``aplay --dump-hw-params`` dump.

    Handles ``RATE: 48000``, ``RATE: [8000 192000]`` (``(``/``)`` mark open ends),
    ``RATE: {32000 44100 48000}``, ``RATE: ALL`` and ``RATE: NONE``. Returns the Coze
    rates the device takes and the (min, max) range, or ((), None) if there is none.
    """
    match = _RATE_LINE.search(text or "")
    if not match:
        return (), None
    value = match.group(1)
    if value.upper() == "ALL":
        return SAMPLE_RATES, (1, _MAX_RATE)
    interval = _INTERVAL.match(value)
    if interval:
        lo, hi = int(interval.group(2)), int(interval.group(3))
        if interval.group(1) == "(":
            lo += 1
        if interval.group(4) == ")":
            hi -= 1
        if lo > hi:
            return (), None
        return tuple(r for r in SAMPLE_RATES if lo <= r <= hi), (lo, hi)
    numbers = [int(n) for n in re.findall(r"\d+", value)]
    if not numbers:  # NONE or garbage
        return (), None
    allowed = set(numbers)
    return tuple(r for r in SAMPLE_RATES if r in allowed), (min(numbers), max(numbers))


def choose_rate(rates: Sequence[int]) -> int:
    """The highest Coze rate among ``rates``, else 48000."""
    usable = [r for r in rates if r in SAMPLE_RATES]
    return max(usable) if usable else DEFAULT_PLAY_RATE


# ----------------------------------------------------------------------------- probing


def _run(cmd: List[str], timeout: float) -> Tuple[Optional[int], str, str]:
    """Run without a shell; (returncode or None, stdout, stderr). Never raises, never hangs.

    Output goes to temporary files, not pipes: a grandchild that ALSA may start (e.g. the
    ``file`` plugin's ``|command``) can keep a pipe open after aplay is gone.
    """
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, close_fds=True, env=child_environment()
                )
            except OSError as exc:
                log.debug("cannot run %s: %s", cmd[0], exc)
                return None, "", ""
            try:
                returncode: Optional[int] = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.debug("%s timed out after %.1f s", " ".join(cmd), timeout)
                proc.kill()
                try:
                    proc.wait(timeout=2.0)
                except subprocess.TimeoutExpired:  # pragma: no cover - unkillable
                    pass
                returncode = None
            texts = []
            for f in (out, err):
                f.seek(0)
                texts.append(f.read(1 << 20).decode("utf-8", "replace"))
            return returncode, texts[0], texts[1]
    except OSError as exc:  # pragma: no cover - no temp dir
        log.debug("probe failed: %s", exc)
        return None, "", ""


VIA = ("auto", "alsa", "aplay")


def probe_via(backend: str) -> str:
    """How to probe for a player back end: alsa probes in-process, aplay with aplay, the others
    whichever is there."""
    return backend if backend in ("alsa", "aplay") else "auto"


def _in_process(via: Optional[str], aplay: str) -> bool:
    """Probe through pyalsaaudio? 'auto' (or None with the default aplay) when it is installed;
    naming an aplay binary means probing with it."""
    if via == "alsa":
        return True
    if via == "aplay" or (via is None and aplay != "aplay"):
        return False
    return alsa_available()


def rates_from_getrates(value: object) -> Tuple[Tuple[int, ...], RateRange]:
    """pyalsaaudio's ``PCM.getrates()`` answer as (Coze rates, (min, max)): one int (a single
    rate), a (min, max) tuple (a continuous range) or a list (the standard rates it takes)."""
    if isinstance(value, bool):
        return (), None
    if isinstance(value, int):
        return tuple(r for r in SAMPLE_RATES if r == value), (value, value)
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        lo, hi = value
        if lo > hi:
            return (), None
        return tuple(r for r in SAMPLE_RATES if lo <= r <= hi), (lo, hi)
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        allowed = set(value)
        return tuple(r for r in SAMPLE_RATES if r in allowed), (min(value), max(value))
    return (), None


def probe_rates_alsa(device: str) -> Tuple[Tuple[int, ...], RateRange]:
    """Native rates of ``device`` through pyalsaaudio: a non-blocking open (a busy device fails
    at once), the hardware's rate space, close; nothing is played. ((), None) if unknown."""
    try:
        alsaaudio = import_alsaaudio()
        pcm = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, alsaaudio.PCM_NONBLOCK, device=device, channels=1,
                            rate=DEFAULT_PLAY_RATE, format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=1024)
    except Exception as exc:  # PlayerError (no pyalsaaudio) or ALSAAudioError (busy, missing)
        log.debug("probe of %s failed: %s", device, exc)
        return (), None
    try:
        return rates_from_getrates(pcm.getrates())
    except Exception as exc:
        log.debug("probe of %s failed: %s", device, exc)
        return (), None
    finally:
        try:
            pcm.drop()
            pcm.close()
        except Exception:  # pragma: no cover - best effort
            pass


def probe_rates(device: str, aplay: str = "aplay", timeout: float = 3.0,
                via: Optional[str] = None) -> Tuple[Tuple[int, ...], RateRange]:
    """Native rates of ``device``; ((), None) if unknown. ``via``: 'alsa' (pyalsaaudio,
    in-process), 'aplay', or 'auto'/None (pyalsaaudio when installed, see _in_process).

    aplay opens the device (non-blocking, so a busy one fails at once), prints the
    hardware parameter space to stderr before it narrows it, and then plays the empty
    input /dev/null: nothing is heard. Never raises, never waits longer than ``timeout``.
    """
    if _in_process(via, aplay):
        return probe_rates_alsa(device)
    cmd = [aplay, "-q", "-N", "-D", device, "--dump-hw-params", "-t", "raw", "-f", "S16_LE", "-c", "1", os.devnull]
    try:
        _, out, err = _run(cmd, timeout)
        return parse_hw_params(err + "\n" + out)
    except Exception as exc:  # pragma: no cover - belt and braces: never raise
        log.debug("probe of %s failed: %s", device, exc)
        return (), None


_CARD_LINE = re.compile(
    r"^card\s+(\d+):\s*(\S*)\s*\[(.*?)\],\s*device\s+(\d+):\s*(.*?)\s*\[(.*?)\]\s*$"
)


def parse_aplay_l(text: str) -> List[Tuple[int, int, str]]:
    """(card, device, description) for each line of ``aplay -l``."""
    found = []
    for line in (text or "").splitlines():
        m = _CARD_LINE.match(line.strip())
        if not m:
            continue
        card, card_name, dev, dev_id, dev_name = (
            int(m.group(1)), m.group(3) or m.group(2), int(m.group(4)), m.group(5), m.group(6)
        )
        name = dev_name or dev_id
        description = card_name if name == card_name else f"{card_name}: {name}"
        found.append((card, dev, description))
    return found


def _alsa_cards() -> List[Tuple[int, int, str]]:
    """(card, 0, name) for each sound card pyalsaaudio knows: the listing without aplay.
    Only device 0 of each card (most cards play there; HDMI ports are cards of their own)."""
    try:
        alsaaudio = import_alsaaudio()
        found = []
        for index in alsaaudio.card_indexes():
            name = alsaaudio.card_name(index)
            found.append((int(index), 0, str(name[1] if isinstance(name, tuple) else name)))
        return found
    except Exception as exc:
        log.debug("listing cards through pyalsaaudio failed: %s", exc)
        return []


def list_devices(aplay: str = "aplay", timeout: float = 3.0, via: Optional[str] = None) -> List[Device]:
    """The "default" PCM, then ``hw:C,D`` and ``plughw:C,D`` for each card in ``aplay -l``
    (pyalsaaudio's cards when aplay cannot be run and it is installed).

    ``hw:`` plays only the formats the hardware takes (often not mono); ``plughw:``
    converts, and its native rates are those of the ``hw:`` device. Never raises.
    """
    devices: List[Device] = []
    try:
        default_name = _hw_for(DEFAULT_DEVICE)
        default_rates: Tuple[Tuple[int, ...], RateRange] = ((), None)
        code, out, _ = _run([aplay, "-l"], timeout)
        hardware = parse_aplay_l(out)
        if code is None and _in_process(via, aplay):
            hardware = _alsa_cards()
        for card, dev, description in hardware:
            hw = f"hw:{card},{dev}"
            rates, rate_range = probe_rates(hw, aplay=aplay, timeout=timeout, via=via)
            if hw == default_name:
                default_rates = (rates, rate_range)
            devices.append(Device(hw, description, rates, rate_range))
            devices.append(Device(f"plug{hw}", f"{description} (with format conversion)", rates, rate_range))
        description = "ALSA default device"
        if default_rates[0] or default_rates[1]:
            description += f" (rates of {default_name})"
        devices.insert(0, Device(DEFAULT_DEVICE, description, *default_rates))
    except Exception as exc:  # pragma: no cover - never raise
        log.debug("listing devices failed: %s", exc)
        if not any(d.name == DEFAULT_DEVICE for d in devices):
            devices.insert(0, Device(DEFAULT_DEVICE, "ALSA default device"))
    return devices


def _format_rates(device: Device) -> str:
    if device.rates == SAMPLE_RATES and device.rate_range:
        lo, hi = device.rate_range
        return f"all ({lo}-{hi} Hz)" if hi < _MAX_RATE else "all"
    if device.rates:
        return ",".join(str(r) for r in device.rates)
    if device.rate_range:
        lo, hi = device.rate_range
        return f"none of Coze's ({lo}-{hi} Hz)"
    return "?"


def format_devices(devices: Sequence[Device]) -> str:
    """A table for ``coze-speaker devices``: name, Coze rates, description."""
    rows = [("NAME", "RATES", "DESCRIPTION")]
    rows += [(d.name, _format_rates(d), d.description) for d in devices]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}".rstrip() for r in rows]
    if not devices:
        lines.append("(no playback devices found)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- choosing

_HW_CARD_DEV = re.compile(r"^(?:plug)?hw:(.+)$")


def _default_card() -> str:
    # ALSA's own defaults.pcm.card reads these variables before falling back to card 0.
    for var in ("ALSA_PCM_CARD", "ALSA_CARD"):
        value = os.environ.get(var, "").strip()
        if value:
            return value if value.isdigit() else f"CARD={value}"
    return "0"


def _hw_for(device: str) -> Optional[str]:
    """The ``hw:`` device behind ``device`` where that can be told from its name."""
    device = (device or DEFAULT_DEVICE).strip()
    m = _HW_CARD_DEV.match(device)
    if m:
        args = m.group(1)
        if "=" in args or "," in args:
            if "DEV=" not in args and args.startswith("CARD="):
                args += ",DEV=0"
            return f"hw:{args}"
        return f"hw:{args},0"  # "hw:1" is card 1, device 0
    if device in ("default", "sysdefault"):
        card = _default_card()
        return f"hw:{card},DEV=0" if card.startswith("CARD=") else f"hw:{card},0"
    for prefix in ("sysdefault:", "default:"):
        if device.startswith(prefix):
            card = device[len(prefix):]
            if card.startswith("CARD="):
                return f"hw:{card},DEV=0"
            return f"hw:{card},0" if card.isdigit() else f"hw:CARD={card},DEV=0"
    return None


def resolve_sample_rate(setting: Union[int, str], device: str, aplay: str = "aplay",
                        via: Optional[str] = None) -> int:
    """The sample rate to request from Coze for ``device``.

    An int (or digits) is used as is; "auto" probes (see probe_rates for ``via``) the hardware behind ``device``
    ("default", "sysdefault[:CARD]", "plughw:X,Y" → "hw:X,Y") and takes the highest Coze
    rate it plays natively, else 48000.
    """
    if isinstance(setting, bool):
        raise ValueError(f"invalid sample rate {setting!r}")
    if isinstance(setting, int):
        return setting
    text = str(setting).strip().lower()
    if text.isdigit():
        return int(text)
    if text != "auto":
        raise ValueError(f"invalid sample rate {setting!r}: use a number of Hz or 'auto'")
    hw = _hw_for(device)
    if hw is None:
        return DEFAULT_PLAY_RATE
    rates, _ = probe_rates(hw, aplay=aplay, via=via)
    return choose_rate(rates)
