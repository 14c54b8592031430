"""The Wyoming front end: the account's Coze voices as a text-to-speech service for Home
Assistant (its Wyoming integration gives a `tts.*` entity for `tts.speak` and Assist).

`protocol.py` (the event framing), `info.py` (what `describe` answers), `server.py` (the
listening socket and one thread per connection). Imported only when `wyoming.enabled` is
true, so a daemon without it loads none of this.
"""
