"""Server-sent events as OpenAI streams them, and the judgement whether a proxy buffered the stream.

Pure: bytes and arrival times in, events and verdicts out, so the logic is tested without any host.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

DONE = "[DONE]"

# Chunks that reach the client less than this apart count as one burst. Measured on this machine with the
# tiny model (64-token replies through nginx over TLS): a burst released by a buffering proxy arrives as
# back-to-back TLS records at most 0.024 ms apart; unbuffered, 88 % of the gaps between chunks exceed 0.1 ms
# (median 0.5 ms), and 86 % straight from Ollama. 0.1 ms sits between the two.
BURST_GAP_SECONDS = 0.0001
# Fewer chunks than this say too little about buffering to judge either way.
MIN_CHUNKS = 8


class SseParser:
    """Incremental parser: feed it bytes as they arrive, get back the `data` payload of each event."""

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[str] = []

    def feed(self, data: bytes) -> list[str]:
        self._pending += data
        events: list[str] = []
        while True:
            line, sep, rest = _split_line(self._pending)
            if not sep:
                return events
            self._pending = rest
            event = self._take_line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)

    def _take_line(self, line: str) -> str | None:
        if line == "":  # a blank line ends the event
            if not self._data:
                return None
            event, self._data = "\n".join(self._data), []
            return event
        if line.startswith(":"):  # a comment (keep-alive)
            return None
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value.removeprefix(" "))
        return None


def _split_line(buffer: bytes) -> tuple[bytes, bytes, bytes]:
    """Split off the first line ending in \\n, \\r\\n or \\r; sep is empty while no line is complete."""
    for index, byte in enumerate(buffer):
        if byte == 0x0A:
            return buffer[:index], b"\n", buffer[index + 1 :]
        if byte == 0x0D:
            if index + 1 == len(buffer):
                return b"", b"", buffer  # a lone \r may be the first half of \r\n: wait for more
            sep_len = 2 if buffer[index + 1] == 0x0A else 1
            return buffer[:index], buffer[index : index + sep_len], buffer[index + sep_len :]
    return b"", b"", buffer


def chunk_text(payload: str) -> str:
    """The content delta of one chat.completion.chunk payload ('' for role-only or final chunks)."""
    chunk = json.loads(payload)
    if "error" in chunk:
        raise ValueError(f"the stream carried an error: {chunk['error']}")
    choices = chunk.get("choices") or [{}]
    return str((choices[0].get("delta") or {}).get("content") or "")


@dataclass(frozen=True)
class StreamTiming:
    """When the chunks of one streamed completion reached the client, in seconds since the request."""

    arrivals: tuple[float, ...]
    done: bool  # the stream ended with `data: [DONE]`

    @property
    def chunks(self) -> int:
        return len(self.arrivals)

    @property
    def first(self) -> float:
        return self.arrivals[0] if self.arrivals else 0.0

    @property
    def last(self) -> float:
        return self.arrivals[-1] if self.arrivals else 0.0

    def bursts(self) -> list[int]:
        """Sizes of the groups of chunks that arrived together (less than BURST_GAP_SECONDS apart)."""
        sizes: list[int] = []
        previous = None
        for arrived in self.arrivals:
            if previous is None or arrived - previous >= BURST_GAP_SECONDS:
                sizes.append(0)
            sizes[-1] += 1
            previous = arrived
        return sizes

    def figure(self) -> str:
        bursts = self.bursts()
        return (
            f"first chunk {self.first * 1000:.0f} ms, last {self.last * 1000:.0f} ms, "
            f"{self.chunks} chunks in {len(bursts)} bursts"
        )


def judge_stream(timing: StreamTiming) -> str | None:
    """None when the stream arrived token by token, else the reason it did not.

    nginx with `proxy_buffering on` over TLS holds the chunks in its 16 KB SSL buffer: a 64-token reply
    (~14 KB of SSE) reaches the client in one burst at the very end, a longer one in 16 KB blocks. Measured
    on this machine with the tiny model: buffered, 1 burst of 64 (or 69 + 59 of 128), first chunk at the same
    millisecond as the last; unbuffered, 23-71 bursts, first chunk at 0.1-30 % of the time to the last.
    So a stream passes when both hold, each far from both measurements:
      (a) the first chunk arrived in the first half of the time to the last one, both counted from the
          response's headers: Ollama sends them only once generation starts, so a model load (seconds,
          before any token) cannot make a stream look late (a buffering proxy that holds the headers
          back with the body still fails (b));
      (b) there are at least chunks/8 bursts (blockwise release gives a handful however big the reply).
    The size of the largest burst is reported but not judged: when the controller is busy, the client
    reads late and finds many chunks waiting at once (seen in CI: 44 of 64 in one read, with 14 bursts and
    the first chunk at 12 % of the time), which says nothing about the proxy.
    """
    if not timing.done:
        return "the stream ended without `data: [DONE]`: the proxy or Ollama cut it short"
    if timing.chunks < MIN_CHUNKS:
        return (
            f"only {timing.chunks} chunks arrived, too few to judge buffering: the model stopped early "
            "or ignored max_tokens"
        )
    bursts = timing.bursts()
    early_first = timing.first <= timing.last / 2
    if not early_first or len(bursts) < timing.chunks / 8:
        return (
            f"stream arrived in {len(bursts)} burst(s) (largest {max(bursts)} of {timing.chunks} chunks, "
            f"first chunk at {timing.first * 1000:.0f} ms of {timing.last * 1000:.0f} ms): proxy buffering "
            "is on; set `proxy_buffering off` in the nginx location and re-run the deploy"
        )
    return None


def timing_from_reads(reads: Sequence[tuple[float, bytes]]) -> tuple[StreamTiming, str]:
    """Parse (arrival time, bytes read) pairs; returns the timing of content chunks and the text."""
    parser = SseParser()
    arrivals: list[float] = []
    text: list[str] = []
    done = False
    for arrived, data in reads:
        for payload in parser.feed(data):
            if payload == DONE:
                done = True
                continue
            content = chunk_text(payload)
            if content:
                arrivals.append(arrived)
                text.append(content)
    return StreamTiming(tuple(arrivals), done), "".join(text)
