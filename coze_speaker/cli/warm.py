"""`coze-speaker cache warm`: synthesize a list of phrases ahead of time.

Phrases already cached cost nothing; the cost guard's limits still apply, so a long list
cannot spend more than the daemon would be allowed to.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import yaml

from ..coze import CozeError
from ..voice.source import AudioSource
from ..voice.request import RequestBuilder


@dataclass(frozen=True)
class Phrase:
    text: str
    voice: Optional[str] = None
    emotion: Optional[str] = None
    speed: Optional[float] = None


@dataclass
class WarmReport:
    total: int = 0
    cached: int = 0
    warmed: int = 0
    api_calls: int = 0
    failed: List[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"{self.total} phrase(s): {self.warmed} synthesized ({self.api_calls} API call(s)), "
                f"{self.cached} already cached")
        if self.failed:
            text += f", {len(self.failed)} failed:\n" + "\n".join(self.failed[:20])
        return text


def read_phrases(path: str) -> List[Phrase]:
    """One phrase per line (blank lines and # comments skipped), or a YAML list."""
    raw = Path(path).read_text("utf-8")
    if Path(path).suffix.lower() in (".yaml", ".yml") or raw.lstrip().startswith("- "):
        try:
            data = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a YAML list of phrases")
        return [_phrase(item, f"{path}: item {n}") for n, item in enumerate(data, 1)]
    return [Phrase(line.strip()) for line in raw.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _phrase(item: Any, where: str) -> Phrase:
    if isinstance(item, str):
        return Phrase(item)
    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
        raise ValueError(f"{where}: expected a string or a mapping with text")
    unknown = set(item) - {"text", "voice", "emotion", "speed"}
    if unknown:
        raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: text, voice, emotion, speed)")
    return Phrase(item["text"], item.get("voice"), item.get("emotion"), item.get("speed"))


def warm(requests: RequestBuilder, source: AudioSource, phrases: List[Phrase], *,
         progress: bool = False) -> WarmReport:
    """Synthesize the phrases that are not cached yet, within the spending caps."""
    report = WarmReport(total=len(phrases))
    for n, phrase in enumerate(phrases, 1):
        if progress:
            _bar(n - 1, len(phrases), phrase.text)
        try:
            request = requests.build(phrase.text, voice_id=phrase.voice, emotion=phrase.emotion, speed=phrase.speed)
            if source.is_cached(request):
                report.cached += 1
                continue
            speech = source.open(request)
            for _ in speech:
                pass
            report.api_calls += speech.api_calls
            report.warmed += 1
        except (CozeError, ValueError) as exc:
            report.failed.append(f"  {phrase.text[:60]!r}: {exc}")
    if progress:
        _bar(len(phrases), len(phrases), "")
        sys.stderr.write("\n")
    return report


def _bar(done: int, total: int, label: str, width: int = 30) -> None:
    filled = width * done // max(1, total)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label[:30]:<30}")
    sys.stderr.flush()
