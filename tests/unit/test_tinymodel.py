"""The tiny GGUF: deterministic, small, a llama llama.cpp can load, and biased toward printable pieces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, TokenType

from ollama_fleet.lab import tinymodel
from ollama_fleet.localfiles import sha256_of

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tinymodel.write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf", seed=0)


@pytest.fixture(scope="module")
def reader(model: Path) -> GGUFReader:
    return GGUFReader(model)


def _field(reader: GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def test_same_seed_gives_identical_bytes(model: Path, tmp_path: Path) -> None:
    again = tinymodel.write_tiny_gguf(tmp_path / "again.gguf", seed=0)
    assert again.read_bytes() == model.read_bytes()


def test_other_seed_gives_other_weights(model: Path, tmp_path: Path) -> None:
    other = tinymodel.write_tiny_gguf(tmp_path / "other.gguf", seed=1)
    assert other.stat().st_size == model.stat().st_size
    assert other.read_bytes() != model.read_bytes()


def test_under_one_megabyte(model: Path) -> None:
    assert model.stat().st_size < 1_000_000


def test_llama_hyperparameters(reader: GGUFReader) -> None:
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.block_count") == 2
    assert _field(reader, "llama.embedding_length") == 64
    assert _field(reader, "llama.feed_forward_length") == 128
    assert _field(reader, "llama.attention.head_count") == 4
    assert _field(reader, "llama.attention.head_count_kv") == 2
    assert _field(reader, "tokenizer.ggml.model") == "llama"


def test_vocabulary_has_specials_bytes_and_pieces(reader: GGUFReader) -> None:
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert isinstance(tokens, list) and isinstance(types, list)
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens[3:259] == [f"<0x{b:02X}>" for b in range(256)]
    pieces = tokens[259:]
    assert 30 <= len(pieces) <= 80
    assert all(piece.isprintable() for piece in pieces)
    assert types[3:259] == [TokenType.BYTE] * 256
    assert types[259:] == [TokenType.NORMAL] * len(pieces)
    assert _field(reader, "tokenizer.ggml.eos_token_id") == 2


def test_tensor_shapes_match_llama_layout(reader: GGUFReader) -> None:
    shapes = {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    n_vocab = len(tinymodel.vocabulary()[0])
    assert shapes["token_embd.weight"] == [64, n_vocab]
    assert shapes["output.weight"] == [64, n_vocab]
    assert shapes["blk.1.attn_q.weight"] == [64, 64]
    assert shapes["blk.1.attn_k.weight"] == [64, 32]  # ne = [in, out]: 2 KV heads of 16
    assert shapes["blk.1.ffn_down.weight"] == [128, 64]
    assert len(shapes) == 3 + 2 * 9


def test_output_bias_favours_printable_pieces(reader: GGUFReader) -> None:
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    _, _, types = tinymodel.vocabulary()
    is_piece = np.array([t == TokenType.NORMAL for t in types])
    assert np.all(tensors["token_embd.weight"][:, 0] == 1.0)
    assert np.all(tensors["output.weight"][is_piece, 0] > 0)
    assert np.all(tensors["output.weight"][~is_piece, 0] < 0)
    # Nothing writes residual channel 0 back, so it stays 1.0 through every layer.
    for layer in range(2):
        assert not tensors[f"blk.{layer}.attn_output.weight"][0].any()
        assert not tensors[f"blk.{layer}.ffn_down.weight"][0].any()


def test_ensure_tiny_model_caches_with_checksum(tmp_path: Path, model: Path) -> None:
    path = tinymodel.ensure_tiny_model(tmp_path)
    assert path.read_bytes() == model.read_bytes()
    sha_line = (tmp_path / "tiny-llama.gguf.sha256").read_text()
    assert sha_line == f"{sha256_of(path)}  tiny-llama.gguf\n"
    first_mtime = path.stat().st_mtime_ns
    assert tinymodel.ensure_tiny_model(tmp_path) == path
    assert path.stat().st_mtime_ns == first_mtime  # unchanged bytes are not rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-llama.gguf", "tiny-llama.gguf.sha256"]


def test_ensure_tiny_model_repairs_a_corrupted_cache(tmp_path: Path, model: Path) -> None:
    path = tinymodel.ensure_tiny_model(tmp_path)
    path.write_bytes(b"not a model")
    tinymodel.ensure_tiny_model(tmp_path)
    assert path.read_bytes() == model.read_bytes()
