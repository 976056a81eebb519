"""The manifest embedded in an ONNX file's metadata_props, read without loading the graph.

A graph of hundreds of MiB (or with external data) need not be parsed to read one string: the reader walks
the protobuf wire format (varint-length fields) of ModelProto for field 14 (metadata_props:
StringStringEntryProto key 1, value 2) and skips every other field, graph included (protobuf encoding:
https://protobuf.dev/programming-guides/encoding/; ONNX onnx.proto)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from .errors import ManifestError

__all__ = ['METADATA_KEY', 'embedded_manifest']

METADATA_KEY = "danet_edge_manifest"  # the manifest inside an ONNX graph's metadata_props (export._finalize)


def _varint(buf: Any) -> int | None:
    """One protobuf base-128 varint from a binary file (None at end of file)."""
    result = shift = 0
    while True:
        b = buf.read(1)
        if not b:
            return None
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: Any, end: int, wanted: set[int]) -> Iterator[tuple[int, bytes]]:
    """The length-delimited fields numbered in ``wanted`` of one protobuf message, skipping (seeking past)
    every other field, so that a 1 GiB graph is never read to find its metadata."""
    while buf.tell() < end:
        tag = _varint(buf)
        if tag is None:
            return
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            _varint(buf)
        elif wire == 1:
            buf.seek(8, 1)
        elif wire == 5:
            buf.seek(4, 1)
        elif wire == 2:
            n = _varint(buf)
            if n is None or buf.tell() + n > end:
                raise ValueError("truncated field")
            if number in wanted:
                yield number, buf.read(n)
            else:
                buf.seek(n, 1)
        else:
            raise ValueError(f"wire type {wire}")


def embedded_manifest(onnx_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest export embedded in an ONNX graph (``metadata_props[METADATA_KEY]``), read without loading
    the graph (``ModelProto`` field 14 found by skipping the others); None for a graph without one, or a file
    that is not a readable ONNX protobuf (its loader reports that).

    Raises:
        ManifestError: the embedded entry is there but is not a JSON object.
    """
    import io

    try:
        with open(onnx_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            text = None
            for _, entry in _fields(f, size, {14}):  # ModelProto.metadata_props: StringStringEntryProto
                kv = dict(_fields(io.BytesIO(entry), len(entry), {1, 2}))
                if kv.get(1) == METADATA_KEY.encode():
                    text = kv.get(2, b"").decode("utf-8")
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise ManifestError(f"{onnx_path}: the manifest embedded in the graph is not a JSON object: re-export")
    return data
