"""SSE parsing and the stream-buffering judgement, on bytes and arrival times made up in the test."""

from __future__ import annotations

import json

import pytest

from ollama_fleet.verify.sse import (
    BURST_GAP_SECONDS,
    SseParser,
    StreamTiming,
    chunk_text,
    judge_stream,
    timing_from_reads,
)

pytestmark = pytest.mark.unit


def event(text: str) -> bytes:
    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def test_events_split_across_reads_are_reassembled() -> None:
    parser = SseParser()
    whole = event("hello") + b"data: [DONE]\n\n"
    payloads = [p for i in range(len(whole)) for p in parser.feed(whole[i : i + 1])]
    assert [chunk_text(payloads[0]), payloads[1]] == ["hello", "[DONE]"]


def test_crlf_comments_and_multiline_data() -> None:
    parser = SseParser()
    assert parser.feed(b": keep-alive\r\n\r\ndata: a\r\ndata: b\r\n\r") == []
    assert parser.feed(b"\ndata:c\n\n") == ["a\nb", "c"]


def test_a_lone_cr_ends_a_line() -> None:
    assert SseParser().feed(b"data: x\r\rdata: y\n\n") == ["x", "y"]


def test_role_only_and_final_chunks_carry_no_text() -> None:
    assert chunk_text(json.dumps({"choices": [{"delta": {"role": "assistant"}}]})) == ""
    assert chunk_text(json.dumps({"choices": [{"delta": {}, "finish_reason": "length"}]})) == ""


def test_an_error_in_the_stream_is_raised() -> None:
    with pytest.raises(ValueError, match="model unloaded"):
        chunk_text(json.dumps({"error": {"message": "model unloaded"}}))


def test_timing_counts_content_chunks_and_notes_done() -> None:
    reads = [(0.01, event("a") + event("b")), (0.02, event("")), (0.03, event("c") + b"data: [DONE]\n\n")]
    timing, text = timing_from_reads(reads)
    assert text == "abc"
    assert timing.arrivals == (0.01, 0.01, 0.03)
    assert timing.done
    assert timing.bursts() == [2, 1]


def spread(count: int = 64, gap: float = 0.002, start: float = 0.005) -> StreamTiming:
    return StreamTiming(tuple(start + i * gap for i in range(count)), done=True)


def test_a_token_by_token_stream_passes() -> None:
    assert judge_stream(spread()) is None


def test_natural_bunching_of_a_fast_model_still_passes() -> None:
    """Pairs and triples of chunks at once are normal for a tiny model; the stream is still spread."""
    arrivals = [0.003 + (i // 3) * 0.002 for i in range(64)]
    assert judge_stream(StreamTiming(tuple(arrivals), done=True)) is None


def test_a_late_read_on_a_busy_controller_is_not_buffering() -> None:
    """Seen in CI: the client read late once and found 44 chunks waiting; the stream was still spread."""
    early = [0.059 + i * 0.005 for i in range(10)]
    lagged = [0.3 + i * 0.00001 for i in range(44)]
    late = [0.4 + i * 0.0075 for i in range(1, 11)]
    timing = StreamTiming(tuple(early + lagged + late), done=True)
    assert max(timing.bursts()) == 44 and len(timing.bursts()) >= 64 / 8
    assert judge_stream(timing) is None


def test_one_burst_at_the_end_is_buffering() -> None:
    burst = StreamTiming(tuple(0.4 + i * 0.00001 for i in range(64)), done=True)
    reason = judge_stream(burst)
    assert reason is not None and "proxy_buffering off" in reason
    assert "1 burst(s) (largest 64 of 64" in reason


def test_blockwise_release_is_buffering_even_when_the_first_block_comes_early() -> None:
    """4 KB proxy buffers: 4 bursts of 16, the first at a quarter of the time."""
    arrivals = [0.1 * (1 + i // 16) + (i % 16) * 0.00001 for i in range(64)]
    timing = StreamTiming(tuple(arrivals), done=True)
    assert timing.first <= timing.last / 2
    assert judge_stream(timing) is not None


def test_two_big_blocks_are_buffering() -> None:
    """nginx's 16 KB SSL buffer on a 128-token reply: 69 chunks, then 59."""
    arrivals = [0.5 + i * 0.00001 for i in range(69)] + [1.0 + i * 0.00001 for i in range(59)]
    reason = judge_stream(StreamTiming(tuple(arrivals), done=True))
    assert reason is not None and "largest 69 of 128" in reason


def test_a_late_first_chunk_fails_even_when_the_rest_is_spread() -> None:
    timing = StreamTiming((1.0, *(1.0 + BURST_GAP_SECONDS * 2 * i for i in range(1, 64))), done=True)
    assert judge_stream(timing) is not None


def test_a_stream_without_done_fails() -> None:
    reason = judge_stream(StreamTiming(spread().arrivals, done=False))
    assert reason is not None and "[DONE]" in reason


def test_too_few_chunks_cannot_prove_anything() -> None:
    reason = judge_stream(spread(count=3))
    assert reason is not None and "too few" in reason
