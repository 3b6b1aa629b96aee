"""A tiny random-weight llama GGUF that real Ollama can `create` and generate from.

The weights are random but shaped so that every generated token is a printable word piece:
residual channel 0 is pinned to 1.0 (embeddings set it, attn_output/ffn_down never write it), and
column 0 of output.weight turns that constant into +bias for word pieces and -bias for everything else
(control and byte tokens). Generations are therefore valid UTF-8, and EOS never comes, so callers must
set num_predict / max_tokens.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, TokenType

from ollama_fleet.localfiles import sha256_of

MODEL_FILE = "tiny-llama.gguf"

N_LAYER = 2
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
CONTEXT_LENGTH = 4096
HEAD_DIM = N_EMBD // N_HEAD
PRINTABLE_BIAS = 3.0

# SentencePiece marks a leading space with U+2581.
_WORDS = (
    *("the", "of", "and", "to", "in", "is", "it", "that", "for", "on", "with", "as", "was", "at", "by"),
    *("be", "this", "are", "from", "or", "have", "an", "they", "which", "one", "you", "all", "were", "her"),
    *("she", "there", "been", "if", "more", "when", "will", "would", "who", "so", "no", "llama", "fleet"),
    "lab",
)
_PIECES = (*(f"\u2581{word}" for word in _WORDS), ".", ",", "s", "ed", "ing")
_SPECIALS = ("<unk>", "<s>", "</s>")
_SPECIAL_TYPES = (TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL)


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types: the three specials, 256 byte-fallback tokens, then the word pieces."""
    tokens = [*_SPECIALS, *(f"<0x{b:02X}>" for b in range(256)), *_PIECES]
    scores = [0.0] * (len(_SPECIALS) + 256) + [-float(i) for i in range(len(_PIECES))]
    types = (
        [int(t) for t in _SPECIAL_TYPES]
        + [int(TokenType.BYTE)] * 256
        + [int(TokenType.NORMAL)] * len(_PIECES)
    )
    return tokens, scores, types


def _is_piece(token_types: list[int]) -> np.ndarray:
    return np.array([t == TokenType.NORMAL for t in token_types], dtype=bool)


def _tensors(rng: np.random.Generator, token_types: list[int]) -> dict[str, np.ndarray]:
    n_vocab = len(token_types)
    kv_dim = HEAD_DIM * N_HEAD_KV

    def dense(rows: int, cols: int) -> np.ndarray:
        # numpy shape is (out, in): GGUF stores it as ne = [in, out], as llama.cpp expects.
        scale = np.float32(1.0 / np.sqrt(cols))
        return rng.standard_normal((rows, cols), dtype=np.float32) * scale

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    embeddings = (0.1 * rng.standard_normal((n_vocab, N_EMBD))).astype(np.float32)
    embeddings[:, 0] = 1.0
    output = dense(n_vocab, N_EMBD)
    output[:, 0] = np.where(_is_piece(token_types), PRINTABLE_BIAS, -PRINTABLE_BIAS)

    tensors = {"token_embd.weight": embeddings, "output_norm.weight": ones(N_EMBD), "output.weight": output}
    for layer in range(N_LAYER):
        attn_output = dense(N_EMBD, N_EMBD)
        ffn_down = dense(N_EMBD, N_FF)
        attn_output[0, :] = 0.0  # keep residual channel 0 at exactly 1.0
        ffn_down[0, :] = 0.0
        tensors |= {
            f"blk.{layer}.attn_norm.weight": ones(N_EMBD),
            f"blk.{layer}.attn_q.weight": dense(N_EMBD, N_EMBD),
            f"blk.{layer}.attn_k.weight": dense(kv_dim, N_EMBD),
            f"blk.{layer}.attn_v.weight": dense(kv_dim, N_EMBD),
            f"blk.{layer}.attn_output.weight": attn_output,
            f"blk.{layer}.ffn_norm.weight": ones(N_EMBD),
            f"blk.{layer}.ffn_gate.weight": dense(N_FF, N_EMBD),
            f"blk.{layer}.ffn_up.weight": dense(N_FF, N_EMBD),
            f"blk.{layer}.ffn_down.weight": ffn_down,
        }
    return tensors


def _add_metadata(
    writer: GGUFWriter, seed: int, tokens: list[str], scores: list[float], types: list[int]
) -> None:
    writer.add_name(f"tiny-llama-seed{seed}")
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(0)  # all F32
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """Write the model to `path`; the same seed always gives the same bytes."""
    tokens, scores, types = vocabulary()
    writer = GGUFWriter(path, "llama")
    _add_metadata(writer, seed, tokens, scores, types)
    for name, array in _tensors(np.random.default_rng(seed), types).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def ensure_tiny_model(cache_dir: Path, seed: int = 0) -> Path:
    """Keep `cache_dir/tiny-llama.gguf` (+ .sha256) equal to what this code generates.

    Generating costs milliseconds, so the model is regenerated each call and only replaced (atomically)
    when its bytes differ: a change to the recipe can never leave a stale model behind.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / MODEL_FILE
    fd, tmp_name = tempfile.mkstemp(prefix=".tiny-", suffix=".gguf", dir=cache_dir)
    os.close(fd)
    fresh = write_tiny_gguf(Path(tmp_name), seed)
    digest = sha256_of(fresh)
    if target.exists() and sha256_of(target) == digest:
        fresh.unlink()
    else:
        fresh.chmod(0o644)
        os.replace(fresh, target)
    sha_file = cache_dir / f"{MODEL_FILE}.sha256"
    expected = f"{digest}  {MODEL_FILE}\n"
    if not sha_file.exists() or sha_file.read_text() != expected:
        tmp_sha = sha_file.with_suffix(".sha256.tmp")
        tmp_sha.write_text(expected)
        os.replace(tmp_sha, sha_file)
    return target
