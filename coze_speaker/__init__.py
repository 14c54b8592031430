"""coze-speaker: make a headless speaker talk, voiced by Coze text-to-speech."""

__version__ = "0.1.0"
