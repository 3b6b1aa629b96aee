"""nginx's configuration as nginx itself dumps it (`nginx -T`): the servers of each upstream block.

A rollout's drain reads the gateway's configuration back this way after its reload, so a drain that did not
take (an override of the gateway template without the members' include, say) is seen, whatever the text of
the site looks like. Only what an upstream needs is understood: directives, blocks, quotes, comments and
`include` (globs too), resolved against the files nginx dumped.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import posixpath
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

DUMP_HEADER = re.compile(r"^# configuration file (.+):$")
MAX_INCLUDE_DEPTH = 16


class ConfigError(ValueError):
    """The dump could not be read (unbalanced braces, an include loop)."""


@dataclass(frozen=True)
class Directive:
    name: str
    args: tuple[str, ...]
    block: tuple[Directive, ...] | None  # None: a simple directive (ended by `;`)
    file: str


@dataclass(frozen=True)
class UpstreamServer:
    upstream: str
    address: str  # as written: 10.0.0.2:443, [fd00::2]:443, a name
    down: bool
    file: str  # the file the server line is in


def dumped_files(dump: str) -> dict[str, str]:
    """Path -> text of each file in `nginx -T`'s output, in the order nginx read them (the main one first)."""
    files: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in dump.splitlines():
        header = DUMP_HEADER.match(line)
        if header:
            current = files.setdefault(header.group(1), [])
        elif current is not None:
            current.append(line)
    return {path: "\n".join(lines) + "\n" for path, lines in files.items()}


def _tokens(text: str, file: str) -> Iterator[str]:
    """Words (quotes removed) and the specials `{`, `}`, `;` (returned as themselves, never quoted)."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "{};":
            yield c
            i += 1
        elif c in "\"'":
            word, i = [], i + 1
            while i < n and text[i] != c:
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                word.append(text[i])
                i += 1
            if i >= n:
                raise ConfigError(f"{file}: a quote is never closed")
            i += 1
            yield "\0" + "".join(word)  # marked: a quoted ";" or "{" is a word, not a special
        else:
            start, brace = i, False
            while i < n and not text[i].isspace() and (brace or text[i] not in "{};"):
                if text[i] == "{" and text[i - 1 : i] == "$":
                    brace = True  # ${variable}
                elif text[i] == "}" and brace:
                    brace = False
                i += 1
            yield text[start:i]


def _parse(tokens: Iterator[str], file: str, nested: bool) -> tuple[Directive, ...]:
    directives: list[Directive] = []
    words: list[str] = []
    for token in tokens:
        if token == ";":
            if words:
                directives.append(Directive(words[0], tuple(words[1:]), None, file))
            words = []
        elif token == "{":
            if not words:
                raise ConfigError(f"{file}: a block without a name")
            block = _parse(tokens, file, nested=True)
            directives.append(Directive(words[0], tuple(words[1:]), block, file))
            words = []
        elif token == "}":
            if not nested:
                raise ConfigError(f"{file}: a `}}` closes no block")
            return tuple(directives)
        else:
            words.append(token.removeprefix("\0"))
    if nested:
        raise ConfigError(f"{file}: a block is never closed")
    return tuple(directives)


def parse_file(files: Mapping[str, str], path: str, depth: int = 0) -> tuple[Directive, ...]:
    """The directives of `path`, with each `include` replaced by the directives of the files it names
    (relative to the main file's directory, as nginx resolves them; a file not dumped adds nothing)."""
    if depth > MAX_INCLUDE_DEPTH:
        raise ConfigError(f"{path}: includes nested deeper than {MAX_INCLUDE_DEPTH}")
    prefix = posixpath.dirname(next(iter(files), ""))

    def expand(directives: tuple[Directive, ...]) -> tuple[Directive, ...]:
        out: list[Directive] = []
        for d in directives:
            if d.name == "include" and d.block is None and d.args:
                pattern = posixpath.join(prefix, d.args[0])
                for name in sorted(f for f in files if fnmatch.fnmatchcase(f, pattern)):
                    out.extend(parse_file(files, name, depth + 1))
            elif d.block is not None:
                out.append(Directive(d.name, d.args, expand(d.block), d.file))
            else:
                out.append(d)
        return tuple(out)

    return expand(_parse(_tokens(files[path], path), path, nested=False))


def upstream_servers(dump: str) -> list[UpstreamServer]:
    """Every `server` line of every upstream block of the configuration `nginx -T` printed."""
    files = dumped_files(dump)
    if not files:
        raise ConfigError("no configuration file in nginx -T's output")
    found: list[UpstreamServer] = []

    def walk(directives: tuple[Directive, ...]) -> None:
        for d in directives:
            if d.name == "upstream" and d.block is not None:
                for line in d.block:
                    if line.name == "server" and line.block is None and line.args:
                        upstream = d.args[0] if d.args else "?"
                        down = "down" in line.args[1:]
                        found.append(UpstreamServer(upstream, line.args[0], down, line.file))
            elif d.block is not None:
                walk(d.block)

    walk(parse_file(files, next(iter(files))))
    return found


def same_peer(written: str, peer: str) -> bool:
    """Whether an upstream's server address is `peer` (address:port); nginx's default port is 80."""

    def normalized(address: str) -> tuple[str, int]:
        host, port = address, 80
        match = re.fullmatch(r"\[(.+)\]:(\d+)|\[(.+)\]|([^:]+):(\d+)", address)
        if match:
            host = match.group(1) or match.group(3) or match.group(4)
            port = int(match.group(2) or match.group(5) or 80)
        try:
            host = ipaddress.ip_address(host).compressed
        except ValueError:
            host = host.lower()
        return host, port

    return normalized(written) == normalized(peer)


def in_rotation(servers: list[UpstreamServer], peers: Mapping[str, str]) -> dict[str, list[str]]:
    """Host -> where it is still in rotation (`upstream NAME (FILE)`), for each of `peers` (host ->
    address:port) that some upstream lists without `down`."""
    found: dict[str, list[str]] = {}
    for name, peer in peers.items():
        for server in servers:
            if not server.down and same_peer(server.address, peer):
                found.setdefault(name, []).append(f"upstream {server.upstream} ({server.file})")
    return found
