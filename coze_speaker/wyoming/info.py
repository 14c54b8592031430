"""What `describe` answers: one installed TTS program whose voices are the account's Coze voices.

Home Assistant 2026.2 (wyoming 1.7.2) hides a voice, or refuses the whole entity, unless the
program and every voice carry `installed: true` and an `attribution`, and every voice has a
non-empty `languages` list; an installed `satellite` would make it a satellite, so there is
none; streaming synthesis is not offered (only `synthesize`).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional
from urllib.parse import urlsplit

from .. import __version__
from ..voice.voices import CozeVoice
from .protocol import Event

#: The language of a voice whose list entry has no language_code ("undetermined", BCP 47).
UNKNOWN_LANGUAGE = "und"
PROGRAM_NAME = "coze-speaker"


def attribution(base_url: str) -> Dict[str, str]:
    """Coze, at the site of the configured endpoint (api.coze.cn -> https://www.coze.cn)."""
    parts = urlsplit(base_url)
    host = parts.netloc
    if host.startswith("api."):
        host = "www." + host[len("api."):]
    return {"name": "Coze", "url": f"{parts.scheme or 'https'}://{host}"}


def ordered_voices(voices: Iterable[CozeVoice], configured: Optional[str]) -> List[CozeVoice]:
    """The account's voices, the configured one first (listed even when Coze does not list it,
    e.g. before the first fetch)."""
    rest = [v for v in voices if v.voice_id != configured]
    if not configured:
        return rest
    mine = next((v for v in voices if v.voice_id == configured), CozeVoice(configured, configured, ""))
    return [mine] + rest


def info_event(voices: Iterable[CozeVoice], *, configured: Optional[str], base_url: str, device: str) -> Event:
    """The `info` event for these voices."""
    credit = attribution(base_url)
    listed: List[Dict[str, Any]] = [{
        "name": v.voice_id,
        "description": v.name,
        "attribution": credit,
        "installed": True,
        "version": None,
        "languages": [v.language or UNKNOWN_LANGUAGE],
        "speakers": None,
    } for v in ordered_voices(voices, configured)]
    program = {
        "name": PROGRAM_NAME,
        "description": f"Coze voices through coze-speaker ({device})",
        "attribution": credit,
        "installed": True,
        "version": __version__,
        "voices": listed,
        "supports_synthesize_streaming": False,
    }
    return Event("info", {"asr": [], "tts": [program], "handle": [], "intent": [], "wake": [], "mic": [], "snd": []})


def language_matches(voice_language: str, asked: str) -> bool:
    """zh matches zh-CN and zh_CN both ways; case does not matter."""
    a, b = voice_language.lower().replace("_", "-"), asked.lower().replace("_", "-")
    return bool(a) and (a == b or a.split("-")[0] == b.split("-")[0])
